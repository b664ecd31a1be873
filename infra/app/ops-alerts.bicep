// The alerts that tell an operator the sync went quiet or needs them, on the existing action
// group (alert.bicep). Each queries the run summary record the Function writes once per run
// (shared/common/telemetry.py: message "SyncRunSummary {...}", its fields in customDimensions):
//
//   missed runs     no successful timer run (action update, host functions, ok) in at least three
//                   schedule intervals: the app is stopped, a deploy broke an import, the timer
//                   is disabled, or every run fails
//   secret expiry   a run warned that a credential in Key Vault expires within 30 days (or has
//                   expired): secretExpiresInDays, from the run's expiry warning
//   guard holds     the deletion guard held deletions; approve them or find out why
//
// The queries run in Application Insights (its Logs, or the workspace behind it), as the
// workbook's do; see docs/deployment.md, "Alerts".

@description('Prefix for the alert rules\' names.')
param namePrefix string

@description('Azure region of the alert rules.')
param location string

@description('Tags for the resources.')
param tags object = {}

@description('Resource id of the Application Insights component the Function writes to.')
param applicationInsightsId string

@description('Resource id of the action group that mails the operator (alert.bicep).')
param actionGroupId string

@description('Minutes between two timer runs (the SYNC_SCHEDULE interval). The missed-run alert fires after at least three intervals without a successful run (three, rounded up to a window size log alerts accept); log alert windows end at two days, so at most 960.')
@minValue(5)
@maxValue(960)
param syncIntervalMinutes int = 60

@description('Days ahead of a credential\'s expiry that the secret-expiry alert fires; the run warns from 30 days on (shared/config/vault.py).')
@minValue(1)
@maxValue(30)
param secretExpiryDays int = 30

// A successful timer run: the Function's update (host functions) that ended ok.
var successfulTimerRunsQuery = '''
traces
| where customDimensions.event == 'SyncRunSummary'
| where customDimensions.host == 'functions' and customDimensions.action == 'update'
| where tobool(customDimensions.ok)
| project timestamp, operation_Id, durationSeconds = todouble(customDimensions.durationSeconds)
'''

var expiringSecretQuery = '''
traces
| where customDimensions.event == 'SyncRunSummary'
| where isnotempty(customDimensions.secretExpiresInDays)
| extend secretExpiresInDays = toint(customDimensions.secretExpiresInDays)
| project timestamp, operation_Id, secretExpiresInDays
'''

var heldDeletionsQuery = '''
traces
| where customDimensions.event == 'SyncRunSummary'
| extend heldDeletions = toint(customDimensions.heldDeletions)
| where heldDeletions > 0
| project timestamp, operation_Id, heldDeletions, addresses = toint(customDimensions['addresses.held']), groups = toint(customDimensions['groups.held']), users = toint(customDimensions['users.held'])
'''

// The window sizes (minutes) a log search alert accepts: any other is refused at deployment with
// "Supported granularities are: 5, 10, 15, 30, 45, 60, 120, 180, 240, 300, 360, 1440, 2880"
// (Azure/azure-rest-api-specs#21258).
var missedRunWindowChoices = [
  5
  10
  15
  30
  45
  60
  120
  180
  240
  300
  360
  1440
  2880
]
// At least three schedule intervals (the last one's run given time to finish), rounded up to the
// next window the service accepts: 180 for the hourly default, 120 for every 30 minutes, 720 would
// be refused, so every 4 hours looks back 1440.
var missedRunWindowMinutes = first(filter(missedRunWindowChoices, minutes => minutes >= 3 * syncIntervalMinutes))
var missedRunFrequency = syncIntervalMinutes >= 60 ? 'PT1H' : 'PT15M'

resource missedRuns 'Microsoft.Insights/scheduledQueryRules@2023-12-01' = {
  name: '${namePrefix}-sync-missed'
  location: location
  tags: tags
  kind: 'LogAlert'
  properties: {
    displayName: 'Directory sync: no successful run in three schedule intervals'
    description: 'No timer run of the directory sync ended ok in ${missedRunWindowMinutes} minutes. Check that the Function app runs, that the last deployment started (Functions > sync_timer), and the failed runs in the workbook.'
    severity: 1
    enabled: true
    scopes: [
      applicationInsightsId
    ]
    evaluationFrequency: missedRunFrequency
    windowSize: 'PT${missedRunWindowMinutes}M'
    autoMitigate: true
    criteria: {
      allOf: [
        {
          query: successfulTimerRunsQuery
          timeAggregation: 'Count'
          operator: 'LessThan'
          threshold: 1
          failingPeriods: {
            numberOfEvaluationPeriods: 1
            minFailingPeriodsToAlert: 1
          }
        }
      ]
    }
    actions: {
      actionGroups: [
        actionGroupId
      ]
    }
  }
}

resource secretExpiry 'Microsoft.Insights/scheduledQueryRules@2023-12-01' = {
  name: '${namePrefix}-secret-expiry'
  location: location
  tags: tags
  kind: 'LogAlert'
  properties: {
    displayName: 'Directory sync: a credential in Key Vault expires within ${secretExpiryDays} days'
    description: 'A sync run warned that the Graph client secret or the sync API credential expires soon (or has expired). Rotate it: infra/scripts/rotate-graph-secret.sh, or a new version of the sync API credential (docs/deployment.md).'
    severity: 2
    enabled: true
    scopes: [
      applicationInsightsId
    ]
    evaluationFrequency: 'PT1H'
    windowSize: 'P1D'
    autoMitigate: true
    criteria: {
      allOf: [
        {
          query: expiringSecretQuery
          timeAggregation: 'Minimum'
          metricMeasureColumn: 'secretExpiresInDays'
          operator: 'LessThanOrEqual'
          threshold: secretExpiryDays
          failingPeriods: {
            numberOfEvaluationPeriods: 1
            minFailingPeriodsToAlert: 1
          }
        }
      ]
    }
    actions: {
      actionGroups: [
        actionGroupId
      ]
    }
  }
}

resource guardHolds 'Microsoft.Insights/scheduledQueryRules@2023-12-01' = {
  name: '${namePrefix}-guard-held'
  location: location
  tags: tags
  kind: 'LogAlert'
  properties: {
    displayName: 'Directory sync: the deletion guard holds deletions'
    description: 'A sync run held deletions for approval (more than DELETE_THRESHOLD_COUNT deletions in a dataset, or more than DELETE_THRESHOLD_PERCENT of its records once above DELETE_THRESHOLD_FLOOR deletions). Review them with "python -m shared status" or GET /api/status, then approve-deletions (README, "Approving held deletions").'
    severity: 2
    enabled: true
    scopes: [
      applicationInsightsId
    ]
    evaluationFrequency: 'PT15M'
    windowSize: 'PT1H'
    autoMitigate: true
    criteria: {
      allOf: [
        {
          query: heldDeletionsQuery
          timeAggregation: 'Maximum'
          metricMeasureColumn: 'heldDeletions'
          operator: 'GreaterThan'
          threshold: 0
          failingPeriods: {
            numberOfEvaluationPeriods: 1
            minFailingPeriodsToAlert: 1
          }
        }
      ]
    }
    actions: {
      actionGroups: [
        actionGroupId
      ]
    }
  }
}

output alertRuleIds array = [
  missedRuns.id
  secretExpiry.id
  guardHolds.id
]
