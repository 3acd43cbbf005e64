// Puts ACS events on the delivery-reports Service Bus queue, where the Function's batch trigger
// (apply_delivery_reports) takes them a thousand at a time. The topic's identity sends to that
// one queue and writes Event Grid's own dead letters (events the queue would not take for a day)
// into blob storage; no key or URL is involved.
//
// Through a queue rather than Event Grid's Azure Function destination: the Python Event Grid
// trigger is invoked once per event, so every report cost its own ledger read and write, where a
// batch costs one of each; the queue also holds reports through an outage of the function (a
// week, see servicebus.bicep) and the subscription no longer needs the function to exist, so the
// first deployment needs no second pass.

param topicName string

@description('Object id of the system topic\'s identity, which sends the events and writes the dead letters.')
param topicPrincipalId string

param serviceBusNamespaceName string
param deliveryReportsQueueName string

param storageAccountName string
param deadLetterContainerName string

// Built-in role definition ids: Azure Service Bus Data Sender, Storage Blob Data Contributor.
var serviceBusDataSender = '69a216fc-b8fb-44d8-bc22-1f3c2cd27a39'
var storageBlobDataContributor = 'ba92f5b4-2d11-453d-a403-e96b0029c9fe'

resource systemTopic 'Microsoft.EventGrid/systemTopics@2022-06-15' existing = {
  name: topicName
}

resource namespace 'Microsoft.ServiceBus/namespaces@2024-01-01' existing = {
  name: serviceBusNamespaceName
}

resource deliveryReportsQueue 'Microsoft.ServiceBus/namespaces/queues@2024-01-01' existing = {
  parent: namespace
  name: deliveryReportsQueueName
}

resource storage 'Microsoft.Storage/storageAccounts@2023-05-01' existing = {
  name: storageAccountName
}

resource blobService 'Microsoft.Storage/storageAccounts/blobServices@2023-05-01' existing = {
  parent: storage
  name: 'default'
}

resource deadLetterContainer 'Microsoft.Storage/storageAccounts/blobServices/containers@2023-05-01' existing = {
  parent: blobService
  name: deadLetterContainerName
}

// Scoped to the one queue: the topic can send there and nowhere else.
resource queueSender 'Microsoft.Authorization/roleAssignments@2022-04-01' = {
  name: guid(deliveryReportsQueue.id, topicPrincipalId, serviceBusDataSender)
  scope: deliveryReportsQueue
  properties: {
    principalId: topicPrincipalId
    principalType: 'ServicePrincipal'
    roleDefinitionId: subscriptionResourceId('Microsoft.Authorization/roleDefinitions', serviceBusDataSender)
  }
}

// Scoped to the dead-letter container alone: the topic can write there and nowhere else.
resource deadLetterWriter 'Microsoft.Authorization/roleAssignments@2022-04-01' = {
  name: guid(deadLetterContainer.id, topicPrincipalId, storageBlobDataContributor)
  scope: deadLetterContainer
  properties: {
    principalId: topicPrincipalId
    principalType: 'ServicePrincipal'
    roleDefinitionId: subscriptionResourceId('Microsoft.Authorization/roleDefinitions', storageBlobDataContributor)
  }
}

// The name is kept from when the subscription targeted the function directly, so that a
// redeployment updates it in place rather than leaving the old one delivering to a function
// that no longer exists.
resource deliveryReports 'Microsoft.EventGrid/systemTopics/eventSubscriptions@2022-06-15' = {
  parent: systemTopic
  name: 'delivery-reports-to-function'
  dependsOn: [
    queueSender
    deadLetterWriter
  ]
  properties: {
    // Each message body is one event in the Event Grid schema (eventType, topic, ...), which the
    // trigger reads as the /api/events webhook does.
    eventDeliverySchema: 'EventGridSchema'
    deliveryWithResourceIdentity: {
      identity: {
        type: 'SystemAssigned'
      }
      destination: {
        endpointType: 'ServiceBusQueue'
        properties: {
          resourceId: deliveryReportsQueue.id
        }
      }
    }
    filter: {
      includedEventTypes: [
        'Microsoft.Communication.EmailDeliveryReportReceived'
        'Microsoft.Communication.SMSDeliveryReportReceived'
        'Microsoft.Communication.EmailEngagementTrackingReportReceived'
        'Microsoft.Communication.SMSReceived'
      ]
    }
    // Event Grid's longest policy, 30 attempts within 24 hours, for the rare time the queue is
    // unavailable or full; then the event is dead-lettered to blob storage.
    retryPolicy: {
      maxDeliveryAttempts: 30
      eventTimeToLiveInMinutes: 1440
    }
    deadLetterWithResourceIdentity: {
      identity: {
        type: 'SystemAssigned'
      }
      deadLetterDestination: {
        endpointType: 'StorageBlob'
        properties: {
          resourceId: storage.id
          blobContainerName: deadLetterContainer.name
        }
      }
    }
  }
}

output subscriptionName string = deliveryReports.name
