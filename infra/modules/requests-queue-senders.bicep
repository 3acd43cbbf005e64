// Who may put notification requests on the requests queue: the apps' own identities, each
// granted Azure Service Bus Data Sender on that one queue and nothing else. Sending there is all
// it takes to have the service email or text anyone, so the list is explicit, per environment.
//
// Each assignment is named guid(queue, principal, role), so a redeployment finds it again, and
// removing an id from the list leaves its assignment in place (role assignments are not pruned
// by an incremental deployment): remove it in the portal or with az role assignment delete too.

var serviceBusDataSender = '69a216fc-b8fb-44d8-bc22-1f3c2cd27a39'

@description('Object ids of the service principals (managed identities, app registrations) that may send requests.')
param principalIds array

param serviceBusNamespaceName string
param requestsQueueName string

resource namespace 'Microsoft.ServiceBus/namespaces@2024-01-01' existing = {
  name: serviceBusNamespaceName
}

resource requestsQueue 'Microsoft.ServiceBus/namespaces/queues@2024-01-01' existing = {
  parent: namespace
  name: requestsQueueName
}

resource senders 'Microsoft.Authorization/roleAssignments@2022-04-01' = [for principalId in principalIds: {
  name: guid(requestsQueue.id, principalId, serviceBusDataSender)
  scope: requestsQueue
  properties: {
    principalId: principalId
    principalType: 'ServicePrincipal'
    roleDefinitionId: subscriptionResourceId('Microsoft.Authorization/roleDefinitions', serviceBusDataSender)
  }
}]
