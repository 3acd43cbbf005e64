// Azure Communication Services with an Email Communication Service and its sending domains.
//
// An Azure-managed domain (<guid>.azurecomm.net) is always provisioned and linked: it needs no
// DNS and sends at once, but only from DoNotReply and at ACS's lowest quota (5 a minute, 10 an
// hour). A custom domain is provisioned when customEmailDomain is set; ACS refuses to link a
// domain before its DNS records are verified, so it is linked (and becomes the sending domain)
// only once linkCustomDomain is true. The steps are in docs/deploy.md.

@description('ACS resource name.')
param acsName string

@description('Email Communication Service name.')
param emailServiceName string

param tags object

@description('Where ACS and the Email Communication Service keep data at rest, e.g. "United States", "Europe", "UK". Cannot be changed after creation.')
param dataLocation string

@description('Custom sending domain, e.g. notify.example.com; empty for the Azure-managed domain only.')
param customEmailDomain string

@description('Link the custom domain and send from it. Only after its Domain, SPF and DKIM records are verified.')
param linkCustomDomain bool

@description('Sender usernames on the custom domain, first one the default sender: [{ username, displayName }]. Usernames other than DoNotReply need the domain\'s sending quota raised first (ACS refuses them on default limits).')
param senderUsernames array

@description('Let ACS track opens and clicks on the custom domain (EmailEngagementTrackingReportReceived). It rewrites links and adds a pixel: a privacy decision.')
param engagementTracking bool

@description('Log Analytics workspace that receives the email and SMS logs.')
param workspaceId string

var useCustomDomain = !empty(customEmailDomain)
var sendFromCustomDomain = useCustomDomain && linkCustomDomain

resource emailService 'Microsoft.Communication/emailServices@2023-04-01' = {
  name: emailServiceName
  location: 'global'
  tags: tags
  properties: {
    dataLocation: dataLocation
  }
}

resource azureManagedDomain 'Microsoft.Communication/emailServices/domains@2023-04-01' = {
  parent: emailService
  name: 'AzureManagedDomain'
  location: 'global'
  tags: tags
  properties: {
    domainManagement: 'AzureManaged'
    // Azure-managed domains cannot track engagement.
    userEngagementTracking: 'Disabled'
  }
}

resource customDomain 'Microsoft.Communication/emailServices/domains@2023-04-01' = if (useCustomDomain) {
  parent: emailService
  name: useCustomDomain ? customEmailDomain : 'unused'
  location: 'global'
  tags: tags
  properties: {
    domainManagement: 'CustomerManaged'
    userEngagementTracking: engagementTracking ? 'Enabled' : 'Disabled'
  }
}

// MailFrom addresses on the custom domain, created once it is verified and linked.
resource customSenders 'Microsoft.Communication/emailServices/domains/senderUsernames@2023-04-01' = [
  for sender in senderUsernames: if (sendFromCustomDomain) {
    parent: customDomain
    name: toLower(sender.username)
    properties: {
      username: sender.username
      displayName: sender.displayName
    }
  }
]

resource acs 'Microsoft.Communication/communicationServices@2023-04-01' = {
  name: acsName
  location: 'global'
  tags: tags
  properties: {
    dataLocation: dataLocation
    linkedDomains: sendFromCustomDomain ? [azureManagedDomain.id, customDomain.id] : [azureManagedDomain.id]
  }
}

resource diagnostics 'Microsoft.Insights/diagnosticSettings@2021-05-01-preview' = {
  name: 'to-log-analytics'
  scope: acs
  properties: {
    workspaceId: workspaceId
    logs: [
      {
        // ACSEmailSendMailOperational: each send request.
        category: 'EmailSendMailOperational'
        enabled: true
      }
      {
        // ACSEmailStatusUpdateOperational: each recipient's delivery status (the email
        // failure-rate alert reads this table).
        category: 'EmailStatusUpdateOperational'
        enabled: true
      }
      {
        // ACSEmailUserEngagementOperational: opens and clicks, when tracking is on.
        category: 'EmailUserEngagementOperational'
        enabled: true
      }
      {
        // ACSSMSIncomingOperations: SMS sends, delivery reports and inbound messages.
        category: 'SMSOperational'
        enabled: true
      }
    ]
  }
}

var customSenderAddresses = [for sender in senderUsernames: '${sender.username}@${customEmailDomain}']

output acsId string = acs.id
output acsName string = acs.name
output endpoint string = 'https://${acs.properties.hostName}'
output sendingDomain string = sendFromCustomDomain ? customEmailDomain : azureManagedDomain.properties.mailFromSenderDomain
// EMAIL_SENDERS: comma-separated, the first is the default sender.
output emailSenders string = sendFromCustomDomain ? join(customSenderAddresses, ',') : 'DoNotReply@${azureManagedDomain.properties.mailFromSenderDomain}'
// The records to publish in the custom domain's DNS zone: Domain (TXT), SPF (TXT), DKIM and
// DKIM2 (CNAME), DMARC (TXT, recommended), each { type, name, value, ttl }.
output customDomainDnsRecords object = useCustomDomain ? customDomain.properties.verificationRecords : {}
// Verified, VerificationRequested, NotStarted, ... for each record.
output customDomainVerificationStates object = useCustomDomain ? customDomain.properties.verificationStates : {}
