// The environment's storage account: the ledger's tables, email attachments, the Functions
// host's own storage (AzureWebJobsStorage and the Flex Consumption deployment package) and the
// blob container that Event Grid dead-letters undeliverable delivery reports into.
//
// No account key is ever used: every client (the Functions host, the app's TableServiceClient,
// Event Grid's dead-lettering) authenticates with a managed identity and an RBAC data role, so
// shared-key access is switched off. That works because the Function App runs on Flex
// Consumption, whose deployment storage and AzureWebJobsStorage both take an identity. The
// Consumption (Y1) and Elastic Premium plans keep their content on an Azure Files share that
// is mounted with an account key (WEBSITE_CONTENTAZUREFILECONNECTIONSTRING); on those plans
// allowSharedKeyAccess would have to stay true.

@description('Storage account name: 3-24 lowercase letters and digits, globally unique.')
@minLength(3)
@maxLength(24)
param name string

param location string
param tags object

@description('Standard_LRS for dev; Standard_ZRS where the region has zones, so a zone outage does not stop the ledger.')
@allowed([
  'Standard_LRS'
  'Standard_ZRS'
  'Standard_GRS'
  'Standard_GZRS'
])
param skuName string = 'Standard_ZRS'

@description('Ledger tables to create up front. The Table adapters also create their tables on first use (Storage Table Data Contributor allows it), so an empty list works.')
param ledgerTables array = []

@description('Days Event Grid dead-letter blobs are kept for an operator to replay them.')
@minValue(1)
param deadLetterRetentionDays int = 30

@description('Log Analytics workspace that receives the storage diagnostic logs.')
param workspaceId string

var deploymentContainerName = 'app-package'
var deadLetterContainerName = 'eventgrid-deadletters'
var attachmentsContainerName = 'attachments'

resource storage 'Microsoft.Storage/storageAccounts@2023-05-01' = {
  name: name
  location: location
  tags: tags
  kind: 'StorageV2'
  sku: {
    // checkov:skip=CKV_AZURE_206:Redundancy is a per-environment parameter (ZRS in staging and prod, LRS in dev). Geo-replication alone would not keep the service up in a regional outage (the Function App and Service Bus are regional); choose Standard_GZRS with storageSku where a geo copy of the ledger is required.
    name: skuName
  }
  properties: {
    accessTier: 'Hot'
    minimumTlsVersion: 'TLS1_2'
    supportsHttpsTrafficOnly: true
    allowBlobPublicAccess: false
    // Identity only (see the note at the top): no client of this account holds a key.
    allowSharedKeyAccess: false
    defaultToOAuthAuthentication: true
    allowCrossTenantReplication: false
    isLocalUserEnabled: false
    isSftpEnabled: false
    // checkov:skip=CKV_AZURE_59:No VNet in this deployment, so the public endpoint stays on; Entra ID and RBAC gate it (shared keys are disabled). Private endpoints would close it.
    publicNetworkAccess: 'Enabled'
    networkAcls: {
      // No virtual network in this deployment, so the Function App reaches storage over the
      // public endpoint; Entra authentication and RBAC are the gate. AzureServices lets Event
      // Grid's dead-lettering through even if the default action is tightened to Deny later.
      // checkov:skip=CKV_AZURE_35:No VNet in this deployment: the Flex Consumption app reaches storage over its public endpoint, gated by Entra ID and RBAC (shared keys are disabled). Add VNet integration and private endpoints to deny by default.
      defaultAction: 'Allow'
      bypass: 'AzureServices'
    }
    encryption: {
      keySource: 'Microsoft.Storage'
      services: {
        blob: {
          enabled: true
        }
        file: {
          enabled: true
        }
        table: {
          enabled: true
          keyType: 'Account'
        }
        queue: {
          enabled: true
          keyType: 'Account'
        }
      }
    }
  }
}

resource blobService 'Microsoft.Storage/storageAccounts/blobServices@2023-05-01' = {
  parent: storage
  name: 'default'
  properties: {
    deleteRetentionPolicy: {
      enabled: true
      days: 7
    }
    containerDeleteRetentionPolicy: {
      enabled: true
      days: 7
    }
  }
}

// Flex Consumption reads the app's zip package from here, with the app's identity.
resource deploymentContainer 'Microsoft.Storage/storageAccounts/blobServices/containers@2023-05-01' = {
  parent: blobService
  name: deploymentContainerName
  properties: {
    publicAccess: 'None'
  }
}

// Event Grid writes delivery reports it could not deliver (after its retries) here, with the
// system topic's identity; an operator replays them through POST /api/events.
resource deadLetterContainer 'Microsoft.Storage/storageAccounts/blobServices/containers@2023-05-01' = {
  parent: blobService
  name: deadLetterContainerName
  properties: {
    publicAccess: 'None'
  }
}

// Email attachments accepted at intake, read again by the dispatcher (ATTACHMENTS_CONTAINER_URL).
resource attachmentsContainer 'Microsoft.Storage/storageAccounts/blobServices/containers@2023-05-01' = {
  parent: blobService
  name: attachmentsContainerName
  properties: {
    publicAccess: 'None'
  }
}

resource tableService 'Microsoft.Storage/storageAccounts/tableServices@2023-05-01' = {
  parent: storage
  name: 'default'
}

resource tables 'Microsoft.Storage/storageAccounts/tableServices/tables@2023-05-01' = [
  for table in ledgerTables: {
    parent: tableService
    name: table
  }
]

// Dead-lettered events are evidence for a replay, not an archive.
resource lifecycle 'Microsoft.Storage/storageAccounts/managementPolicies@2023-05-01' = {
  parent: storage
  name: 'default'
  properties: {
    policy: {
      rules: [
        {
          name: 'expire-eventgrid-deadletters'
          enabled: true
          type: 'Lifecycle'
          definition: {
            filters: {
              blobTypes: [
                'blockBlob'
              ]
              prefixMatch: [
                '${deadLetterContainerName}/'
              ]
            }
            actions: {
              baseBlob: {
                delete: {
                  daysAfterModificationGreaterThan: deadLetterRetentionDays
                }
              }
            }
          }
        }
      ]
    }
  }
}

// Storage reads, writes and deletes of the ledger tables and the host's blobs and queues.
resource tableDiagnostics 'Microsoft.Insights/diagnosticSettings@2021-05-01-preview' = {
  name: 'to-log-analytics'
  scope: tableService
  properties: {
    workspaceId: workspaceId
    logs: [
      {
        categoryGroup: 'allLogs'
        enabled: true
      }
    ]
  }
}

resource blobDiagnostics 'Microsoft.Insights/diagnosticSettings@2021-05-01-preview' = {
  name: 'to-log-analytics'
  scope: blobService
  properties: {
    workspaceId: workspaceId
    logs: [
      {
        categoryGroup: 'allLogs'
        enabled: true
      }
    ]
  }
}

output name string = storage.name
output id string = storage.id
output blobEndpoint string = storage.properties.primaryEndpoints.blob
// https://<account>.table.core.windows.net: what TABLES_ENDPOINT takes (no trailing slash).
output tablesEndpoint string = 'https://${storage.name}.table.${environment().suffixes.storage}'
output deploymentContainerName string = deploymentContainer.name
output deadLetterContainerName string = deadLetterContainer.name
// https://<account>.blob.core.windows.net/attachments: what ATTACHMENTS_CONTAINER_URL takes.
output attachmentsContainerUrl string = '${storage.properties.primaryEndpoints.blob}${attachmentsContainer.name}'
