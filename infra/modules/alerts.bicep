// Alerts for what an operator must act on, all to one action group:
// 1. function failure rate over 5 % (App Insights requests: every trigger's invocations);
// 2. email failure rate over 1 % (ACS delivery statuses): ACS throttles senders at 1-2 %;
// 3. the dispatch queue's dead-letter sub-queue is not empty (a crash loop or expired messages);
// 4. delivery reports missing their deadline (the reconciler's `unconfirmed`);
// 5. the app's own failure-rate event (the reconciler's notify.failure_rate warning);
// 6. notifications the dispatcher dead-lettered (its notify.dead_lettered event);
// 7. dispatch messages waiting too long on the queue (the notify.queue.age metric).
// What each means and what to do: docs/operations.md.

param namePrefix string
param location string
param tags object

@description('Receives every alert.')
param alertEmail string

param appInsightsId string
param workspaceId string
param serviceBusNamespaceId string
param queueName string
param requestsQueueName string
param deliveryReportsQueueName string

@description('Percent of failed function invocations that raises the alert.')
param functionFailureRatePercent int = 5

@description('Percent of failed email deliveries that raises the alert.')
param emailFailureRatePercent int = 1

@description('Sends below this many in the window are too few for a rate (one bounce in ten is not a trend); matches FAILURE_RATE_MIN_SENT.')
param emailMinDeliveries int = 50

@description('Seconds a dispatch message may wait on the queue before the queue-age alert fires.')
param queueAgeSeconds int = 300

resource actionGroup 'Microsoft.Insights/actionGroups@2023-01-01' = {
  name: 'ag-${namePrefix}'
  location: 'global'
  tags: tags
  properties: {
    groupShortName: 'notify-ops'
    enabled: true
    emailReceivers: [
      {
        name: 'operators'
        emailAddress: alertEmail
        useCommonAlertSchema: true
      }
    ]
  }
}

// Invocations of every function (HTTP, Service Bus, Event Grid, timer) are `requests` rows.
// HTTP 4xx answers are the caller's mistake (bad input, a missing token), not a failing
// function, so they do not count. At least 20 in the window: two failures out of three do not
// page anyone.
resource functionFailureRate 'Microsoft.Insights/scheduledQueryRules@2023-12-01' = {
  name: '${namePrefix}-function-failure-rate'
  location: location
  tags: tags
  kind: 'LogAlert'
  properties: {
    displayName: 'Notify: function failure rate over ${functionFailureRatePercent} %'
    description: 'More than ${functionFailureRatePercent} % of function invocations failed in the last 15 minutes. Check exceptions in App Insights: a failing dispatcher is redelivered and ends in the dead-letter queue.'
    severity: 1
    enabled: true
    evaluationFrequency: 'PT5M'
    windowSize: 'PT15M'
    scopes: [
      appInsightsId
    ]
    // The tables exist only after the first telemetry arrives.
    skipQueryValidation: true
    criteria: {
      allOf: [
        {
          query: format('''
requests
| extend code = toint(resultCode)
| summarize total = count(), failed = countif(success == false and (isnull(code) or code < 400 or code >= 500))
| where total >= 20
| extend failureRatePercent = round(100.0 * failed / total, 2)
| where failureRatePercent > {0}
''', functionFailureRatePercent)
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
    autoMitigate: true
    actions: {
      actionGroups: [
        actionGroup.id
      ]
    }
  }
}

// Recipient-level terminal statuses from the ACS diagnostic logs: everything but Delivered
// counts against the sender's reputation.
resource emailFailureRate 'Microsoft.Insights/scheduledQueryRules@2023-12-01' = {
  name: '${namePrefix}-email-failure-rate'
  location: location
  tags: tags
  kind: 'LogAlert'
  properties: {
    displayName: 'Notify: email failure rate over ${emailFailureRatePercent} %'
    description: 'More than ${emailFailureRatePercent} % of email deliveries in the last hour bounced, failed, were suppressed, quarantined or filtered as spam. ACS throttles senders whose failure rate passes 1-2 %: find the sending app and the addresses (GET /api/reconciliation, ACSEmailStatusUpdateOperational).'
    severity: 1
    enabled: true
    evaluationFrequency: 'PT15M'
    windowSize: 'PT1H'
    scopes: [
      workspaceId
    ]
    skipQueryValidation: true
    criteria: {
      allOf: [
        {
          query: format('''
ACSEmailStatusUpdateOperational
| where isnotempty(RecipientId)
| where DeliveryStatus in ("Delivered", "Failed", "Bounced", "Suppressed", "Quarantined", "FilteredSpam")
| summarize total = count(), failed = countif(DeliveryStatus != "Delivered"), hardBounces = countif(tobool(IsHardBounce))
| where total >= {0}
| extend failureRatePercent = round(100.0 * failed / total, 2)
| where failureRatePercent > {1}
''', emailMinDeliveries, emailFailureRatePercent)
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
    autoMitigate: true
    actions: {
      actionGroups: [
        actionGroup.id
      ]
    }
  }
}

// Any message in the dispatch queue's dead-letter sub-queue: a crash loop (MaxDeliveryCount-
// Exceeded) or a message that waited a day (TTLExpiredException). The app's own dead letters
// are ledger records and do not land here.
resource deadLetters 'Microsoft.Insights/metricAlerts@2018-03-01' = {
  name: '${namePrefix}-dead-letter-queue'
  location: 'global'
  tags: tags
  properties: {
    description: 'The ${queueName} queue\'s dead-letter sub-queue is not empty. Read DeadLetterReason on the messages, fix the cause, then resubmit them (the ledger knows each notification).'
    severity: 2
    enabled: true
    scopes: [
      serviceBusNamespaceId
    ]
    evaluationFrequency: 'PT5M'
    windowSize: 'PT5M'
    criteria: {
      'odata.type': 'Microsoft.Azure.Monitor.SingleResourceMultipleMetricCriteria'
      allOf: [
        {
          name: 'DeadletteredMessages'
          criterionType: 'StaticThresholdCriterion'
          metricNamespace: 'Microsoft.ServiceBus/namespaces'
          metricName: 'DeadletteredMessages'
          dimensions: [
            {
              name: 'EntityName'
              operator: 'Include'
              values: [
                queueName
              ]
            }
          ]
          operator: 'GreaterThan'
          threshold: 0
          timeAggregation: 'Maximum'
        }
      ]
    }
    autoMitigate: true
    actions: [
      {
        actionGroupId: actionGroup.id
      }
    ]
  }
}

// Any request in the requests queue's dead-letter sub-queue. The sending apps cannot see it (a
// data role on the queue would let them take other apps' requests), so operators hear of it:
// ValidationFailed or IdempotencyConflict is a sending app's bug to report to its owners (the
// description holds the field errors); MaxDeliveryCountExceeded means intake kept failing.
resource requestDeadLetters 'Microsoft.Insights/metricAlerts@2018-03-01' = {
  name: '${namePrefix}-requests-dead-letter-queue'
  location: 'global'
  tags: tags
  properties: {
    description: 'The ${requestsQueueName} queue\'s dead-letter sub-queue is not empty. ValidationFailed and IdempotencyConflict: tell the sending app (the description holds the problem details). MaxDeliveryCountExceeded: fix intake, then resubmit the requests unchanged.'
    severity: 3
    enabled: true
    scopes: [
      serviceBusNamespaceId
    ]
    evaluationFrequency: 'PT15M'
    windowSize: 'PT15M'
    criteria: {
      'odata.type': 'Microsoft.Azure.Monitor.SingleResourceMultipleMetricCriteria'
      allOf: [
        {
          name: 'DeadletteredMessages'
          criterionType: 'StaticThresholdCriterion'
          metricNamespace: 'Microsoft.ServiceBus/namespaces'
          metricName: 'DeadletteredMessages'
          dimensions: [
            {
              name: 'EntityName'
              operator: 'Include'
              values: [
                requestsQueueName
              ]
            }
          ]
          operator: 'GreaterThan'
          threshold: 0
          timeAggregation: 'Maximum'
        }
      ]
    }
    autoMitigate: true
    actions: [
      {
        actionGroupId: actionGroup.id
      }
    ]
  }
}

// Any event in the delivery-reports queue's dead-letter sub-queue: UnreadableEvent (a message
// whose body is not JSON; Event Grid is the only sender, so this is a misconfiguration),
// MaxDeliveryCountExceeded (applying the batch kept failing: the ledger was unreachable) or
// TTLExpiredException (the function was down for a week).
resource reportDeadLetters 'Microsoft.Insights/metricAlerts@2018-03-01' = {
  name: '${namePrefix}-delivery-reports-dead-letter-queue'
  location: 'global'
  tags: tags
  properties: {
    description: 'The ${deliveryReportsQueueName} queue\'s dead-letter sub-queue is not empty. MaxDeliveryCountExceeded or TTLExpiredException: once apply_delivery_reports succeeds again, resubmit the messages unchanged (applying a report twice changes nothing). UnreadableEvent: find what else sends to the queue.'
    severity: 3
    enabled: true
    scopes: [
      serviceBusNamespaceId
    ]
    evaluationFrequency: 'PT15M'
    windowSize: 'PT15M'
    criteria: {
      'odata.type': 'Microsoft.Azure.Monitor.SingleResourceMultipleMetricCriteria'
      allOf: [
        {
          name: 'DeadletteredMessages'
          criterionType: 'StaticThresholdCriterion'
          metricNamespace: 'Microsoft.ServiceBus/namespaces'
          metricName: 'DeadletteredMessages'
          dimensions: [
            {
              name: 'EntityName'
              operator: 'Include'
              values: [
                deliveryReportsQueueName
              ]
            }
          ]
          operator: 'GreaterThan'
          threshold: 0
          timeAggregation: 'Maximum'
        }
      ]
    }
    autoMitigate: true
    actions: [
      {
        actionGroupId: actionGroup.id
      }
    ]
  }
}

// The reconciler logs "reconciled: N unconfirmed, ..." when recipients passed
// DELIVERY_REPORT_DEADLINE_SECONDS without a delivery report. ACS reports every send, so a
// miss means reports are not arriving: the Event Grid subscription is missing or failing
// (look in the eventgrid-deadletters container), or apply_delivery_reports is failing (its
// queue fills up, and then its dead-letter sub-queue).
resource deliveryReportDeadline 'Microsoft.Insights/scheduledQueryRules@2023-12-01' = {
  name: '${namePrefix}-delivery-report-deadline'
  location: location
  tags: tags
  kind: 'LogAlert'
  properties: {
    displayName: 'Notify: delivery reports missing their deadline'
    description: 'Recipients were marked unconfirmed: no delivery report arrived within DELIVERY_REPORT_DEADLINE_SECONDS. Check the Event Grid subscription on the ACS system topic and its dead letters, the delivery-reports queue, and apply_delivery_reports failures.'
    severity: 2
    enabled: true
    evaluationFrequency: 'PT15M'
    windowSize: 'PT1H'
    scopes: [
      appInsightsId
    ]
    skipQueryValidation: true
    criteria: {
      allOf: [
        {
          query: '''
traces
| where message startswith "reconciled: " and message has "unconfirmed"
| extend unconfirmed = toint(extract("([0-9]+) unconfirmed", 1, message))
| summarize unconfirmed = sum(unconfirmed)
| where unconfirmed > 0
'''
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
    autoMitigate: true
    actions: {
      actionGroups: [
        actionGroup.id
      ]
    }
  }
}

// The reconciler's own failure-rate event (README "Delivery reports and reconciliation"):
// `event=notify.failure_rate` at WARNING above FAILURE_RATE_WARNING and ERROR above
// FAILURE_RATE_CRITICAL, per channel, every run while the rate stays there. The structured
// field reaches customDimensions when the app exports logs with OpenTelemetry; the message
// text ("failure rate <level> on <channel>: ...") matches either way.
resource appFailureRate 'Microsoft.Insights/scheduledQueryRules@2023-12-01' = {
  name: '${namePrefix}-app-failure-rate'
  location: location
  tags: tags
  kind: 'LogAlert'
  properties: {
    displayName: 'Notify: the reconciler reports a failure rate over threshold'
    description: 'The reconciler logged notify.failure_rate: bounced + failed + suppressed over sent passed FAILURE_RATE_WARNING on a channel. GET /api/reconciliation shows which.'
    severity: 2
    enabled: true
    evaluationFrequency: 'PT5M'
    windowSize: 'PT15M'
    scopes: [
      appInsightsId
    ]
    skipQueryValidation: true
    criteria: {
      allOf: [
        {
          query: '''
traces
| where tostring(customDimensions.event) == "notify.failure_rate" or message startswith "failure rate "
| project timestamp, severityLevel, message
'''
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
    autoMitigate: true
    actions: {
      actionGroups: [
        actionGroup.id
      ]
    }
  }
}

// Notifications the dispatcher gave up on. In Azure a dead letter is a ledger record with its
// reason (the trigger completes the message), so the Service Bus dead-letter alert above never
// sees it: the dispatcher's `event=notify.dead_lettered` log line is the signal
// (docs/operations.md, "Dead-letter reasons").
resource ledgerDeadLetters 'Microsoft.Insights/scheduledQueryRules@2023-12-01' = {
  name: '${namePrefix}-dead-lettered-notifications'
  location: location
  tags: tags
  kind: 'LogAlert'
  properties: {
    displayName: 'Notify: notifications dead-lettered'
    description: 'The dispatcher gave up on notifications (permanent ACS error, attempts exhausted, configuration). docs/operations.md, "Dead-letter reasons", has the query that groups them by reason and what to do for each.'
    severity: 2
    enabled: true
    evaluationFrequency: 'PT15M'
    windowSize: 'PT15M'
    scopes: [
      appInsightsId
    ]
    skipQueryValidation: true
    criteria: {
      allOf: [
        {
          query: '''
traces
| where tostring(customDimensions.event) == "notify.dead_lettered"
| summarize count() by reason = tostring(customDimensions.reason)
'''
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
    autoMitigate: true
    actions: {
      actionGroups: [
        actionGroup.id
      ]
    }
  }
}

// How long dispatch messages wait before a dispatcher takes them (the notify.queue.age histogram,
// customMetrics). Scheduled retries and quota deferrals count from when they become visible, so a
// long wait means the dispatcher is behind or not running, not that backoff is long.
resource queueAge 'Microsoft.Insights/scheduledQueryRules@2023-12-01' = {
  name: '${namePrefix}-queue-age'
  location: location
  tags: tags
  kind: 'LogAlert'
  properties: {
    displayName: 'Notify: dispatch messages wait longer than ${queueAgeSeconds} s'
    description: 'A message waited more than ${queueAgeSeconds} s on the notifications queue before a dispatcher took it: the dispatcher is failing, throttled by its quota, or not scaling. docs/operations.md, "Queue age".'
    severity: 2
    enabled: true
    evaluationFrequency: 'PT5M'
    windowSize: 'PT15M'
    scopes: [
      appInsightsId
    ]
    skipQueryValidation: true
    criteria: {
      allOf: [
        {
          query: format('''
customMetrics
| where name == "notify.queue.age"
| summarize oldest = max(valueMax)
| where oldest > {0}
''', queueAgeSeconds)
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
    autoMitigate: true
    actions: {
      actionGroups: [
        actionGroup.id
      ]
    }
  }
}

output actionGroupId string = actionGroup.id
output alertRuleNames array = [
  functionFailureRate.name
  emailFailureRate.name
  deadLetters.name
  deliveryReportDeadline.name
  appFailureRate.name
  ledgerDeadLetters.name
  queueAge.name
]
