// The Event Grid system topic for the ACS resource: the source of email and SMS delivery
// reports, engagement reports and inbound SMS. Its system-assigned identity writes dead letters.

param topicName string
param tags object

@description('The ACS resource whose events the topic publishes.')
param acsId string

resource systemTopic 'Microsoft.EventGrid/systemTopics@2022-06-15' = {
  name: topicName
  // ACS is a global resource, so its system topic is too.
  location: 'global'
  tags: tags
  identity: {
    type: 'SystemAssigned'
  }
  properties: {
    source: acsId
    topicType: 'Microsoft.Communication.CommunicationServices'
  }
}

output name string = systemTopic.name
output principalId string = systemTopic.identity.principalId
