// The vault that holds both secrets the sync reads: the app registration's client
// secret (GRAPH_CLIENT_SECRET_NAME, written by scripts/rotate-graph-secret.sh) and
// the sync API credential (SYNC_API_CREDENTIAL_NAME, written here when given).
// Access is Azure RBAC only; the Function's identity gets "Key Vault Secrets User"
// on this vault alone (role-assignments.bicep).

@description('Key Vault name: 3-24 letters, digits and hyphens, globally unique.')
param name string

@description('Azure region.')
param location string

@description('Tags for the resources.')
param tags object = {}

@description('Name of the secret that holds the sync API credential.')
param syncApiCredentialName string

@description('The sync API credential: "username:password" (sent as Basic) or a bare token (sent as Bearer). Leave empty to keep the vault\'s current secret, or to set it later.')
@secure()
param syncApiCredential string

resource vault 'Microsoft.KeyVault/vaults@2023-07-01' = {
  name: name
  location: location
  tags: tags
  properties: {
    tenantId: tenant().tenantId
    sku: {
      family: 'A'
      name: 'standard'
    }
    enableRbacAuthorization: true
    enableSoftDelete: true
    softDeleteRetentionInDays: 90
    enablePurgeProtection: true
    publicNetworkAccess: 'Enabled'
    networkAcls: {
      bypass: 'AzureServices'
      defaultAction: 'Allow'
    }
  }
}

resource syncApiSecret 'Microsoft.KeyVault/vaults/secrets@2023-07-01' = if (!empty(syncApiCredential)) {
  parent: vault
  name: syncApiCredentialName
  properties: {
    value: syncApiCredential
    contentType: 'text/plain'
  }
}

output name string = vault.name
output id string = vault.id
output uri string = vault.properties.vaultUri
