// The operator's workbook: what the sync did, from the run summary record the Function writes
// once per run (shared/common/telemetry.py; its fields are customDimensions). Open it from the
// Application Insights resource (Workbooks) or the resource group; docs/deployment.md, "Workbook".
//
//   runs over time (ok / failed)    records sent per dataset    the read kind (full / delta)
//   duration and Graph requests     the last error              held deletions

@description('Azure region of the workbook.')
param location string

@description('Tags for the workbook.')
param tags object = {}

@description('Resource id of the Application Insights component the queries run against.')
param applicationInsightsId string

@description('Title of the workbook in the portal.')
param displayName string = 'Directory sync'

// Every query starts from the run summary records.
var runs = '''
traces
| where customDimensions.event == 'SyncRunSummary'
| extend action = tostring(customDimensions.action), ok = tobool(customDimensions.ok), host = tostring(customDimensions.host)
'''

var runsOverTimeQuery = '''
| summarize ok = countif(ok), failed = countif(not(ok)) by bin(timestamp, 1h)
| order by timestamp asc
'''

var recordsSentQuery = '''
| where action in ('update', 'replace')
| summarize addresses = sum(toint(customDimensions['addresses.added']) + toint(customDimensions['addresses.removed'])), groups = sum(toint(customDimensions['groups.added']) + toint(customDimensions['groups.removed'])), users = sum(toint(customDimensions['users.added']) + toint(customDimensions['users.removed'])) by bin(timestamp, 1h)
| order by timestamp asc
'''

var readKindQuery = '''
| extend readKind = tostring(customDimensions.readKind), readReason = tostring(customDimensions.readReason)
| where isnotempty(readKind)
| summarize runs = count() by readKind, bin(timestamp, 1d)
| order by timestamp asc
'''

var durationQuery = '''
| project timestamp, durationSeconds = todouble(customDimensions.durationSeconds), graphRequests = toint(customDimensions.graphRequests), readSeconds = todouble(customDimensions.readSeconds), sendSeconds = todouble(customDimensions.sendSeconds)
| order by timestamp asc
'''

var lastErrorQuery = '''
| where not(ok)
| top 1 by timestamp desc
| project timestamp, action, host, error = tostring(customDimensions.error), operation_Id
'''

var heldQuery = '''
| where action == 'update'
| top 1 by timestamp desc
| project timestamp, heldDeletions = toint(customDimensions.heldDeletions), addresses = toint(customDimensions['addresses.held']), groups = toint(customDimensions['groups.held']), users = toint(customDimensions['users.held'])
'''

var weekMs = 604800000

var content = {
  version: 'Notebook/1.0'
  items: [
    {
      type: 1
      name: 'about'
      content: {
        json: '## Directory sync\nOne row per run: the `SyncRunSummary` record each run writes (its fields are customDimensions). Alerts: missed runs, credential expiry, held deletions, failed runs.'
      }
    }
    {
      type: 3
      name: 'runs-over-time'
      content: {
        version: 'KqlItem/1.0'
        title: 'Runs over time: ok and failed'
        query: '${runs}${runsOverTimeQuery}'
        size: 0
        queryType: 0
        resourceType: 'microsoft.insights/components'
        visualization: 'barchart'
        timeContext: {
          durationMs: weekMs
        }
      }
    }
    {
      type: 3
      name: 'records-sent'
      content: {
        version: 'KqlItem/1.0'
        title: 'Records sent per dataset (added + removed)'
        query: '${runs}${recordsSentQuery}'
        size: 0
        queryType: 0
        resourceType: 'microsoft.insights/components'
        visualization: 'timechart'
        timeContext: {
          durationMs: weekMs
        }
      }
    }
    {
      type: 3
      name: 'read-kind'
      content: {
        version: 'KqlItem/1.0'
        title: 'Read kind: full or delta'
        query: '${runs}${readKindQuery}'
        size: 0
        queryType: 0
        resourceType: 'microsoft.insights/components'
        visualization: 'barchart'
        timeContext: {
          durationMs: weekMs
        }
      }
    }
    {
      type: 3
      name: 'duration'
      content: {
        version: 'KqlItem/1.0'
        title: 'Duration (s) and Graph requests'
        query: '${runs}${durationQuery}'
        size: 0
        queryType: 0
        resourceType: 'microsoft.insights/components'
        visualization: 'linechart'
        timeContext: {
          durationMs: weekMs
        }
      }
    }
    {
      type: 3
      name: 'last-error'
      content: {
        version: 'KqlItem/1.0'
        title: 'The last error'
        query: '${runs}${lastErrorQuery}'
        size: 0
        queryType: 0
        resourceType: 'microsoft.insights/components'
        visualization: 'table'
        timeContext: {
          durationMs: 4 * weekMs
        }
      }
    }
    {
      type: 3
      name: 'held-deletions'
      content: {
        version: 'KqlItem/1.0'
        title: 'Held deletions (the last update)'
        query: '${runs}${heldQuery}'
        size: 0
        queryType: 0
        resourceType: 'microsoft.insights/components'
        visualization: 'table'
        timeContext: {
          durationMs: weekMs
        }
      }
    }
  ]
  fallbackResourceIds: [
    applicationInsightsId
  ]
  '$schema': 'https://github.com/Microsoft/Application-Insights-Workbooks/blob/master/schema/workbook.json'
}

resource workbook 'Microsoft.Insights/workbooks@2023-06-01' = {
  name: guid(resourceGroup().id, applicationInsightsId, 'dirsync-workbook')
  location: location
  tags: union(tags, {
    'hidden-title': displayName
  })
  kind: 'shared'
  properties: {
    displayName: displayName
    category: 'workbook'
    sourceId: applicationInsightsId
    serializedData: string(content)
  }
}

output workbookId string = workbook.id
