// The Function App: Linux, Python 3.11, on a Flex Consumption (FC1) plan, with a system-assigned
// managed identity that every connection uses (storage, Service Bus, Table Storage, ACS, App
// Insights). Why Flex Consumption rather than Elastic Premium: docs/deploy.md, "Hosting plan".
//
// App settings: every setting the app reads (the aliases of shared.config.Settings, plus the
// binding settings NOTIFICATIONS_QUEUE, REQUESTS_QUEUE, DELIVERY_REPORTS_QUEUE, RECONCILE_SCHEDULE,
// STATUS_RELAY_SCHEDULE and the
// ServiceBusConnection prefix)
// is set here with its production value; tests/test_infra.py fails when one is missing.
// Deliberately absent: ACS_ACCESS_KEY and TABLES_CONNECTION_STRING (the identity
// authenticates; the app refuses both when NOTIFY_ENVIRONMENT=azure), and the runtime settings
// Flex Consumption rejects (FUNCTIONS_WORKER_RUNTIME and FUNCTIONS_EXTENSION_VERSION: the
// runtime is functionAppConfig.runtime below, and Flex runs only Functions v4;
// WEBSITE_RUN_FROM_PACKAGE and WEBSITE_CONTENT*: the package lives in deployment storage).

param planName string
param appName string
param location string
param tags object

@description('Storage account for AzureWebJobsStorage and the deployment package.')
param storageAccountName string

@description('Blob container the Flex Consumption plan deploys the app package from.')
param deploymentContainerName string

param appInsightsName string

@description('App Insights accepts only Entra-authenticated telemetry (the app\'s identity).')
param appInsightsEntraAuth bool

param workspaceId string

@description('<namespace>.servicebus.windows.net')
param serviceBusFullyQualifiedNamespace string

param notificationsQueueName string

@description('The queue other apps put notification requests on (the intake trigger binds it).')
param requestsQueueName string

@description('The queue Event Grid puts ACS events on (the report trigger binds it).')
param deliveryReportsQueueName string

@description('The queue\'s lock duration, mirrored into QUEUE_LOCK_SECONDS.')
param queueLockSeconds int

@description('The queue\'s maxDeliveryCount, mirrored into QUEUE_MAX_DELIVERY_COUNT.')
param queueMaxDeliveryCount int

@description('https://<account>.table.core.windows.net, or a Cosmos DB for Table endpoint.')
param tablesEndpoint string

@description('https://<account>.blob.core.windows.net/<container> for email attachments.')
param attachmentsContainerUrl string

param acsEndpoint string
param acsResourceId string

@description('EMAIL_SENDERS: comma-separated addresses, the first the default.')
param emailSenders string

@description('SMS_SENDERS: comma-separated E.164 numbers bought on this ACS resource, the first the default.')
param smsSenders string

param emailRatePerMinute int
param emailRatePerHour int
param smsRatePerMinute int
param smsRatePerHour int
param emailWarmupStart string
param emailWarmupHourly string
param deliveryReportDeadlineSeconds int
param retentionDays int

@description('ENTRA_TENANT_ID: the tenant whose access tokens the API accepts.')
param entraTenantId string

@description('ENTRA_AUDIENCES: the API app registration\'s application ID URI and/or client id, comma-separated.')
param entraAudiences string

@description('ENTRA_TOKEN_VERSIONS: 2, or 1,2 when callers still get v1 tokens (docs/security.md).')
param entraTokenVersions string

@description('ENTRA_ROLE_MAP: AppRole=role pairs, role one of sender, operator, eventgrid.')
param entraRoleMap string
@description('STATUS_EVENTS_TOPIC_ENDPOINT: the Event Grid custom topic status events go to.')
param statusEventsTopicEndpoint string

@description('STATUS_EVENT_TYPE_PREFIX: event types are <prefix>.notification.<status>.')
param statusEventTypePrefix string

@description('STATUS_EVENT_SOURCE: the CloudEvents source, naming the service and environment.')
param statusEventSource string

@description('Flex Consumption scale-out limit. ACS quotas, not instances, bound throughput.')
param maximumInstanceCount int

@allowed([
  512
  2048
  4096
])
param instanceMemoryMB int

@description('Spread instances across availability zones. Flex Consumption then keeps at least two always-ready instances per scaling group (HTTP, and each non-HTTP function), billed: production only.')
param zoneRedundant bool = true

@description('Always-ready instances for the HTTP API (0 = scale to zero and accept cold starts).')
@minValue(0)
param alwaysReadyHttpInstances int

@description('PII_HASH_KEY: the key of the recipient hashes in telemetry, random and one per environment.')
@secure()
@minLength(32)
param piiHashKey string

resource storage 'Microsoft.Storage/storageAccounts@2023-05-01' existing = {
  name: storageAccountName
}

resource appInsights 'Microsoft.Insights/components@2020-02-02' existing = {
  name: appInsightsName
}

resource plan 'Microsoft.Web/serverfarms@2024-04-01' = {
  name: planName
  location: location
  tags: tags
  kind: 'functionapp'
  sku: {
    name: 'FC1'
    tier: 'FlexConsumption'
  }
  properties: {
    // checkov:skip=CKV_AZURE_225:Zone redundancy is a per-environment parameter (it costs two always-ready instances per scaling group): prod.bicepparam sets zoneRedundant = true, dev and staging do not.
    // Linux.
    reserved: true
    zoneRedundant: zoneRedundant
  }
}

resource site 'Microsoft.Web/sites@2024-04-01' = {
  name: appName
  location: location
  tags: tags
  kind: 'functionapp,linux'
  identity: {
    type: 'SystemAssigned'
  }
  properties: {
    // checkov:skip=CKV_AZURE_212:Flex Consumption has no fixed instance count: it scales per function from zero, and zone redundancy (zoneRedundant) keeps two always-ready instances per group.
    // checkov:skip=CKV_AZURE_213:Flex Consumption does not support the platform health check; the smoke test probes GET /api/health, and the function failure-rate alert catches a failing app.
    // checkov:skip=CKV_AZURE_16:The API validates Entra ID access tokens on every route itself (roles, audience, issuer; docs/security.md); App Service Authentication in front would be a second scheme.
    // checkov:skip=CKV_AZURE_17:Callers are internal apps with bearer tokens; client certificates are not part of the contract.
    // checkov:skip=CKV_AZURE_222:No VNet in this deployment: internal apps call the API over HTTPS and authenticate. Put it behind a private endpoint or Front Door with VNet integration to close it.
    serverFarmId: plan.id
    httpsOnly: true
    clientCertEnabled: false
    publicNetworkAccess: 'Enabled'
    siteConfig: {
      minTlsVersion: '1.2'
      scmMinTlsVersion: '1.2'
      ftpsState: 'Disabled'
      http20Enabled: true
      remoteDebuggingEnabled: false
      appSettings: [
        // --- Functions host: identity-based connections, no keys.
        {
          // AzureWebJobsStorage with the system-assigned identity: the host's locks, timers
          // and keys live in this account (see function-roles.bicep for the roles it needs).
          name: 'AzureWebJobsStorage__accountName'
          value: storage.name
        }
        {
          // The Service Bus trigger's connection="ServiceBusConnection" resolves this prefix
          // with the identity; the app's publisher reads the same setting.
          name: 'ServiceBusConnection__fullyQualifiedNamespace'
          value: serviceBusFullyQualifiedNamespace
        }
        {
          name: 'APPLICATIONINSIGHTS_CONNECTION_STRING'
          value: appInsights.properties.ConnectionString
        }
        {
          // With local auth disabled on App Insights, the host sends telemetry with the
          // system-assigned identity (Monitoring Metrics Publisher on the component).
          name: 'APPLICATIONINSIGHTS_AUTHENTICATION_STRING'
          value: appInsightsEntraAuth ? 'Authorization=AAD' : ''
        }
        {
          // glibc's default of up to 8 malloc arenas per core lets the dispatcher's send threads
          // hold on to freed pages: +14-16 % resident memory over 50,000 sends against under 1 %
          // with two (bench/memory_flat.py). Read at process start, so it has to be a setting.
          name: 'MALLOC_ARENA_MAX'
          value: '2'
        }
        // --- Binding settings (function_app.py).
        {
          name: 'NOTIFICATIONS_QUEUE'
          value: notificationsQueueName
        }
        {
          name: 'REQUESTS_QUEUE'
          value: requestsQueueName
        }
        {
          name: 'DELIVERY_REPORTS_QUEUE'
          value: deliveryReportsQueueName
        }
        {
          // Six-field NCRONTAB: every five minutes.
          name: 'RECONCILE_SCHEDULE'
          value: '0 */5 * * * *'
        }
        {
          // Every five seconds: how long a status event waits in the outbox at most, unless
          // the topic fails (then the relay backs off).
          name: 'STATUS_RELAY_SCHEDULE'
          value: '*/5 * * * * *'
        }
        // --- The app (shared/config.py).
        {
          // Refuses dev keys, an ACS key, a Tables connection string and the local backends.
          name: 'NOTIFY_ENVIRONMENT'
          value: 'azure'
        }
        {
          // No static keys in Azure: callers present Entra ID access tokens (docs/security.md).
          name: 'NOTIFY_DEV_KEYS'
          value: ''
        }
        {
          name: 'ENTRA_TENANT_ID'
          value: entraTenantId
        }
        {
          name: 'ENTRA_AUDIENCES'
          value: entraAudiences
        }
        {
          name: 'ENTRA_TOKEN_VERSIONS'
          value: entraTokenVersions
        }
        {
          name: 'ENTRA_ROLE_MAP'
          value: entraRoleMap
        }
        {
          // Empty: the tenant's JWKS at login.microsoftonline.com.
          name: 'ENTRA_JWKS_URL'
          value: ''
        }
        {
          name: 'ENTRA_JWKS_CACHE_SECONDS'
          value: '3600'
        }
        {
          name: 'ENTRA_JWKS_REFRESH_COOLDOWN_SECONDS'
          value: '30'
        }
        {
          // Delivery reports reach the report trigger through the delivery-reports queue, not the
          // /api/events webhook, so no secret is needed. A subscription to the webhook authenticates with an Entra token
          // (deliveryWithResourceIdentity) or with a secret set here as a Key Vault reference.
          name: 'EVENTGRID_WEBHOOK_SECRET'
          value: ''
        }
        {
          // Unused by the Azure backends; /tmp is the instance's only writable disk.
          name: 'NOTIFY_DATA_DIR'
          value: '/tmp/notify'
        }
        {
          name: 'LEDGER_BACKEND'
          value: 'table'
        }
        {
          name: 'QUEUE_BACKEND'
          value: 'servicebus'
        }
        {
          name: 'TABLES_ENDPOINT'
          value: tablesEndpoint
        }
        {
          // Table requests in flight per adapter when a batch of delivery reports touches many
          // notifications; raise it when the account's latency, not the CPU, is the limit.
          name: 'TABLE_CONCURRENCY'
          value: '8'
        }
        {
          // ACS_ENDPOINT without ACS_ACCESS_KEY: the managed identity authenticates.
          name: 'ACS_ENDPOINT'
          value: acsEndpoint
        }
        {
          // Delivery reports whose topic is not this resource are rejected.
          name: 'ACS_RESOURCE_ID'
          value: acsResourceId
        }
        {
          name: 'EMAIL_SENDERS'
          value: emailSenders
        }
        {
          name: 'SMS_SENDERS'
          value: smsSenders
        }
        {
          name: 'MAX_SEND_ATTEMPTS'
          value: '8'
        }
        {
          name: 'RETRY_BASE_SECONDS'
          value: '2'
        }
        {
          name: 'RETRY_MAX_SECONDS'
          value: '900'
        }
        {
          // Bounds a dispatch attempt; the queue's lock duration is sized from it.
          name: 'ACS_TIMEOUT_SECONDS'
          value: '30'
        }
        {
          name: 'DELIVERY_REPORT_DEADLINE_SECONDS'
          value: string(deliveryReportDeadlineSeconds)
        }
        {
          // ACS's 10 MB email request limit: a request ACS would take, attachments included.
          name: 'MAX_REQUEST_BYTES'
          value: '10485760'
        }
        // --- Input limits (docs/security.md); the app refuses values above ACS's own limits.
        {
          name: 'EMAIL_MAX_RECIPIENTS'
          value: '50'
        }
        {
          name: 'SMS_MAX_RECIPIENTS'
          value: '100'
        }
        {
          name: 'SUBJECT_MAX_CHARS'
          value: '998'
        }
        {
          name: 'EMAIL_TEXT_MAX_BYTES'
          value: '262144'
        }
        {
          name: 'EMAIL_HTML_MAX_BYTES'
          value: '1048576'
        }
        {
          name: 'SMS_MAX_CHARS'
          value: '2048'
        }
        {
          name: 'DISPLAY_NAME_MAX_CHARS'
          value: '256'
        }
        {
          name: 'IDEMPOTENCY_KEY_MAX_CHARS'
          value: '200'
        }
        {
          name: 'METADATA_MAX_BYTES'
          value: '4096'
        }
        {
          // A subset of ACS's allowed types; no macro-enabled Office files, no SVG.
          name: 'ATTACHMENT_CONTENT_TYPES'
          value: 'application/pdf,text/plain,text/csv,text/calendar,image/png,image/jpeg,image/gif,application/vnd.openxmlformats-officedocument.wordprocessingml.document,application/vnd.openxmlformats-officedocument.spreadsheetml.sheet,application/vnd.openxmlformats-officedocument.presentationml.presentation,application/zip'
        }
        {
          name: 'ATTACHMENTS_MAX_COUNT'
          value: '10'
        }
        {
          // 7 MiB of content is 9.3 MiB base64-encoded: inside ACS's 10 MB with the body.
          name: 'ATTACHMENTS_MAX_TOTAL_BYTES'
          value: '7340032'
        }
        {
          // Blob Data Owner on the account (function-roles.bicep) covers this container.
          name: 'ATTACHMENTS_CONTAINER_URL'
          value: attachmentsContainerUrl
        }
        {
          // Published with the identity (EventGrid Data Sender on the topic, function-roles.bicep).
          name: 'STATUS_EVENTS_TOPIC_ENDPOINT'
          value: statusEventsTopicEndpoint
        }
        {
          // Local stack only; the app refuses subscriber URLs in Azure.
          name: 'STATUS_EVENT_SUBSCRIBERS'
          value: ''
        }
        {
          name: 'STATUS_EVENT_TYPE_PREFIX'
          value: statusEventTypePrefix
        }
        {
          name: 'STATUS_EVENT_SOURCE'
          value: statusEventSource
        }
        {
          // Local worker only (the timer runs STATUS_RELAY_SCHEDULE in Azure); kept valid.
          name: 'STATUS_RELAY_INTERVAL_SECONDS'
          value: '1'
        }
        {
          // A topic that fails is tried again after 1, 2, 4, ... s (with jitter), at most every 5 min.
          name: 'STATUS_RELAY_RETRY_BASE_SECONDS'
          value: '1'
        }
        {
          name: 'STATUS_RELAY_RETRY_MAX_SECONDS'
          value: '300'
        }
        {
          name: 'EMAIL_RATE_PER_MINUTE'
          value: string(emailRatePerMinute)
        }
        {
          name: 'EMAIL_RATE_PER_HOUR'
          value: string(emailRatePerHour)
        }
        {
          name: 'SMS_RATE_PER_MINUTE'
          value: string(smsRatePerMinute)
        }
        {
          name: 'SMS_RATE_PER_HOUR'
          value: string(smsRatePerHour)
        }
        {
          name: 'EMAIL_WARMUP_START'
          value: emailWarmupStart
        }
        {
          name: 'EMAIL_WARMUP_HOURLY'
          value: emailWarmupHourly
        }
        {
          name: 'FAILURE_RATE_WARNING'
          value: '0.01'
        }
        {
          name: 'FAILURE_RATE_CRITICAL'
          value: '0.02'
        }
        {
          name: 'FAILURE_RATE_WINDOW_MINUTES'
          value: '60'
        }
        {
          name: 'FAILURE_RATE_MIN_SENT'
          value: '50'
        }
        {
          name: 'RETENTION_DAYS'
          value: string(retentionDays)
        }
        {
          // Approved templates ship in the package; relative to the app's root.
          name: 'TEMPLATES_DIR'
          value: 'templates'
        }
        {
          // Carriers bill per segment: longer SMS are refused at intake.
          name: 'SMS_MAX_SEGMENTS'
          value: '6'
        }
        {
          // Local worker only (the host's maxConcurrentCalls governs in Azure); kept valid.
          name: 'DISPATCH_CONCURRENCY'
          value: '8'
        }
        {
          // Mirrors the Service Bus queue, so the app's view of the queue matches the broker's.
          name: 'QUEUE_LOCK_SECONDS'
          value: string(queueLockSeconds)
        }
        {
          name: 'QUEUE_MAX_DELIVERY_COUNT'
          value: string(queueMaxDeliveryCount)
        }
        {
          // Local worker only (the timer trigger runs RECONCILE_SCHEDULE in Azure); kept valid.
          name: 'RECONCILE_INTERVAL_SECONDS'
          value: '30'
        }
        // --- Telemetry: Azure Monitor through APPLICATIONINSIGHTS_CONNECTION_STRING above.
        {
          // Only the local stack prints spans; here they go to App Insights.
          name: 'TELEMETRY_EXPORTER'
          value: 'none'
        }
        {
          name: 'LOG_FORMAT'
          value: 'json'
        }
        {
          // Not a credential (it opens nothing), but whoever holds it can test guessed addresses
          // against the hashes in telemetry: hence @secure, and one per environment.
          name: 'PII_HASH_KEY'
          value: piiHashKey
        }
      ]
    }
    functionAppConfig: {
      deployment: {
        storage: {
          type: 'blobContainer'
          value: '${storage.properties.primaryEndpoints.blob}${deploymentContainerName}'
          authentication: {
            type: 'SystemAssignedIdentity'
          }
        }
      }
      scaleAndConcurrency: {
        maximumInstanceCount: maximumInstanceCount
        instanceMemoryMB: instanceMemoryMB
        alwaysReady: alwaysReadyHttpInstances > 0 ? [
          {
            name: 'http'
            instanceCount: alwaysReadyHttpInstances
          }
        ] : []
      }
      runtime: {
        name: 'python'
        version: '3.11'
      }
    }
  }
}

// Publishing with a user name and password is off; deployments authenticate with Entra ID
// (Azure CLI and Core Tools both do).
resource ftpPublishing 'Microsoft.Web/sites/basicPublishingCredentialsPolicies@2024-04-01' = {
  parent: site
  name: 'ftp'
  properties: {
    allow: false
  }
}

resource scmPublishing 'Microsoft.Web/sites/basicPublishingCredentialsPolicies@2024-04-01' = {
  parent: site
  name: 'scm'
  properties: {
    allow: false
  }
}

resource diagnostics 'Microsoft.Insights/diagnosticSettings@2021-05-01-preview' = {
  name: 'to-log-analytics'
  scope: site
  properties: {
    workspaceId: workspaceId
    logs: [
      {
        categoryGroup: 'allLogs'
        enabled: true
      }
    ]
    metrics: [
      {
        category: 'AllMetrics'
        enabled: true
      }
    ]
  }
}

output id string = site.id
output name string = site.name
output principalId string = site.identity.principalId
output defaultHostName string = site.properties.defaultHostName
