// What the Function App's system-assigned identity may do, and nothing more. Each assignment is
// named guid(scope, principal, role), so a redeployment finds it again instead of failing on a
// duplicate, and two environments never collide.
//
// Built-in role definition ids (the same in every tenant), from Microsoft's built-in roles list:
var roles = {
  serviceBusDataSender: '69a216fc-b8fb-44d8-bc22-1f3c2cd27a39'
  serviceBusDataReceiver: '4f6d3b9b-027b-4f4c-9142-0e5a2a2247e0'
  storageTableDataContributor: '0a9a7e1f-b9d0-4cc4-a60d-0319b160aaa3'
  communicationAndEmailServiceOwner: '09976791-48a7-449e-bb21-39d1a415f350'
  storageBlobDataOwner: 'b7e6dc6d-f1e8-4753-8033-0f276bb0955b'
  storageQueueDataContributor: '974c5e8b-45b9-4653-ba55-5f855dd0fb88'
  monitoringMetricsPublisher: '3913510d-42f4-4e42-8a64-420c390055eb'
  eventGridDataSender: 'd5a91429-5739-47e2-a06b-3470a27159e7'
}

@description('Object id of the Function App\'s system-assigned identity.')
param principalId string

param storageAccountName string
param serviceBusNamespaceName string
param queueName string
param requestsQueueName string
param deliveryReportsQueueName string
param acsName string
param appInsightsName string

@description('The Event Grid custom topic the app publishes status events to.')
param statusEventsTopicName string

@description('App Insights accepts only Entra-authenticated telemetry: grant the identity Monitoring Metrics Publisher on it.')
param appInsightsEntraAuth bool

resource storage 'Microsoft.Storage/storageAccounts@2023-05-01' existing = {
  name: storageAccountName
}

resource namespace 'Microsoft.ServiceBus/namespaces@2024-01-01' existing = {
  name: serviceBusNamespaceName
}

resource queue 'Microsoft.ServiceBus/namespaces/queues@2024-01-01' existing = {
  parent: namespace
  name: queueName
}

resource requestsQueue 'Microsoft.ServiceBus/namespaces/queues@2024-01-01' existing = {
  parent: namespace
  name: requestsQueueName
}

resource deliveryReportsQueue 'Microsoft.ServiceBus/namespaces/queues@2024-01-01' existing = {
  parent: namespace
  name: deliveryReportsQueueName
}

resource acs 'Microsoft.Communication/communicationServices@2023-04-01' existing = {
  name: acsName
}

resource appInsights 'Microsoft.Insights/components@2020-02-02' existing = {
  name: appInsightsName
}

resource statusEventsTopic 'Microsoft.EventGrid/topics@2022-06-15' existing = {
  name: statusEventsTopicName
}

// --- Service Bus, scoped to the one queue.
// Receiver: the dispatch trigger peek-locks and completes messages. Sender: the app publishes
// accepted notifications and schedules retry clones (and cancels them) on the same queue.
// Neither can create or delete entities; Owner/Contributor would not grant data access at all.
resource queueReceiver 'Microsoft.Authorization/roleAssignments@2022-04-01' = {
  name: guid(queue.id, principalId, roles.serviceBusDataReceiver)
  scope: queue
  properties: {
    principalId: principalId
    principalType: 'ServicePrincipal'
    roleDefinitionId: subscriptionResourceId('Microsoft.Authorization/roleDefinitions', roles.serviceBusDataReceiver)
  }
}

resource queueSender 'Microsoft.Authorization/roleAssignments@2022-04-01' = {
  name: guid(queue.id, principalId, roles.serviceBusDataSender)
  scope: queue
  properties: {
    principalId: principalId
    principalType: 'ServicePrincipal'
    roleDefinitionId: subscriptionResourceId('Microsoft.Authorization/roleDefinitions', roles.serviceBusDataSender)
  }
}

// Receiver on the requests queue: the intake trigger peek-locks, completes and dead-letters.
// No Sender: the app never writes to it (other apps do; see requests-queue-senders.bicep).
resource requestsReceiver 'Microsoft.Authorization/roleAssignments@2022-04-01' = {
  name: guid(requestsQueue.id, principalId, roles.serviceBusDataReceiver)
  scope: requestsQueue
  properties: {
    principalId: principalId
    principalType: 'ServicePrincipal'
    roleDefinitionId: subscriptionResourceId('Microsoft.Authorization/roleDefinitions', roles.serviceBusDataReceiver)
  }
}

// Receiver on the delivery-reports queue: the report trigger peek-locks, completes and
// dead-letters. Event Grid's topic is its only sender (eventgrid-subscription.bicep).
resource deliveryReportsReceiver 'Microsoft.Authorization/roleAssignments@2022-04-01' = {
  name: guid(deliveryReportsQueue.id, principalId, roles.serviceBusDataReceiver)
  scope: deliveryReportsQueue
  properties: {
    principalId: principalId
    principalType: 'ServicePrincipal'
    roleDefinitionId: subscriptionResourceId('Microsoft.Authorization/roleDefinitions', roles.serviceBusDataReceiver)
  }
}

// --- Storage, scoped to the environment's own account.
// Table Data Contributor: the ledger, the suppression list and the rate limiter are tables
// (read, write, delete entities; create a table on first use). The Functions host also writes
// its diagnostic events table with the AzureWebJobsStorage identity.
resource tableContributor 'Microsoft.Authorization/roleAssignments@2022-04-01' = {
  name: guid(storage.id, principalId, roles.storageTableDataContributor)
  scope: storage
  properties: {
    principalId: principalId
    principalType: 'ServicePrincipal'
    roleDefinitionId: subscriptionResourceId('Microsoft.Authorization/roleDefinitions', roles.storageTableDataContributor)
  }
}

// Blob Data Owner: identity-based AzureWebJobsStorage needs it, not Contributor: the host
// takes blob leases (the timer trigger's singleton lock, so one instance reconciles) and keeps
// its host keys and the timer's schedule status (use_monitor=True) in blobs, and Flex
// Consumption reads the deployment package from blob storage with this identity.
resource blobOwner 'Microsoft.Authorization/roleAssignments@2022-04-01' = {
  name: guid(storage.id, principalId, roles.storageBlobDataOwner)
  scope: storage
  properties: {
    principalId: principalId
    principalType: 'ServicePrincipal'
    roleDefinitionId: subscriptionResourceId('Microsoft.Authorization/roleDefinitions', roles.storageBlobDataOwner)
  }
}

// Queue Data Contributor: the rest of what identity-based AzureWebJobsStorage is documented
// to need; the host uses storage queues internally (blob-trigger receipts and poison queues,
// and some extensions' scale signals). The app itself uses no storage queue.
resource queueContributor 'Microsoft.Authorization/roleAssignments@2022-04-01' = {
  name: guid(storage.id, principalId, roles.storageQueueDataContributor)
  scope: storage
  properties: {
    principalId: principalId
    principalType: 'ServicePrincipal'
    roleDefinitionId: subscriptionResourceId('Microsoft.Authorization/roleDefinitions', roles.storageQueueDataContributor)
  }
}

// --- ACS, scoped to the one resource.
// ACS has no data-plane role for sending: an Entra token is authorized against control-plane
// actions on the resource. "Communication and Email Service Owner"
// is the built-in role Microsoft documents for Entra-authenticated email; the narrower
// alternative is a custom role with Microsoft.Communication/CommunicationServices/Read and
// /Write and Microsoft.Communication/EmailServices/write. Scoped to this ACS resource only, it
// cannot touch the Email Communication Service's domains or any other resource.
resource acsSender 'Microsoft.Authorization/roleAssignments@2022-04-01' = {
  name: guid(acs.id, principalId, roles.communicationAndEmailServiceOwner)
  scope: acs
  properties: {
    principalId: principalId
    principalType: 'ServicePrincipal'
    roleDefinitionId: subscriptionResourceId('Microsoft.Authorization/roleDefinitions', roles.communicationAndEmailServiceOwner)
  }
}

// --- App Insights with Entra-only ingestion: publishing telemetry is this role.
resource telemetryPublisher 'Microsoft.Authorization/roleAssignments@2022-04-01' = if (appInsightsEntraAuth) {
  name: guid(appInsights.id, principalId, roles.monitoringMetricsPublisher)
  scope: appInsights
  properties: {
    principalId: principalId
    principalType: 'ServicePrincipal'
    roleDefinitionId: subscriptionResourceId('Microsoft.Authorization/roleDefinitions', roles.monitoringMetricsPublisher)
  }
}

// --- Event Grid, scoped to the status events topic: publish events, nothing else (the topic has
// local auth disabled, so this role is the only way in).
resource statusEventSender 'Microsoft.Authorization/roleAssignments@2022-04-01' = {
  name: guid(statusEventsTopic.id, principalId, roles.eventGridDataSender)
  scope: statusEventsTopic
  properties: {
    principalId: principalId
    principalType: 'ServicePrincipal'
    roleDefinitionId: subscriptionResourceId('Microsoft.Authorization/roleDefinitions', roles.eventGridDataSender)
  }
}
