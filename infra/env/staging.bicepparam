// staging: production's shape (custom domain, zone-redundant storage) at production's
// defaults, so a release is proven on the same configuration before it reaches prod.
using '../main.bicep'

param environmentName = 'staging'
param dataLocation = 'Europe'
param alertEmail = 'notify-staging-alerts@example.com'

// Its own sending subdomain, so staging's mail never affects production's reputation. Set
// linkCustomEmailDomain to true once the DNS records are verified (docs/deploy.md).
param customEmailDomain = 'staging.notify.example.com'
param linkCustomEmailDomain = false
param emailSenderUsernames = [
  {
    username: 'DoNotReply'
    displayName: 'Notifications (staging)'
  }
]

// The application ID URI of staging's API app registration (docs/security.md, "App registration").
param apiAudiences = 'api://notify-staging'

// The toll-free number bought on staging's ACS resource.
param smsSenders = '+18005550101'

param storageSku = 'Standard_ZRS'
param logRetentionDays = 30
param retentionDays = 30
param alwaysReadyHttpInstances = 0

// Generated once per environment and kept (a new key makes older telemetry unsearchable by
// recipient): NOTIFY_PII_HASH_KEY=$(openssl rand -base64 32), see docs/operations.md.
param piiHashKey = readEnvironmentVariable('NOTIFY_PII_HASH_KEY')
