// Parameters for main.bicep, read from environment variables so that one file serves
// `azd up` (azd exports its environment's values), `az deployment group create` and
// the GitHub Actions workflow. Nothing secret is written in this file: the sync API
// credential comes from the SYNC_API_CREDENTIAL variable when it is set, and is left
// out (the vault keeps its current secret) when it is not.
using './main.bicep'

param environmentName = readEnvironmentVariable('AZURE_ENV_NAME', 'dirsync')

// Required: the deployment stops here with the variable's name when either is unset.
param syncApiUrl = readEnvironmentVariable('SYNC_API_URL')
param alertEmail = readEnvironmentVariable('ALERT_EMAIL')

param syncApiCredential = readEnvironmentVariable('SYNC_API_CREDENTIAL', '')

param graphAuth = readEnvironmentVariable('GRAPH_AUTH', 'client_secret')
param graphPermissionSet = readEnvironmentVariable('GRAPH_PERMISSION_SET', 'least-privilege')
param graphBaseUrl = readEnvironmentVariable('GRAPH_BASE_URL', 'https://graph.microsoft.com/v1.0')
param syncDatasets = readEnvironmentVariable('SYNC_DATASETS', 'addresses,groups,users')
param addressDomains = readEnvironmentVariable('ADDRESS_DOMAINS', '')
param syncScopeGroups = readEnvironmentVariable('SYNC_SCOPE_GROUPS', '')
param excludeUserTypes = readEnvironmentVariable('EXCLUDE_USER_TYPES', '')
param excludeAddressPatterns = readEnvironmentVariable('EXCLUDE_ADDRESS_PATTERNS', '')
param syncSchedule = readEnvironmentVariable('SYNC_SCHEDULE', '0 0 * * * *')
param syncIntervalMinutes = int(readEnvironmentVariable('SYNC_INTERVAL_MINUTES', '60'))
param fullSyncIntervalHours = int(readEnvironmentVariable('FULL_SYNC_INTERVAL_HOURS', '24'))
param deleteThresholdPercent = int(readEnvironmentVariable('DELETE_THRESHOLD_PERCENT', '10'))
param deleteThresholdCount = int(readEnvironmentVariable('DELETE_THRESHOLD_COUNT', '500'))
param deleteThresholdFloor = int(readEnvironmentVariable('DELETE_THRESHOLD_FLOOR', '25'))

// Key Vault Secrets Officer (to write the Graph client secret) for a person, never for CI:
// azd sets AZURE_PRINCIPAL_ID to the signed-in user; CI sets neither, so nobody gets it.
param secretsOfficerPrincipalId = readEnvironmentVariable('SECRETS_OFFICER_PRINCIPAL_ID', readEnvironmentVariable('AZURE_PRINCIPAL_ID', ''))
param deployAppRegistration = bool(readEnvironmentVariable('DEPLOY_APP_REGISTRATION', 'true'))
param existingGraphClientId = readEnvironmentVariable('GRAPH_CLIENT_ID', '')
param auditRetentionDays = int(readEnvironmentVariable('AUDIT_RETENTION_DAYS', '365'))
param exoMode = readEnvironmentVariable('EXO_MODE', 'off')
param exoRecipientTypes = readEnvironmentVariable('EXO_RECIPIENT_TYPES', '')
param exoBaseUrl = readEnvironmentVariable('EXO_BASE_URL', '')
