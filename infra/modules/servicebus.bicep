// Service Bus namespace, the dispatch queue, the requests queue other apps send to, and the queue
// Event Grid puts ACS events on.
//
// The queue's settings follow from how the app uses it (README "How sending works"):
// - the app never retries by abandoning a message: a failed attempt schedules a clone of the
//   message for later and completes the original, and a dead letter is a ledger record;
// - so a message is redelivered only when the invocation itself failed: the worker crashed,
//   the instance was recycled, or the host lost the lock.

@description('Service Bus namespace name, 6-50 characters, globally unique.')
param namespaceName string

param location string
param tags object

@description('Log Analytics workspace that receives the namespace\'s logs and metrics.')
param workspaceId string

// Must equal NOTIFICATIONS_QUEUE in local.settings.sample.json (tests/test_infra.py checks it):
// the trigger binds %NOTIFICATIONS_QUEUE% and this module's output feeds that app setting.
var queueName = 'notifications'

// The longest a dispatch attempt can take: shared/bootstrap.py sizes the send lease as two ACS
// calls (a look-up, then the send) of connect (10 s) + read (ACS_TIMEOUT_SECONDS, 30 s) each,
// plus 10 s: 90 s. The peek-lock must outlast it, so the message stays invisible for the whole
// attempt even if the host's lock renewal (host.json maxAutoLockRenewalDuration) fails once.
// 2 minutes leaves room for the ledger writes; the Service Bus maximum is 5 minutes. Raise it
// with ACS_TIMEOUT_SECONDS.
var lockSeconds = 120

// Redelivery means the invocation crashed, never "try again later" (that is a scheduled clone),
// so this only has to tell a crash loop from bad luck: five deliveries survive a couple of
// instance recycles, and a poison message reaches the dead-letter queue, and the alert on it,
// within minutes instead of spinning ten times.
var maxDeliveryCount = 5

resource namespace 'Microsoft.ServiceBus/namespaces@2024-01-01' = {
  name: namespaceName
  location: location
  tags: tags
  // Standard: duplicate detection and scheduled messages (both needed) at a fraction of Premium's
  // price. Premium adds private endpoints, customer-managed keys and predictable latency.
  sku: {
    name: 'Standard'
    tier: 'Standard'
  }
  properties: {
    // Entra ID only: no SAS key exists that could leak; clients need a data role.
    disableLocalAuth: true
    minimumTlsVersion: '1.2'
    publicNetworkAccess: 'Enabled'
  }
}

resource queue 'Microsoft.ServiceBus/namespaces/queues@2024-01-01' = {
  parent: namespace
  name: queueName
  properties: {
    lockDuration: 'PT${lockSeconds}S'
    maxDeliveryCount: maxDeliveryCount
    // Each retry is a new message, and the longest wait the app schedules is RETRY_MAX_SECONDS
    // (15 min) or an hour's send quota. Unread after a day means the dispatcher was down that
    // long: the message expires into the dead-letter queue (and the alert) rather than sending
    // day-old transactional mail by surprise.
    defaultMessageTimeToLive: 'P1D'
    deadLetteringOnMessageExpiration: true
    // Set only at creation. Every message carries a message id derived from the notification
    // and attempt, so a publish retried after an ambiguous failure is dropped by the broker.
    // The window equals DUPLICATE_DETECTION_WINDOW in shared/bootstrap.py (the embedded queue
    // uses the same value); tests/test_infra.py keeps the two equal.
    requiresDuplicateDetection: true
    duplicateDetectionHistoryTimeWindow: 'PT10M'
    // No sessions: notifications are independent, and sessions would serialize them.
    requiresSession: false
    // Not partitioned (cannot be changed later): one broker keeps duplicate detection keyed by
    // the message id alone, and the queue's volume is small.
    enablePartitioning: false
    maxSizeInMegabytes: 1024
    enableBatchedOperations: true
  }
}

// Must equal REQUESTS_QUEUE in local.settings.sample.json (tests/test_infra.py checks it).
var requestsQueueName = 'notification-requests'

// Other apps put notification requests here (README "Sending through Service Bus"). The intake
// function settles each message itself: an invalid request is dead-lettered at once with reason
// ValidationFailed, so redelivery here means a transient failure (the ledger or the attachment
// store unreachable) or a crashed invocation. An abandoned message comes back at once, with no
// backoff, so the delivery count is the only patience there is: ten deliveries, Service Bus's
// default, ride out a blip; a longer outage leaves requests in the dead-letter queue with
// MaxDeliveryCountExceeded, to be resubmitted as they are (idempotency makes that safe).
resource requestsQueue 'Microsoft.ServiceBus/namespaces/queues@2024-01-01' = {
  parent: namespace
  name: requestsQueueName
  properties: {
    // Intake is a ledger write and an enqueue, plus storing attachments (up to 7 MiB).
    lockDuration: 'PT1M'
    maxDeliveryCount: 10
    // A request unread for a day means intake was down that long; it expires into the
    // dead-letter queue rather than sending day-old mail by surprise.
    defaultMessageTimeToLive: 'P1D'
    deadLetteringOnMessageExpiration: true
    // A sender that retries a send after an ambiguous failure reuses its message id, and the
    // broker drops the copy; past the window the ledger's idempotency catches it. The window
    // equals DUPLICATE_DETECTION_WINDOW in shared/bootstrap.py, as for the dispatch queue.
    requiresDuplicateDetection: true
    duplicateDetectionHistoryTimeWindow: 'PT10M'
    requiresSession: false
    enablePartitioning: false
    maxSizeInMegabytes: 1024
    enableBatchedOperations: true
  }
}

// Must equal DELIVERY_REPORTS_QUEUE in local.settings.sample.json (tests/test_infra.py checks it).
var deliveryReportsQueueName = 'delivery-reports'

// Event Grid puts every ACS event (delivery and engagement reports, inbound SMS) here, one event a
// message, and the report function takes them a batch at a time: one ledger read and one write
// per batch instead of per event. Applying a report twice changes nothing, so redelivery is safe
// and there is no duplicate detection. A batch that fails to apply (the ledger unreachable) is
// released and delivered again at once, as a whole, with no backoff: a hundred deliveries ride out
// a storage outage of a few minutes before its messages go to the dead-letter queue with
// MaxDeliveryCountExceeded, to be resubmitted once the ledger is back.
resource deliveryReportsQueue 'Microsoft.ServiceBus/namespaces/queues@2024-01-01' = {
  parent: namespace
  name: deliveryReportsQueueName
  properties: {
    // A batch is up to host.json's maxMessageBatchSize (1,000) reports, applied in seconds, then
    // settled one message at a time. The host does not renew locks for a function that receives
    // batches (maxAutoLockRenewalDuration applies to single messages only), so the lock alone must
    // cover the whole invocation: Service Bus's longest, 5 minutes, as long as functionTimeout.
    lockDuration: 'PT5M'
    maxDeliveryCount: 100
    // A late report still wins over `unconfirmed`, so reports wait out an outage of the function
    // for a week; past that they expire into the dead-letter queue (and its alert).
    defaultMessageTimeToLive: 'P7D'
    deadLetteringOnMessageExpiration: true
    requiresDuplicateDetection: false
    requiresSession: false
    enablePartitioning: false
    // About a million reports of 1 KB.
    maxSizeInMegabytes: 1024
    enableBatchedOperations: true
  }
}

resource diagnostics 'Microsoft.Insights/diagnosticSettings@2021-05-01-preview' = {
  name: 'to-log-analytics'
  scope: namespace
  properties: {
    workspaceId: workspaceId
    logs: [
      {
        categoryGroup: 'allLogs'
        enabled: true
      }
    ]
    metrics: [
      {
        category: 'AllMetrics'
        enabled: true
      }
    ]
  }
}

output namespaceId string = namespace.id
output namespaceName string = namespace.name
// <namespace>.servicebus.windows.net (or the sovereign cloud's suffix), without scheme or port.
output fullyQualifiedNamespace string = replace(split(namespace.properties.serviceBusEndpoint, '/')[2], ':443', '')
output queueName string = queue.name
output requestsQueueName string = requestsQueue.name
output lockSeconds int = lockSeconds
output maxDeliveryCount int = maxDeliveryCount
output deliveryReportsQueueName string = deliveryReportsQueue.name
