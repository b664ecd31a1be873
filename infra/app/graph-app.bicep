extension microsoftGraphV1

// The Entra app registration that reads the directory, through the Microsoft Graph
// Bicep extension. This module replaces the vendor guide's manual steps: it registers
// a single-tenant app, lists its Graph application permissions (so the portal shows
// them), creates its service principal and grants each permission (one
// appRoleAssignedTo per role: that is the admin consent). Only for
// GRAPH_AUTH=managed_identity does it trust the Function's managed identity as a
// federated credential (federatedCredential).
// With exchangeAccess it also grants Exchange Online's Exchange.ManageAsApp.
// The Graph extension cannot create password credentials: the client secret is added
// by scripts/rotate-graph-secret.sh.

@description('Stable, tenant-unique key of the app registration (re-deployments update the same app).')
param uniqueName string

@description('Display name of the app registration.')
param displayName string

@description('Principal (object) id of the Function\'s user-assigned identity, trusted as a federated credential.')
param managedIdentityPrincipalId string

@description('Graph application permissions to grant: least-privilege (default), group-read-all or directory-read-all (what the vendor\'s guide asks for).')
@allowed([
  'least-privilege'
  'group-read-all'
  'directory-read-all'
])
param permissionSet string = 'least-privilege'

@description('Create the federated credential that trusts the Function\'s managed identity: only for GRAPH_AUTH=managed_identity (with client_secret it would be a second way in).')
param federatedCredential bool = false

@description('Also grant Exchange Online\'s app-only permission Exchange.ManageAsApp (EXO_MODE augment or only). The Entra directory role that Exchange also requires is assigned by infra/scripts/assign-exchange-role.sh: this extension cannot assign directory roles.')
param exchangeAccess bool = false

// Well-known ids, named once. Microsoft Graph's appId and the ids of its application
// permissions (app roles), as listed in the Microsoft Graph permissions reference.
var microsoftGraphAppId = '00000003-0000-0000-c000-000000000000'
var graphAppRoleIds = {
  'User.Read.All': 'df021288-bdef-4463-88db-98f22de89214'
  'Group.Read.All': '5b567255-7703-4780-807c-7be8301ae99b'
  'GroupMember.Read.All': '98830695-27a2-44f7-8c18-0c3ebc9698f6'
  'OrgContact.Read.All': 'e1a88a34-94c4-4418-be12-c87b00e26bea'
  'Directory.Read.All': '7ab1d382-f21e-4acd-a863-ba3e13f7da61'
}

// What a sync reads (docs/sync-rules.md): users, groups with their direct members, and
// organizational contacts. Microsoft documents GroupMember.Read.All as the least-privileged
// application permission for groups/delta and group members (README, "Graph permissions");
// Group.Read.All also reads every Microsoft 365 group's content, so it is only a choice.
var permissionSets = {
  'least-privilege': [
    'User.Read.All'
    'GroupMember.Read.All'
    'OrgContact.Read.All'
  ]
  'group-read-all': [
    'User.Read.All'
    'Group.Read.All'
    'OrgContact.Read.All'
  ]
  'directory-read-all': [
    'Directory.Read.All'
  ]
}
// Office 365 Exchange Online's appId and the id of its application permission
// Exchange.ManageAsApp (app-only access to the Exchange admin endpoint), named once.
var exchangeOnlineAppId = '00000002-0000-0ff1-ce00-000000000000'
var exchangeManageAsAppRoleId = 'dc50a0fb-09a3-484d-be87-e023b12c6440'
var exchangeRequiredAccess = exchangeAccess ? [
  {
    resourceAppId: exchangeOnlineAppId
    resourceAccess: [
      {
        id: exchangeManageAsAppRoleId
        type: 'Role'
      }
    ]
  }
] : []

var grantedPermissions = permissionSets[permissionSet]
var grantedRoleIds = map(grantedPermissions, permission => graphAppRoleIds[permission])

// Workload identity federation: the managed identity's token for
// api://AzureADTokenExchange is accepted as this app's client assertion.
var federatedIssuer = '${environment().authentication.loginEndpoint}${tenant().tenantId}/v2.0'
var federatedAudience = 'api://AzureADTokenExchange'

resource app 'Microsoft.Graph/applications@v1.0' = {
  uniqueName: uniqueName
  displayName: displayName
  signInAudience: 'AzureADMyOrg'
  requiredResourceAccess: concat([
    {
      resourceAppId: microsoftGraphAppId
      resourceAccess: [
        for roleId in grantedRoleIds: {
          id: roleId
          type: 'Role'
        }
      ]
    }
  ], exchangeRequiredAccess)

  resource functionIdentityCredential 'federatedIdentityCredentials@v1.0' = if (federatedCredential) {
    name: '${app.uniqueName}/function-managed-identity'
    description: 'The directory sync Function\'s user-assigned managed identity (GRAPH_AUTH=managed_identity).'
    issuer: federatedIssuer
    subject: managedIdentityPrincipalId
    audiences: [
      federatedAudience
    ]
  }
}

resource servicePrincipal 'Microsoft.Graph/servicePrincipals@v1.0' = {
  appId: app.appId
}

resource microsoftGraph 'Microsoft.Graph/servicePrincipals@v1.0' existing = {
  appId: microsoftGraphAppId
}

// Admin consent: one app role assignment per granted permission.
resource adminConsent 'Microsoft.Graph/appRoleAssignedTo@v1.0' = [
  for roleId in grantedRoleIds: {
    principalId: servicePrincipal.id
    resourceId: microsoftGraph.id
    appRoleId: roleId
  }
]

resource exchangeOnline 'Microsoft.Graph/servicePrincipals@v1.0' existing = if (exchangeAccess) {
  appId: exchangeOnlineAppId
}

// Admin consent for Exchange.ManageAsApp, granted to the app's service principal.
resource exchangeConsent 'Microsoft.Graph/appRoleAssignedTo@v1.0' = if (exchangeAccess) {
  principalId: servicePrincipal.id
  resourceId: exchangeOnline.id
  appRoleId: exchangeManageAsAppRoleId
}

output appId string = app.appId
output objectId string = app.id
output servicePrincipalId string = servicePrincipal.id
// The granted permissions as Microsoft Graph itself names their ids: a deploy-time
// cross-check of the table above.
output grantedPermissions array = map(filter(microsoftGraph.appRoles, role => contains(grantedRoleIds, role.id)), role => role.value)
// The Exchange permission as Exchange Online's service principal names it (deploy-time cross-check).
output exchangePermissions array = exchangeAccess ? map(filter(exchangeOnline!.appRoles, role => role.id == exchangeManageAsAppRoleId), role => role.value) : []
