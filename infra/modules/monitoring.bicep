// Log Analytics workspace and a workspace-based Application Insights component.
//
// Every diagnostic setting in this deployment (ACS email and SMS logs, Service Bus, the Function
// App) writes to the one workspace, so the alert queries can join across them; App Insights keeps
// the Functions host's requests and the app's traces in the same workspace.

@description('Log Analytics workspace name.')
param workspaceName string

@description('Application Insights component name.')
param appInsightsName string

param location string
param tags object

@description('Days the workspace keeps logs (30 is free with PerGB2018; longer costs per GB a month).')
@minValue(30)
@maxValue(730)
param retentionInDays int

@description('Accept telemetry only from Entra-authenticated senders (the Function App\'s identity with Monitoring Metrics Publisher): the connection string alone then cannot write to this component.')
param entraAuthOnly bool

resource workspace 'Microsoft.OperationalInsights/workspaces@2023-09-01' = {
  name: workspaceName
  location: location
  tags: tags
  properties: {
    sku: {
      name: 'PerGB2018'
    }
    retentionInDays: retentionInDays
    features: {
      // Access by resource permissions as well as workspace permissions.
      enableLogAccessUsingOnlyResourcePermissions: true
    }
  }
}

resource appInsights 'Microsoft.Insights/components@2020-02-02' = {
  name: appInsightsName
  location: location
  tags: tags
  kind: 'web'
  properties: {
    Application_Type: 'web'
    WorkspaceResourceId: workspace.id
    IngestionMode: 'LogAnalytics'
    DisableLocalAuth: entraAuthOnly
  }
}

output workspaceId string = workspace.id
output appInsightsId string = appInsights.id
output appInsightsName string = appInsights.name
