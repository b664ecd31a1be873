// The failure alert: the seed tool mailed its outcome; this mails an operator
// whenever an execution of the timer function fails (a failed read, a rejected
// request, a held mass deletion: anything that makes sync_timer raise).

@description('Prefix for the alert resources\' names.')
param namePrefix string

@description('Azure region of the alert rule.')
param location string

@description('Tags for the resources.')
param tags object = {}

@description('Resource id of the Application Insights component the Function writes to.')
param applicationInsightsId string

@description('Address that receives the failure mail.')
param alertEmail string

@description('Name of the timer function, as recorded in the requests table.')
param functionName string = 'sync_timer'

// A failed execution of the timer function is a failed request in Application Insights; in the
// Functions OpenTelemetry mode a timer execution may have no request row, so the run's own
// summary record (shared/common/telemetry.py) that says ok == false counts too, unless it says
// skipped (another run held the lock, so the timer's run changed nothing and did not fail).
var failedRunsQuery = 'union (requests\n| where operation_Name == \'${functionName}\' and success == false\n| project timestamp, operation_Id, resultCode, duration), (traces\n| where customDimensions.event == \'SyncRunSummary\' and customDimensions.host == \'functions\' and customDimensions.action == \'update\' and not(tobool(customDimensions.ok)) and tostring(customDimensions.skipped) !~ \'true\'\n| project timestamp, operation_Id, resultCode = \'failed\', duration = totimespan(0s))'

resource actionGroup 'Microsoft.Insights/actionGroups@2023-01-01' = {
  name: '${namePrefix}-ag'
  location: 'global'
  tags: tags
  properties: {
    groupShortName: 'dirsync'
    enabled: true
    emailReceivers: [
      {
        name: 'sync-operator'
        emailAddress: alertEmail
        useCommonAlertSchema: true
      }
    ]
  }
}

resource failedRunAlert 'Microsoft.Insights/scheduledQueryRules@2023-12-01' = {
  name: '${namePrefix}-sync-failed'
  location: location
  tags: tags
  kind: 'LogAlert'
  properties: {
    displayName: 'Directory sync: a sync run failed'
    description: 'An execution of ${functionName} failed. Open the run in Application Insights (traces for its operation_Id) to see why; nothing past the failure point was sent.'
    severity: 1
    enabled: true
    scopes: [
      applicationInsightsId
    ]
    evaluationFrequency: 'PT15M'
    windowSize: 'PT30M'
    // Stateful: one mail when runs start failing, one when they recover.
    autoMitigate: true
    criteria: {
      allOf: [
        {
          query: failedRunsQuery
          timeAggregation: 'Count'
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
        actionGroup.id
      ]
    }
  }
}

output actionGroupId string = actionGroup.id
output alertRuleId string = failedRunAlert.id
