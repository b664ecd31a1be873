// The Function App on the Flex Consumption plan (Linux, Python 3.11), with every
// setting of the product's settings table. It runs as the user-assigned identity
// only: for host storage (AzureWebJobsStorage__*), for its deployment package
// (functionAppConfig.deployment), for Key Vault and Graph (AZURE_CLIENT_ID, which
// DefaultAzureCredential and ManagedIdentityCredential pick up) and for telemetry
// (APPLICATIONINSIGHTS_AUTHENTICATION_STRING).

@description('Function App name (globally unique).')
param name string

@description('Flex Consumption plan name.')
param planName string

@description('Azure region (one that offers Flex Consumption).')
param location string

@description('Tags for the resources.')
param tags object = {}

@description('Resource id of the user-assigned identity.')
param identityId string

@description('Client id of the user-assigned identity.')
param identityClientId string

@description('Name of the storage account (host storage, deployment package, sync state).')
param storageAccountName string

@description('Blob container of the deployment package.')
param deploymentContainerName string

@description('Name of the Application Insights component.')
param applicationInsightsName string

@description('Maximum number of instances the plan may scale out to.')
@minValue(40)
@maxValue(1000)
param maximumInstanceCount int = 40

@description('Memory of each instance, in MB.')
@allowed([
  512
  2048
  4096
])
param instanceMemoryMB int = 2048

// The product's settings (docs/sync-rules.md), each from a parameter or a deployed resource.
@description('KEY_VAULT_URL: URI of the vault that holds both secrets.')
param keyVaultUrl string

@description('GRAPH_CLIENT_ID: application (client) id of the app registration.')
param graphClientId string

@description('GRAPH_AUTH: client_secret or managed_identity.')
@allowed([
  'client_secret'
  'managed_identity'
])
param graphAuth string

@description('GRAPH_BASE_URL: the Microsoft Graph root.')
param graphBaseUrl string

@description('GRAPH_CLIENT_SECRET_NAME: vault secret that holds the client secret.')
param graphClientSecretName string

@description('SYNC_API_CREDENTIAL_NAME: vault secret that holds the sync API credential.')
param syncApiCredentialName string

@description('SYNC_API_URL: base URL of the sync API, ending in /v1.')
param syncApiUrl string

@description('SYNC_DATASETS: datasets to sync, comma-separated.')
param syncDatasets string

@description('ADDRESS_DOMAINS: optional comma-separated allow-list of domains; empty leaves the setting unset.')
param addressDomains string

@description('SYNC_SCOPE_GROUPS: optional comma-separated group object ids; only they, the groups nested in them and their members are synced. Empty leaves the setting unset.')
param syncScopeGroups string

@description('EXCLUDE_USER_TYPES: optional comma-separated userType values (e.g. Guest) whose users are not synced. Empty leaves the setting unset.')
param excludeUserTypes string

@description('EXCLUDE_ADDRESS_PATTERNS: optional comma-separated Python regular expressions; an address that wholly matches one is not synced. Empty leaves the setting unset.')
param excludeAddressPatterns string

@description('Blob container of the change-tracking state (SYNC_STATE=blob:<container>).')
param stateContainerName string

@description('SYNC_SCHEDULE: NCRONTAB schedule of the timer.')
param syncSchedule string

@description('FULL_SYNC_INTERVAL_HOURS: hours between full reads (a periodic full reconcile); 0 reads in full every run.')
@minValue(0)
@maxValue(8784)
param fullSyncIntervalHours int

@description('DELETE_THRESHOLD_PERCENT: the deletion guard holds a dataset\'s deletions above this share of its records once above DELETE_THRESHOLD_FLOOR.')
@minValue(0)
@maxValue(100)
param deleteThresholdPercent int

@description('DELETE_THRESHOLD_COUNT: the deletion guard holds a dataset\'s deletions above this many per run.')
@minValue(0)
@maxValue(1000000000)
param deleteThresholdCount int

@description('DELETE_THRESHOLD_FLOOR: deletions per dataset and run that the deletion guard\'s percentage never holds; 0 applies it to every deletion.')
@minValue(0)
@maxValue(1000000000)
param deleteThresholdFloor int

@description('EXO_MODE: the Exchange Online source (off, augment, only).')
@allowed([
  'off'
  'augment'
  'only'
])
param exoMode string = 'off'

@description('EXO_RECIPIENT_TYPES: optional comma-separated RecipientTypeDetails values read from Exchange Online; empty leaves the setting unset (the default of EXO_MODE).')
param exoRecipientTypes string = ''

@description('EXO_BASE_URL: optional Exchange Online endpoint, for national clouds; empty leaves the setting unset (https://outlook.office365.com).')
param exoBaseUrl string = ''

resource storage 'Microsoft.Storage/storageAccounts@2023-05-01' existing = {
  name: storageAccountName
}

resource applicationInsights 'Microsoft.Insights/components@2020-02-02' existing = {
  name: applicationInsightsName
}

var appSettingsAlways = {
  // Host storage through the user-assigned identity; no connection string, no key.
  AzureWebJobsStorage__blobServiceUri: storage.properties.primaryEndpoints.blob
  AzureWebJobsStorage__credential: 'managedidentity'
  AzureWebJobsStorage__clientId: identityClientId
  // DefaultAzureCredential (Key Vault) and ManagedIdentityCredential (the Graph client
  // assertion) use the user-assigned identity.
  AZURE_CLIENT_ID: identityClientId
  // Telemetry, authenticated with the same identity (local auth is disabled).
  APPLICATIONINSIGHTS_CONNECTION_STRING: applicationInsights.properties.ConnectionString
  APPLICATIONINSIGHTS_AUTHENTICATION_STRING: 'ClientId=${identityClientId};Authorization=AAD'
  // The product's settings (docs/sync-rules.md). The secrets themselves are never app
  // settings: the Function reads them from KEY_VAULT_URL.
  KEY_VAULT_URL: keyVaultUrl
  GRAPH_TENANT_ID: tenant().tenantId
  GRAPH_CLIENT_ID: graphClientId
  GRAPH_AUTH: graphAuth
  GRAPH_BASE_URL: graphBaseUrl
  GRAPH_CLIENT_SECRET_NAME: graphClientSecretName
  SYNC_API_CREDENTIAL_NAME: syncApiCredentialName
  SYNC_API_URL: syncApiUrl
  SYNC_DATASETS: syncDatasets
  SYNC_STATE: 'blob:${stateContainerName}'
  SYNC_SCHEDULE: syncSchedule
  FULL_SYNC_INTERVAL_HOURS: string(fullSyncIntervalHours)
  DELETE_THRESHOLD_PERCENT: string(deleteThresholdPercent)
  DELETE_THRESHOLD_COUNT: string(deleteThresholdCount)
  DELETE_THRESHOLD_FLOOR: string(deleteThresholdFloor)
  EXO_MODE: exoMode
}

// ADDRESS_DOMAINS is optional: left unset (not set to '') when no allow-list is given.
var appSettingsOptional = empty(addressDomains) ? {} : { ADDRESS_DOMAINS: addressDomains }
// Scope and exclusions: each left unset (not '') when empty, so nothing is left out by default.
var appSettingsScope = empty(syncScopeGroups) ? {} : { SYNC_SCOPE_GROUPS: syncScopeGroups }
var appSettingsUserTypes = empty(excludeUserTypes) ? {} : { EXCLUDE_USER_TYPES: excludeUserTypes }
var appSettingsPatterns = empty(excludeAddressPatterns) ? {} : { EXCLUDE_ADDRESS_PATTERNS: excludeAddressPatterns }
// The Exchange Online source's optional settings: each left unset (not '') when empty.
var appSettingsExoTypes = empty(exoRecipientTypes) ? {} : { EXO_RECIPIENT_TYPES: exoRecipientTypes }
var appSettingsExoBaseUrl = empty(exoBaseUrl) ? {} : { EXO_BASE_URL: exoBaseUrl }

resource plan 'Microsoft.Web/serverfarms@2024-04-01' = {
  name: planName
  location: location
  tags: tags
  kind: 'functionapp'
  sku: {
    name: 'FC1'
    tier: 'FlexConsumption'
  }
  properties: {
    reserved: true
  }
}

resource functionApp 'Microsoft.Web/sites@2024-04-01' = {
  name: name
  location: location
  // azd deploys the "sync" service of azure.yaml to the site with this tag.
  tags: union(tags, {
    'azd-service-name': 'sync'
  })
  kind: 'functionapp,linux'
  identity: {
    type: 'UserAssigned'
    userAssignedIdentities: {
      '${identityId}': {}
    }
  }
  properties: {
    serverFarmId: plan.id
    httpsOnly: true
    siteConfig: {
      minTlsVersion: '1.2'
      ftpsState: 'Disabled'
      http20Enabled: true
    }
    functionAppConfig: {
      deployment: {
        storage: {
          type: 'blobContainer'
          value: '${storage.properties.primaryEndpoints.blob}${deploymentContainerName}'
          authentication: {
            type: 'UserAssignedIdentity'
            userAssignedIdentityResourceId: identityId
          }
        }
      }
      scaleAndConcurrency: {
        maximumInstanceCount: maximumInstanceCount
        instanceMemoryMB: instanceMemoryMB
      }
      runtime: {
        name: 'python'
        version: '3.11'
      }
    }
  }

  resource appSettings 'config' = {
    name: 'appsettings'
    properties: union(appSettingsAlways, appSettingsOptional, appSettingsScope, appSettingsUserTypes, appSettingsPatterns, appSettingsExoTypes, appSettingsExoBaseUrl)
  }

  // No basic-auth publishing: deployments authenticate with Microsoft Entra ID.
  resource ftpPublishing 'basicPublishingCredentialsPolicies' = {
    name: 'ftp'
    properties: {
      allow: false
    }
  }

  resource scmPublishing 'basicPublishingCredentialsPolicies' = {
    name: 'scm'
    properties: {
      allow: false
    }
  }
}

output name string = functionApp.name
output id string = functionApp.id
output defaultHostName string = functionApp.properties.defaultHostName
