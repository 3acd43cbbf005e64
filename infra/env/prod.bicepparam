// prod: custom domain, zone-redundant storage, one always-ready instance so the API does not
// cold-start, and logs kept for 90 days.
using '../main.bicep'

param environmentName = 'prod'
param dataLocation = 'Europe'
param alertEmail = 'notify-oncall@example.com'

// Set linkCustomEmailDomain to true once the DNS records are verified (docs/deploy.md). Sender
// usernames other than DoNotReply need ACS to have raised the domain's sending limits first.
param customEmailDomain = 'notify.example.com'
param linkCustomEmailDomain = false
param emailSenderUsernames = [
  {
    username: 'DoNotReply'
    displayName: 'Notifications'
  }
  {
    username: 'alerts'
    displayName: 'Alerts'
  }
]

// Ramp a new domain up over two weeks (README "Quotas and warm-up"); clear once it is warm.
param emailWarmupStart = ''
param emailWarmupHourly = ''

// The application ID URI of prod's API app registration (docs/security.md, "App registration").
param apiAudiences = 'api://notify-prod'

// The toll-free number bought on prod's ACS resource.
param smsSenders = '+18005550102'

param storageSku = 'Standard_ZRS'
param logRetentionDays = 90
param retentionDays = 90
param alwaysReadyHttpInstances = 1
param zoneRedundant = true
param maximumInstanceCount = 40

// Generated once per environment and kept (a new key makes older telemetry unsearchable by
// recipient): NOTIFY_PII_HASH_KEY=$(openssl rand -base64 32), see docs/operations.md.
param piiHashKey = readEnvironmentVariable('NOTIFY_PII_HASH_KEY')
