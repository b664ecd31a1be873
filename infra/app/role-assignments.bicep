// Every Azure RBAC role assignment of the deployment, each on one resource only.
// The Function's identity gets exactly:
//   - Storage Blob Data Owner on each container that needs it, not on the account:
//     azure-webjobs-hosts and azure-webjobs-secrets (the Functions host's timer schedule
//     status, locks and keys), the deployment package container and the sync state
//     container (state, journal, lease, run reports). A timer-and-HTTP app uses no queues
//     or tables, so no queue or table role is granted.
//   - Key Vault Secrets User on the vault: read the two secrets.
//   - Monitoring Metrics Publisher on Application Insights: Entra-authenticated telemetry.
// The deploying principal optionally gets Key Vault Secrets Officer on the vault, so
// that scripts/rotate-graph-secret.sh can write the Graph client secret.

@description('Principal (object) id of the Function\'s user-assigned identity.')
param identityPrincipalId string

@description('Name of the storage account.')
param storageAccountName string

@description('The blob containers the Function\'s identity works in (each gets its own Storage Blob Data Owner assignment).')
param blobContainerNames array

@description('Name of the Key Vault.')
param keyVaultName string

@description('Name of the Application Insights component.')
param applicationInsightsName string

@description('Object id of the principal that runs the secret rotation script; empty for none.')
param secretsOfficerPrincipalId string = ''

// Built-in role definition ids, named once (Azure built-in roles reference).
var roleIds = {
  storageBlobDataOwner: 'b7e6dc6d-f1e8-4753-8033-0f276bb0955b' // Storage Blob Data Owner
  keyVaultSecretsUser: '4633458b-17de-408a-b874-0445c86b69e6' // Key Vault Secrets User
  keyVaultSecretsOfficer: 'b86a8fe4-44ce-4948-aee5-eccb2c155cd7' // Key Vault Secrets Officer
  monitoringMetricsPublisher: '3913510d-42f4-4e42-8a64-420c390055eb' // Monitoring Metrics Publisher
}

resource vault 'Microsoft.KeyVault/vaults@2023-07-01' existing = {
  name: keyVaultName
}

resource applicationInsights 'Microsoft.Insights/components@2020-02-02' existing = {
  name: applicationInsightsName
}

resource containers 'Microsoft.Storage/storageAccounts/blobServices/containers@2023-05-01' existing = [
  for container in blobContainerNames: {
    name: '${storageAccountName}/default/${container}'
  }
]

resource functionBlobDataOwner 'Microsoft.Authorization/roleAssignments@2022-04-01' = [
  for (container, i) in blobContainerNames: {
    name: guid(containers[i].id, identityPrincipalId, roleIds.storageBlobDataOwner)
    scope: containers[i]
    properties: {
      roleDefinitionId: subscriptionResourceId('Microsoft.Authorization/roleDefinitions', roleIds.storageBlobDataOwner)
      principalId: identityPrincipalId
      principalType: 'ServicePrincipal'
      description: 'Directory sync Function: blobs of container ${container} only.'
    }
  }
]

resource functionSecretsUser 'Microsoft.Authorization/roleAssignments@2022-04-01' = {
  name: guid(vault.id, identityPrincipalId, roleIds.keyVaultSecretsUser)
  scope: vault
  properties: {
    roleDefinitionId: subscriptionResourceId('Microsoft.Authorization/roleDefinitions', roleIds.keyVaultSecretsUser)
    principalId: identityPrincipalId
    principalType: 'ServicePrincipal'
    description: 'Directory sync Function: read the Graph client secret and the sync API credential.'
  }
}

resource functionMetricsPublisher 'Microsoft.Authorization/roleAssignments@2022-04-01' = {
  name: guid(applicationInsights.id, identityPrincipalId, roleIds.monitoringMetricsPublisher)
  scope: applicationInsights
  properties: {
    roleDefinitionId: subscriptionResourceId('Microsoft.Authorization/roleDefinitions', roleIds.monitoringMetricsPublisher)
    principalId: identityPrincipalId
    principalType: 'ServicePrincipal'
    description: 'Directory sync Function: send telemetry with Microsoft Entra authentication.'
  }
}

resource deployerSecretsOfficer 'Microsoft.Authorization/roleAssignments@2022-04-01' = if (!empty(secretsOfficerPrincipalId)) {
  name: guid(vault.id, secretsOfficerPrincipalId, roleIds.keyVaultSecretsOfficer)
  scope: vault
  properties: {
    roleDefinitionId: subscriptionResourceId('Microsoft.Authorization/roleDefinitions', roleIds.keyVaultSecretsOfficer)
    principalId: secretsOfficerPrincipalId
    description: 'Directory sync deployer: write the Graph client secret (scripts/rotate-graph-secret.sh).'
  }
}
