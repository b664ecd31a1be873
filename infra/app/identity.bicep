// The user-assigned managed identity: the Function App's only identity.
// It reaches storage, Key Vault and Application Insights through Azure RBAC
// (see role-assignments.bicep) and, in GRAPH_AUTH=managed_identity mode, is
// trusted by the app registration as a federated credential (graph-app.bicep).

@description('Name of the user-assigned managed identity.')
param name string

@description('Azure region.')
param location string

@description('Tags for the resource.')
param tags object = {}

resource identity 'Microsoft.ManagedIdentity/userAssignedIdentities@2023-01-31' = {
  name: name
  location: location
  tags: tags
}

output id string = identity.id
output name string = identity.name
output clientId string = identity.properties.clientId
output principalId string = identity.properties.principalId
