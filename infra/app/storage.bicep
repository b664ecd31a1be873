// Storage for the Functions host (AzureWebJobsStorage), the Flex Consumption
// deployment package and the sync's change-tracking state (SYNC_STATE=blob:<container>).
// Keys are off: every caller authenticates with Microsoft Entra ID.

@description('Storage account name: 3-24 lowercase letters and digits, globally unique.')
param name string

@description('Azure region.')
param location string

@description('Tags for the resources.')
param tags object = {}

@description('Blob container that holds the Flex Consumption deployment package.')
param deploymentContainerName string

@description('Blob container that holds the sync\'s change-tracking state.')
param stateContainerName string

resource storage 'Microsoft.Storage/storageAccounts@2023-05-01' = {
  name: name
  location: location
  tags: tags
  kind: 'StorageV2'
  sku: {
    name: 'Standard_LRS'
  }
  properties: {
    accessTier: 'Hot'
    allowBlobPublicAccess: false
    allowCrossTenantReplication: false
    allowSharedKeyAccess: false
    defaultToOAuthAuthentication: true
    dnsEndpointType: 'Standard'
    minimumTlsVersion: 'TLS1_2'
    supportsHttpsTrafficOnly: true
    publicNetworkAccess: 'Enabled'
    networkAcls: {
      bypass: 'AzureServices'
      defaultAction: 'Allow'
    }
  }

  resource blobService 'blobServices' = {
    name: 'default'
    properties: {
      // A deleted or overwritten state blob can be recovered for a week.
      deleteRetentionPolicy: {
        enabled: true
        days: 7
      }
      containerDeleteRetentionPolicy: {
        enabled: true
        days: 7
      }
    }

    resource deploymentContainer 'containers' = {
      name: deploymentContainerName
      properties: {
        publicAccess: 'None'
      }
    }

    resource stateContainer 'containers' = {
      name: stateContainerName
      properties: {
        publicAccess: 'None'
      }
    }

    // The Functions host's own containers (timer schedule status and locks; keys), created
    // here so that its identity's blob role can be scoped to them (role-assignments.bicep)
    // instead of the whole account.
    resource hostsContainer 'containers' = {
      name: 'azure-webjobs-hosts'
      properties: {
        publicAccess: 'None'
      }
    }

    resource secretsContainer 'containers' = {
      name: 'azure-webjobs-secrets'
      properties: {
        publicAccess: 'None'
      }
    }
  }
}

output name string = storage.name
output id string = storage.id
output blobEndpoint string = storage.properties.primaryEndpoints.blob
output deploymentContainerName string = deploymentContainerName
output stateContainerName string = stateContainerName
output hostContainerNames array = [
  'azure-webjobs-hosts'
  'azure-webjobs-secrets'
]
