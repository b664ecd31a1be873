// The audit trail (issue: who read which secret, who changed the state, the approvals and
// the run reports). Diagnostic settings send
//   - Key Vault's AuditEvent category (every secret read, with the caller's identity) to the
//     resource-specific table AZKVAuditLogs, and
//   - the storage account's blob StorageRead, StorageWrite and StorageDelete categories
//     (state, journal, leases, approvals, run reports: each request with its caller) to
//     StorageBlobLogs,
// into the Log Analytics workspace. Those tables, and AppTraces (the SyncRunSummary lines,
// with the approver of each approve-deletions), keep their rows for auditRetentionDays,
// longer than the workspace default. The KQL queries are in docs/deployment.md, "Audit".

@description('Name of the Log Analytics workspace.')
param logAnalyticsName string

@description('Name of the Key Vault.')
param keyVaultName string

@description('Name of the storage account.')
param storageAccountName string

@description('Days the audit tables keep their rows (interactive retention).')
@minValue(30)
@maxValue(730)
param auditRetentionDays int = 365

resource logAnalytics 'Microsoft.OperationalInsights/workspaces@2023-09-01' existing = {
  name: logAnalyticsName
}

resource vault 'Microsoft.KeyVault/vaults@2023-07-01' existing = {
  name: keyVaultName
}

resource storage 'Microsoft.Storage/storageAccounts@2023-05-01' existing = {
  name: storageAccountName

  resource blobService 'blobServices' existing = {
    name: 'default'
  }
}

resource vaultAudit 'Microsoft.Insights/diagnosticSettings@2021-05-01-preview' = {
  name: 'audit-to-log-analytics'
  scope: vault
  properties: {
    workspaceId: logAnalytics.id
    logAnalyticsDestinationType: 'Dedicated'
    logs: [
      {
        category: 'AuditEvent'
        enabled: true
      }
    ]
  }
}

resource blobAudit 'Microsoft.Insights/diagnosticSettings@2021-05-01-preview' = {
  name: 'audit-to-log-analytics'
  scope: storage::blobService
  properties: {
    workspaceId: logAnalytics.id
    logs: [
      {
        category: 'StorageRead'
        enabled: true
      }
      {
        category: 'StorageWrite'
        enabled: true
      }
      {
        category: 'StorageDelete'
        enabled: true
      }
    ]
  }
}

// Table-level retention: the audit tables outlive the workspace default.
resource auditTables 'Microsoft.OperationalInsights/workspaces/tables@2022-10-01' = [
  for table in [
    'AZKVAuditLogs'
    'StorageBlobLogs'
    'AppTraces'
  ]: {
    parent: logAnalytics
    name: table
    properties: {
      retentionInDays: auditRetentionDays
      totalRetentionInDays: auditRetentionDays
    }
  }
]

output auditTables array = [
  'AZKVAuditLogs'
  'StorageBlobLogs'
  'AppTraces'
]
