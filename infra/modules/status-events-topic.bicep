// The Event Grid custom topic that status events are published to (README "Status events"):
// CloudEvents 1.0 in, Entra ID only (local auth, the topic's access keys, is disabled, so the
// Function App publishes with its identity and EventGrid Data Sender, see function-roles.bicep).
//
// Apps subscribe to the topic themselves. The example subscription here delivers every status
// event to a Storage queue with the topic's own identity (no key, no webhook handshake), retries
// for a day and dead-letters what still fails into the environment's dead-letter container.

param topicName string
param location string
param tags object

param storageAccountName string
param deadLetterContainerName string

@description('Create the example subscription: every status event into the storage queue below.')
param exampleSubscription bool = true

@description('The storage queue the example subscription delivers to.')
param exampleQueueName string = 'status-events'

// Built-in role definition ids: Storage Queue Data Message Sender (the example delivery) and
// Storage Blob Data Contributor (its dead letters).
var storageQueueDataMessageSender = 'c6a89b2d-59bc-44d0-9896-0f6e12d7b80a'
var storageBlobDataContributor = 'ba92f5b4-2d11-453d-a403-e96b0029c9fe'

resource topic 'Microsoft.EventGrid/topics@2022-06-15' = {
  name: topicName
  location: location
  tags: tags
  identity: {
    type: 'SystemAssigned'
  }
  properties: {
    // checkov:skip=CKV_AZURE_193:No VNet in this deployment: the Function App publishes over the public endpoint with Entra ID (local auth is disabled). Private endpoints would close it.
    inputSchema: 'CloudEventSchemaV1_0'
    disableLocalAuth: true
    publicNetworkAccess: 'Enabled'
  }
}

resource storage 'Microsoft.Storage/storageAccounts@2023-05-01' existing = {
  name: storageAccountName
}

resource queueService 'Microsoft.Storage/storageAccounts/queueServices@2023-05-01' existing = {
  parent: storage
  name: 'default'
}

resource exampleQueue 'Microsoft.Storage/storageAccounts/queueServices/queues@2023-05-01' = if (exampleSubscription) {
  parent: queueService
  name: exampleQueueName
}

resource blobService 'Microsoft.Storage/storageAccounts/blobServices@2023-05-01' existing = {
  parent: storage
  name: 'default'
}

resource deadLetterContainer 'Microsoft.Storage/storageAccounts/blobServices/containers@2023-05-01' existing = {
  parent: blobService
  name: deadLetterContainerName
}

resource queueWriter 'Microsoft.Authorization/roleAssignments@2022-04-01' = if (exampleSubscription) {
  name: guid(exampleQueue.id, topic.identity.principalId, storageQueueDataMessageSender)
  scope: exampleQueue
  properties: {
    principalId: topic.identity.principalId
    principalType: 'ServicePrincipal'
    roleDefinitionId: subscriptionResourceId('Microsoft.Authorization/roleDefinitions', storageQueueDataMessageSender)
  }
}

resource deadLetterWriter 'Microsoft.Authorization/roleAssignments@2022-04-01' = if (exampleSubscription) {
  name: guid(deadLetterContainer.id, topic.identity.principalId, storageBlobDataContributor)
  scope: deadLetterContainer
  properties: {
    principalId: topic.identity.principalId
    principalType: 'ServicePrincipal'
    roleDefinitionId: subscriptionResourceId('Microsoft.Authorization/roleDefinitions', storageBlobDataContributor)
  }
}

resource example 'Microsoft.EventGrid/topics/eventSubscriptions@2022-06-15' = if (exampleSubscription) {
  parent: topic
  name: 'status-events-to-queue'
  dependsOn: [
    queueWriter
    deadLetterWriter
  ]
  properties: {
    eventDeliverySchema: 'CloudEventSchemaV1_0'
    deliveryWithResourceIdentity: {
      identity: {
        type: 'SystemAssigned'
      }
      destination: {
        endpointType: 'StorageQueue'
        properties: {
          resourceId: storage.id
          queueName: exampleQueueName
          // -1: a message stays until a reader takes it (the default would expire it in 7 days).
          queueMessageTimeToLiveInSeconds: -1
        }
      }
    }
    filter: {
      // Every status: <prefix>.notification.<status>. An app would narrow this, e.g. with
      // includedEventTypes [ 'Notify.notification.delivered', 'Notify.notification.bounced' ].
      subjectBeginsWith: 'notifications/'
    }
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
          blobContainerName: deadLetterContainerName
        }
      }
    }
  }
}

output name string = topic.name
output endpoint string = topic.properties.endpoint
output exampleSubscriptionName string = exampleSubscription ? example.name : ''
