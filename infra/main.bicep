// The notification service in Azure: one resource group and one deployment per environment.
//
//   az deployment group create -g rg-notify-<env> --parameters infra/env/<env>.bicepparam
//
// Every resource name is derived from the environment name and a suffix unique to the
// resource group, so dev, staging and prod never share a resource. Every connection is
// identity-based: this template creates no key, reads no key (no listKeys) and writes no
// connection string; the only "connection string" is App Insights', which holds no secret.
// docs/deploy.md walks through a deployment; docs/deploy.md "Hosting plan" argues the plan.

targetScope = 'resourceGroup'

@description('The environment: part of every name, and the tag that tells environments apart.')
@allowed([
  'dev'
  'staging'
  'prod'
])
param environmentName string

@description('Region for the regional resources; Flex Consumption runs in a subset (az functionapp list-flexconsumption-locations).')
param location string = resourceGroup().location

@description('Where ACS and the Email Communication Service keep data at rest ("United States", "Europe", "UK", ...). Fixed at creation.')
param dataLocation string

@description('Receives every alert.')
param alertEmail string

@description('Custom sending domain (e.g. notify.example.com); empty sends only from the Azure-managed azurecomm.net domain.')
param customEmailDomain string = ''

@description('Link the custom domain to ACS and send from it: only once its DNS records are verified (docs/deploy.md).')
param linkCustomEmailDomain bool = false

@description('Sender usernames on the custom domain, the first the default sender: [{ username, displayName }]. Usernames other than DoNotReply need ACS to have raised the domain\'s sending limits.')
param emailSenderUsernames array = [
  {
    username: 'DoNotReply'
    displayName: 'Notifications'
  }
]

@description('Let ACS track email opens and clicks on the custom domain.')
param emailEngagementTracking bool = false

@description('SMS_SENDERS: the E.164 numbers bought on this environment\'s ACS resource (portal or az communication phonenumber), comma-separated, the first the default. Numbers cannot be bought with Bicep.')
param smsSenders string

@description('TABLES_ENDPOINT override: empty uses this environment\'s Table Storage; a Cosmos DB for Table endpoint (https://<account>.table.cosmos.azure.com:443/) moves the ledger there with the same SDK (docs/deploy.md).')
param tablesEndpoint string = ''

@description('EMAIL_RATE_PER_MINUTE; -1 takes ACS\'s default for the sending domain (30 custom, 5 Azure-managed).')
param emailRatePerMinute int = -1

@description('EMAIL_RATE_PER_HOUR; -1 takes ACS\'s default for the sending domain (100 custom, 10 Azure-managed).')
param emailRatePerHour int = -1

@description('SMS_RATE_PER_MINUTE: a toll-free number\'s 200 message units a minute.')
param smsRatePerMinute int = 200

@description('SMS_RATE_PER_HOUR (0 = no hourly cap).')
param smsRatePerHour int = 0

@description('EMAIL_WARMUP_START (YYYY-MM-DD) for a new custom domain; empty for none.')
param emailWarmupStart string = ''

@description('EMAIL_WARMUP_HOURLY: hourly caps per day from the start, e.g. 50,100,200,400,800.')
param emailWarmupHourly string = ''

@description('DELIVERY_REPORT_DEADLINE_SECONDS: a recipient still `sent` after this becomes `unconfirmed`.')
param deliveryReportDeadlineSeconds int = 3600

@description('RETENTION_DAYS: ledger records older than this are purged.')
param retentionDays int = 90

@description('Days Log Analytics keeps logs.')
param logRetentionDays int = 30

@description('Storage redundancy: LRS for dev, ZRS for production.')
param storageSku string = 'Standard_LRS'

@description('Spread the Function App across availability zones (Flex Consumption then keeps two always-ready instances per scaling group, billed). The region must support it: az functionapp list-flexconsumption-locations --zone-redundant.')
param zoneRedundant bool = false

@description('Flex Consumption scale-out limit.')
param maximumInstanceCount int = 40

@description('Memory per Flex Consumption instance.')
param instanceMemoryMB int = 2048

@description('Always-ready instances for the HTTP API: 0 scales to zero (cold starts), 1+ keeps that many warm (billed).')
param alwaysReadyHttpInstances int = 0

@description('App Insights accepts only Entra-authenticated telemetry (the Function App\'s identity).')
param appInsightsEntraAuth bool = true

@description('STATUS_EVENT_TYPE_PREFIX: status event types are <prefix>.notification.<status>.')
param statusEventTypePrefix string = 'Notify'

@description('Create the example status event subscription (every event into the status-events storage queue).')
param statusEventsExampleSubscription bool = true

@description('ENTRA_AUDIENCES: the application ID URI (e.g. api://notify-prod) and/or client id of this environment\'s API app registration, comma-separated (docs/security.md).')
param apiAudiences string

@description('ENTRA_TENANT_ID: the tenant whose access tokens the API accepts.')
param entraTenantId string = tenant().tenantId

@description('ENTRA_TOKEN_VERSIONS: 2 (the API app registration requests v2 tokens), or 1,2.')
param entraTokenVersions string = '2'

@description('ENTRA_ROLE_MAP: app-role values of the API app registration mapped to the service roles.')
param entraRoleMap string = 'Notify.Send=sender,Notify.Operate=operator,Notify.EventGrid=eventgrid'

@description('The key of the recipient hashes in telemetry (PII_HASH_KEY): openssl rand -base64 32, kept per environment (docs/operations.md).')
@secure()
@minLength(32)
param piiHashKey string

@description('Object ids of the apps\' identities (service principals) that may put notification requests on the requests queue: each gets Azure Service Bus Data Sender on that queue only.')
param requestSenderPrincipalIds array = []

param tags object = {}

var suffix = take(uniqueString(subscription().id, resourceGroup().id, environmentName), 6)
var baseName = 'notify-${environmentName}-${suffix}'
var allTags = union(tags, {
  service: 'notify'
  environment: environmentName
})
var sendFromCustomDomain = !empty(customEmailDomain) && linkCustomEmailDomain

module monitoring 'modules/monitoring.bicep' = {
  name: 'monitoring'
  params: {
    workspaceName: 'log-${baseName}'
    appInsightsName: 'appi-${baseName}'
    location: location
    tags: allTags
    retentionInDays: logRetentionDays
    entraAuthOnly: appInsightsEntraAuth
  }
}

module storage 'modules/storage.bicep' = {
  name: 'storage'
  params: {
    // 3-24 lowercase letters and digits: 'stnotify' + at most 7 + 6.
    name: 'stnotify${environmentName}${suffix}'
    location: location
    tags: allTags
    skuName: storageSku
    workspaceId: monitoring.outputs.workspaceId
  }
}

module serviceBus 'modules/servicebus.bicep' = {
  name: 'servicebus'
  params: {
    namespaceName: 'sb-${baseName}'
    location: location
    tags: allTags
    workspaceId: monitoring.outputs.workspaceId
  }
}

module communication 'modules/communication.bicep' = {
  name: 'communication'
  params: {
    acsName: 'acs-${baseName}'
    emailServiceName: 'ecs-${baseName}'
    tags: allTags
    dataLocation: dataLocation
    customEmailDomain: customEmailDomain
    linkCustomDomain: linkCustomEmailDomain
    senderUsernames: emailSenderUsernames
    engagementTracking: emailEngagementTracking
    workspaceId: monitoring.outputs.workspaceId
  }
}

module statusEvents 'modules/status-events-topic.bicep' = {
  name: 'status-events-topic'
  params: {
    topicName: 'evgt-status-${baseName}'
    location: location
    tags: allTags
    storageAccountName: storage.outputs.name
    deadLetterContainerName: storage.outputs.deadLetterContainerName
    exampleSubscription: statusEventsExampleSubscription
  }
}

module functionApp 'modules/functionapp.bicep' = {
  name: 'functionapp'
  params: {
    planName: 'plan-${baseName}'
    appName: 'func-${baseName}'
    location: location
    tags: allTags
    storageAccountName: storage.outputs.name
    deploymentContainerName: storage.outputs.deploymentContainerName
    appInsightsName: monitoring.outputs.appInsightsName
    appInsightsEntraAuth: appInsightsEntraAuth
    workspaceId: monitoring.outputs.workspaceId
    serviceBusFullyQualifiedNamespace: serviceBus.outputs.fullyQualifiedNamespace
    notificationsQueueName: serviceBus.outputs.queueName
    requestsQueueName: serviceBus.outputs.requestsQueueName
    deliveryReportsQueueName: serviceBus.outputs.deliveryReportsQueueName
    queueLockSeconds: serviceBus.outputs.lockSeconds
    queueMaxDeliveryCount: serviceBus.outputs.maxDeliveryCount
    tablesEndpoint: empty(tablesEndpoint) ? storage.outputs.tablesEndpoint : tablesEndpoint
    attachmentsContainerUrl: storage.outputs.attachmentsContainerUrl
    acsEndpoint: communication.outputs.endpoint
    acsResourceId: communication.outputs.acsId
    emailSenders: communication.outputs.emailSenders
    smsSenders: smsSenders
    // ACS's documented per-subscription send limits for the domain type in use.
    emailRatePerMinute: emailRatePerMinute >= 0 ? emailRatePerMinute : (sendFromCustomDomain ? 30 : 5)
    emailRatePerHour: emailRatePerHour >= 0 ? emailRatePerHour : (sendFromCustomDomain ? 100 : 10)
    smsRatePerMinute: smsRatePerMinute
    smsRatePerHour: smsRatePerHour
    emailWarmupStart: emailWarmupStart
    emailWarmupHourly: emailWarmupHourly
    deliveryReportDeadlineSeconds: deliveryReportDeadlineSeconds
    retentionDays: retentionDays
    entraTenantId: entraTenantId
    entraAudiences: apiAudiences
    entraTokenVersions: entraTokenVersions
    entraRoleMap: entraRoleMap
    statusEventsTopicEndpoint: statusEvents.outputs.endpoint
    statusEventTypePrefix: statusEventTypePrefix
    statusEventSource: '/notify/${environmentName}'
    maximumInstanceCount: maximumInstanceCount
    instanceMemoryMB: instanceMemoryMB
    alwaysReadyHttpInstances: alwaysReadyHttpInstances
    zoneRedundant: zoneRedundant
    piiHashKey: piiHashKey
  }
}

module functionRoles 'modules/function-roles.bicep' = {
  name: 'function-roles'
  params: {
    principalId: functionApp.outputs.principalId
    storageAccountName: storage.outputs.name
    serviceBusNamespaceName: serviceBus.outputs.namespaceName
    queueName: serviceBus.outputs.queueName
    requestsQueueName: serviceBus.outputs.requestsQueueName
    deliveryReportsQueueName: serviceBus.outputs.deliveryReportsQueueName
    acsName: communication.outputs.acsName
    appInsightsName: monitoring.outputs.appInsightsName
    appInsightsEntraAuth: appInsightsEntraAuth
    statusEventsTopicName: statusEvents.outputs.name
  }
}

module requestSenders 'modules/requests-queue-senders.bicep' = {
  name: 'requests-queue-senders'
  params: {
    principalIds: requestSenderPrincipalIds
    serviceBusNamespaceName: serviceBus.outputs.namespaceName
    requestsQueueName: serviceBus.outputs.requestsQueueName
  }
}

module eventGridTopic 'modules/eventgrid-topic.bicep' = {
  name: 'eventgrid-topic'
  params: {
    topicName: 'evgt-${baseName}'
    tags: allTags
    acsId: communication.outputs.acsId
  }
}

module eventGridSubscription 'modules/eventgrid-subscription.bicep' = {
  name: 'eventgrid-subscription'
  params: {
    topicName: eventGridTopic.outputs.name
    topicPrincipalId: eventGridTopic.outputs.principalId
    serviceBusNamespaceName: serviceBus.outputs.namespaceName
    deliveryReportsQueueName: serviceBus.outputs.deliveryReportsQueueName
    storageAccountName: storage.outputs.name
    deadLetterContainerName: storage.outputs.deadLetterContainerName
  }
}

module alerts 'modules/alerts.bicep' = {
  name: 'alerts'
  params: {
    namePrefix: baseName
    location: location
    tags: allTags
    alertEmail: alertEmail
    appInsightsId: monitoring.outputs.appInsightsId
    workspaceId: monitoring.outputs.workspaceId
    serviceBusNamespaceId: serviceBus.outputs.namespaceId
    queueName: serviceBus.outputs.queueName
    requestsQueueName: serviceBus.outputs.requestsQueueName
    deliveryReportsQueueName: serviceBus.outputs.deliveryReportsQueueName
  }
}

output functionAppName string = functionApp.outputs.name
output functionAppUrl string = 'https://${functionApp.outputs.defaultHostName}'
output storageAccountName string = storage.outputs.name
output tablesEndpoint string = empty(tablesEndpoint) ? storage.outputs.tablesEndpoint : tablesEndpoint
output serviceBusNamespace string = serviceBus.outputs.fullyQualifiedNamespace
output acsEndpoint string = communication.outputs.endpoint
output acsResourceId string = communication.outputs.acsId
output emailSenders string = communication.outputs.emailSenders
output customDomainDnsRecords object = communication.outputs.customDomainDnsRecords
output customDomainVerificationStates object = communication.outputs.customDomainVerificationStates
output eventGridSystemTopic string = eventGridTopic.outputs.name
output deliveryReportSubscription string = eventGridSubscription.outputs.subscriptionName
output alertRules array = alerts.outputs.alertRuleNames
output statusEventsTopic string = statusEvents.outputs.name
output statusEventsTopicEndpoint string = statusEvents.outputs.endpoint
output statusEventsExampleSubscription string = statusEvents.outputs.exampleSubscriptionName
