// dev: the cheapest complete copy of production. Azure-managed email domain (no DNS to set up,
// ACS's lowest quota), locally redundant storage, scale to zero.
using '../main.bicep'

param environmentName = 'dev'
param dataLocation = 'Europe'
param alertEmail = 'notify-dev-alerts@example.com'

// The application ID URI of dev's API app registration (docs/security.md, "App registration").
param apiAudiences = 'api://notify-dev'

// The toll-free number bought on dev's ACS resource (docs/deploy.md, "Prerequisites").
param smsSenders = '+18005550100'

param storageSku = 'Standard_LRS'
param logRetentionDays = 30
param retentionDays = 30
param alwaysReadyHttpInstances = 0

// Generated once per environment and kept (a new key makes older telemetry unsearchable by
// recipient): NOTIFY_PII_HASH_KEY=$(openssl rand -base64 32), see docs/operations.md.
param piiHashKey = readEnvironmentVariable('NOTIFY_PII_HASH_KEY')
