// Entra ID directory sync, the Azure side only: what the Azure portal's "Deploy to Azure"
// button deploys (README). The same modules as ../main.bicep, without app/graph-app.bicep:
// Microsoft Graph resources (the app registration, its admin consent, its federated
// credential) cannot be deployed from the portal, so an Entra administrator creates the
// app registration first, from Cloud Shell, and passes its client id as graphClientId
// (docs/deployment.md, "Path 5: Deploy to Azure button").
//
// azuredeploy.json next to this file is this template compiled to ARM JSON, and
// createUiDefinition.json is the portal's form for its parameters. The Bicep CLI was not
// available where they were written, so the JSON was translated by hand, expression by
// expression; tests/test_portal_template.py fails when the two disagree (it recompiles
// with the Bicep CLI wherever it is on PATH). Change this file, then the JSON.
//
//   identity ──► storage, keyVault, monitoring ──► roles (RBAC, least privilege)
//   functionApp (Flex Consumption) ◄── all of the above; alert, opsAlerts, workbook ◄── monitoring

targetScope = 'resourceGroup'

metadata description = 'Syncs Microsoft Entra ID to the email-security directory sync API from an Azure Function (the Azure side; the app registration is created separately).'

// ---------------------------------------------------------------- parameters

@description('Environment name; with the resource group it makes the resource names unique.')
@minLength(1)
@maxLength(64)
param environmentName string = 'dirsync'

@description('Azure region of the resources. It must offer the Flex Consumption plan.')
param location string = resourceGroup().location

@description('Base URL of the directory sync API, ending in /v1 (SYNC_API_URL).')
@minLength(1)
param syncApiUrl string

@description('The sync API credential: "username:password" (sent as Basic) or a bare token (sent as Bearer). Written to Key Vault; leave empty to keep the vault\'s current secret or to add it later.')
@secure()
param syncApiCredential string

@description('Address that receives the mail when a sync run fails.')
@minLength(3)
param alertEmail string

@description('How the Function authenticates to Microsoft Graph (GRAPH_AUTH): client_secret uses the secret in Key Vault; managed_identity uses the managed identity as a federated credential, with no secret at all.')
@allowed([
  'client_secret'
  'managed_identity'
])
param graphAuth string = 'client_secret'

@description('Application (client) id of the app registration that reads the directory (GRAPH_CLIENT_ID). This template does not create it: an Entra administrator creates it, with its admin consent, from Cloud Shell (docs/deployment.md, "Path 5").')
@minLength(36)
@maxLength(36)
param graphClientId string

@description('Exchange Online as a second source (EXO_MODE): off, augment (adds dynamic distribution groups and public folders), or only (Exchange alone; needs syncDatasets = addresses). Anything but off needs Exchange.ManageAsApp on the app registration and the directory role exoDirectoryRoleId (infra/scripts/assign-exchange-role.sh; docs/deployment.md).')
@allowed([
  'off'
  'augment'
  'only'
])
param exoMode string = 'off'

@description('Optional comma-separated RecipientTypeDetails values to read from Exchange Online (EXO_RECIPIENT_TYPES); empty for the default of exoMode.')
param exoRecipientTypes string = ''

@description('Optional Exchange Online endpoint for a national cloud, e.g. https://outlook.office365.us (EXO_BASE_URL); empty for https://outlook.office365.com.')
param exoBaseUrl string = ''

@description('The Entra directory role that Exchange Online requires for app-only access, assigned to the app\'s service principal by infra/scripts/assign-exchange-role.sh when exoMode is not off. Default: Global Reader (read-only).')
param exoDirectoryRoleId string = 'f2ef992c-3afb-46b9-b7cf-a126ee74c451'

@description('Microsoft Graph root (GRAPH_BASE_URL).')
param graphBaseUrl string = 'https://graph.microsoft.com/v1.0'

@description('Datasets to sync, comma-separated (SYNC_DATASETS).')
param syncDatasets string = 'addresses,groups,users'

@description('Optional comma-separated allow-list of address domains (ADDRESS_DOMAINS); empty for none.')
param addressDomains string = ''

@description('Optional comma-separated group object ids (SYNC_SCOPE_GROUPS): only these groups, the groups nested in them and their members are synced; empty syncs the whole directory.')
param syncScopeGroups string = ''

@description('Optional comma-separated userType values whose users are not synced (EXCLUDE_USER_TYPES), e.g. Guest; empty for none.')
param excludeUserTypes string = ''

@description('Optional comma-separated Python regular expressions (EXCLUDE_ADDRESS_PATTERNS), each matched against the whole address, case-insensitively; empty for none.')
param excludeAddressPatterns string = ''

@description('NCRONTAB schedule of the sync timer (SYNC_SCHEDULE). The default runs hourly.')
param syncSchedule string = '0 0 * * * *'

@description('Minutes between two runs of syncSchedule (60 for the hourly default). The missed-run alert fires after about three intervals without a successful run.')
@minValue(5)
@maxValue(960)
param syncIntervalMinutes int = 60

@description('Hours between full reads of the directory, the periodic reconcile (FULL_SYNC_INTERVAL_HOURS); other runs read delta rounds.')
@minValue(0)
@maxValue(8784)
param fullSyncIntervalHours int = 24

@description('Deletion guard: hold a dataset\'s deletions when they exceed this percentage of its records and deleteThresholdFloor (DELETE_THRESHOLD_PERCENT).')
@minValue(0)
@maxValue(100)
param deleteThresholdPercent int = 10

@description('Deletion guard: hold a dataset\'s deletions when they exceed this count in one run (DELETE_THRESHOLD_COUNT).')
@minValue(0)
@maxValue(1000000000)
param deleteThresholdCount int = 500

@description('Deletion guard: deletions per dataset and run that the percentage never holds; 0 applies the percentage to every deletion (DELETE_THRESHOLD_FLOOR).')
@minValue(0)
@maxValue(1000000000)
param deleteThresholdFloor int = 25

@description('Blob container of the change-tracking state (SYNC_STATE=blob:<container>).')
param stateContainerName string = 'sync-state'

@description('Name of the Key Vault secret that holds the Graph client secret (GRAPH_CLIENT_SECRET_NAME).')
param graphClientSecretName string = 'graph-client-secret'

@description('Name of the Key Vault secret that holds the sync API credential (SYNC_API_CREDENTIAL_NAME).')
param syncApiCredentialName string = 'sync-api-credential'

@description('Object id of the principal that may write the Graph client secret (Key Vault Secrets Officer): your own object id, so that infra/scripts/rotate-graph-secret.sh can write it; empty for none.')
param secretsOfficerPrincipalId string = ''

@description('Days the audit tables (Key Vault AuditEvent, storage blob reads/writes/deletes, the run summaries with their approvers) keep their rows.')
@minValue(30)
@maxValue(730)
param auditRetentionDays int = 365

@description('Maximum number of Flex Consumption instances.')
@minValue(40)
@maxValue(1000)
param maximumInstanceCount int = 40

@description('Memory of each Flex Consumption instance, in MB.')
@allowed([
  512
  2048
  4096
])
param instanceMemoryMB int = 2048

@description('Tags added to every resource.')
param tags object = {}

// ---------------------------------------------------------------- names

var resourceToken = toLower(uniqueString(subscription().id, resourceGroup().id, environmentName))
var allTags = union(tags, {
  'azd-env-name': environmentName
})
var deploymentContainerName = 'app-package'
var timerFunctionName = 'sync_timer'

// ---------------------------------------------------------------- modules

module identity '../app/identity.bicep' = {
  name: 'identity'
  params: {
    name: 'id-dirsync-${resourceToken}'
    location: location
    tags: allTags
  }
}

module storage '../app/storage.bicep' = {
  name: 'storage'
  params: {
    name: 'st${resourceToken}'
    location: location
    tags: allTags
    deploymentContainerName: deploymentContainerName
    stateContainerName: stateContainerName
  }
}

module monitoring '../app/monitoring.bicep' = {
  name: 'monitoring'
  params: {
    logAnalyticsName: 'log-dirsync-${resourceToken}'
    applicationInsightsName: 'appi-dirsync-${resourceToken}'
    location: location
    tags: allTags
  }
}

module alert '../app/alert.bicep' = {
  name: 'alert'
  params: {
    namePrefix: 'dirsync-${resourceToken}'
    location: location
    tags: allTags
    applicationInsightsId: monitoring.outputs.applicationInsightsId
    alertEmail: alertEmail
    functionName: timerFunctionName
  }
}

module opsAlerts '../app/ops-alerts.bicep' = {
  name: 'opsAlerts'
  params: {
    namePrefix: 'dirsync-${resourceToken}'
    location: location
    applicationInsightsId: monitoring.outputs.applicationInsightsId
    actionGroupId: alert.outputs.actionGroupId
    tags: allTags
    syncIntervalMinutes: syncIntervalMinutes
  }
}

module workbook '../app/workbook.bicep' = {
  name: 'workbook'
  params: {
    location: location
    applicationInsightsId: monitoring.outputs.applicationInsightsId
    tags: allTags
  }
}

module keyVault '../app/keyvault.bicep' = {
  name: 'keyVault'
  params: {
    name: 'kv-dirsync-${take(resourceToken, 11)}'
    location: location
    tags: allTags
    syncApiCredentialName: syncApiCredentialName
    syncApiCredential: syncApiCredential
  }
}

module roles '../app/role-assignments.bicep' = {
  name: 'roles'
  params: {
    identityPrincipalId: identity.outputs.principalId
    storageAccountName: storage.outputs.name
    // known at the start of the deployment (a loop count must be): the host's two containers
    // (app/storage.bicep), the deployment package and the sync state
    blobContainerNames: [
      'azure-webjobs-hosts'
      'azure-webjobs-secrets'
      deploymentContainerName
      stateContainerName
    ]
    keyVaultName: keyVault.outputs.name
    applicationInsightsName: monitoring.outputs.applicationInsightsName
    secretsOfficerPrincipalId: secretsOfficerPrincipalId
  }
}

module audit '../app/audit.bicep' = {
  name: 'audit'
  params: {
    logAnalyticsName: monitoring.outputs.logAnalyticsName
    keyVaultName: keyVault.outputs.name
    storageAccountName: storage.outputs.name
    auditRetentionDays: auditRetentionDays
  }
}

module functionApp '../app/function-app.bicep' = {
  name: 'functionApp'
  params: {
    name: 'func-dirsync-${resourceToken}'
    planName: 'plan-dirsync-${resourceToken}'
    location: location
    tags: allTags
    identityId: identity.outputs.id
    identityClientId: identity.outputs.clientId
    storageAccountName: storage.outputs.name
    deploymentContainerName: storage.outputs.deploymentContainerName
    applicationInsightsName: monitoring.outputs.applicationInsightsName
    maximumInstanceCount: maximumInstanceCount
    instanceMemoryMB: instanceMemoryMB
    keyVaultUrl: keyVault.outputs.uri
    graphClientId: graphClientId
    graphAuth: graphAuth
    graphBaseUrl: graphBaseUrl
    graphClientSecretName: graphClientSecretName
    syncApiCredentialName: syncApiCredentialName
    syncApiUrl: syncApiUrl
    syncDatasets: syncDatasets
    addressDomains: addressDomains
    syncScopeGroups: syncScopeGroups
    excludeUserTypes: excludeUserTypes
    excludeAddressPatterns: excludeAddressPatterns
    stateContainerName: storage.outputs.stateContainerName
    syncSchedule: syncSchedule
    fullSyncIntervalHours: fullSyncIntervalHours
    deleteThresholdPercent: deleteThresholdPercent
    deleteThresholdCount: deleteThresholdCount
    deleteThresholdFloor: deleteThresholdFloor
    exoRecipientTypes: exoRecipientTypes
    exoBaseUrl: exoBaseUrl
    exoMode: exoMode
  }
  // The identity must hold its storage role before the host starts and before the
  // first package is deployed.
  dependsOn: [
    roles
  ]
}

// ---------------------------------------------------------------- outputs
// infra/scripts/rotate-graph-secret.sh and assign-exchange-role.sh take these as inputs.
// None of them is a secret.

output AZURE_TENANT_ID string = tenant().tenantId
output AZURE_LOCATION string = location
output AZURE_FUNCTION_APP_NAME string = functionApp.outputs.name
output KEY_VAULT_NAME string = keyVault.outputs.name
output KEY_VAULT_URL string = keyVault.outputs.uri
output GRAPH_CLIENT_ID string = graphClientId
output GRAPH_AUTH string = graphAuth
output GRAPH_CLIENT_SECRET_NAME string = graphClientSecretName
output EXO_MODE string = exoMode
output EXO_DIRECTORY_ROLE_ID string = exoDirectoryRoleId
output APPLICATIONINSIGHTS_NAME string = monitoring.outputs.applicationInsightsName
output WORKBOOK_ID string = workbook.outputs.workbookId
output MANAGED_IDENTITY_CLIENT_ID string = identity.outputs.clientId
output MANAGED_IDENTITY_PRINCIPAL_ID string = identity.outputs.principalId
output STORAGE_ACCOUNT_NAME string = storage.outputs.name
