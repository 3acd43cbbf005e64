// Delivers ACS events to the Function's Event Grid trigger (apply_delivery_report), retrying
// for a day and dead-lettering what still fails into blob storage with the topic's identity.

param topicName string

@description('Object id of the system topic\'s identity, which writes the dead letters.')
param topicPrincipalId string

param functionAppName string

@description('The Event Grid-triggered function in function_app.py.')
param functionName string = 'apply_delivery_report'

param storageAccountName string
param deadLetterContainerName string

@description('Create the subscription. Event Grid checks that the function exists, so the very first deployment (before the code is published) runs with false; see docs/deploy.md.')
param subscribe bool

// Storage Blob Data Contributor (built-in role id): write blobs into the one container.
var storageBlobDataContributor = 'ba92f5b4-2d11-453d-a403-e96b0029c9fe'

resource systemTopic 'Microsoft.EventGrid/systemTopics@2022-06-15' existing = {
  name: topicName
}

resource site 'Microsoft.Web/sites@2024-04-01' existing = {
  name: functionAppName
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

resource deliveryReports 'Microsoft.EventGrid/systemTopics/eventSubscriptions@2022-06-15' = if (subscribe) {
  parent: systemTopic
  name: 'delivery-reports-to-function'
  dependsOn: [
    deadLetterWriter
  ]
  properties: {
    // The Python Event Grid trigger reads the Event Grid schema (eventType, topic, ...).
    eventDeliverySchema: 'EventGridSchema'
    destination: {
      // Delivered through the Functions host's Event Grid extension: no webhook URL and no
      // key to manage, and the host answers the subscription handshake itself.
      endpointType: 'AzureFunction'
      properties: {
        resourceId: '${site.id}/functions/${functionName}'
        // The Python trigger is invoked once per event anyway.
        maxEventsPerBatch: 1
        preferredBatchSizeInKilobytes: 64
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
    // Event Grid's longest policy: 30 attempts on its back-off schedule within 24 hours. A
    // delivery report that arrives late still wins over `unconfirmed` (the status only moves
    // up), so a late report is worth delivering; one that fails for a day is dead-lettered.
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

output subscriptionName string = subscribe ? deliveryReports.name : ''
