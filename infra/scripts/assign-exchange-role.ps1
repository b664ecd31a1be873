<#
.SYNOPSIS
  Assigns the Entra directory role that Exchange Online requires for app-only access to the
  directory sync app's service principal (the PowerShell twin of assign-exchange-role.sh).

.DESCRIPTION
  The Microsoft Graph Bicep extension grants Exchange.ManageAsApp but cannot assign
  directory roles; this azd postprovision hook posts to
  /roleManagement/directory/roleAssignments. Idempotent; does nothing when EXO_MODE is off.
  Needs the Azure CLI signed in as a Privileged Role Administrator. The role takes a while
  to reach Exchange Online: a sync run right after may get 403.
#>
[CmdletBinding()]
param(
    [string] $ExoMode = $(if ($env:EXO_MODE) { $env:EXO_MODE } else { 'off' }),
    [string] $PrincipalId = $env:GRAPH_SERVICE_PRINCIPAL_ID,
    [string] $RoleId = $env:EXO_DIRECTORY_ROLE_ID,
    [string] $Graph = $(if ($env:GRAPH_ENDPOINT) { $env:GRAPH_ENDPOINT } else { 'https://graph.microsoft.com' })
)
$ErrorActionPreference = 'Stop'
if ($ExoMode -eq 'off') { Write-Host 'assign-exchange-role: EXO_MODE is off; no directory role needed'; exit 0 }
if ($ExoMode -notin @('augment', 'only')) { Write-Error "EXO_MODE must be off, augment or only, not '$ExoMode'"; exit 2 }
$guid = '^[0-9a-fA-F]{8}-[0-9a-fA-F]{4}-[0-9a-fA-F]{4}-[0-9a-fA-F]{4}-[0-9a-fA-F]{12}$'
if ($PrincipalId -notmatch $guid) { Write-Error 'GRAPH_SERVICE_PRINCIPAL_ID must be the app''s service principal object id'; exit 2 }
if ($RoleId -notmatch $guid) { Write-Error 'EXO_DIRECTORY_ROLE_ID must be a directory role template id'; exit 2 }
$url = "$Graph/v1.0/roleManagement/directory/roleAssignments"
$existing = az rest --method GET --url $url --url-parameters "`$filter=principalId eq '$PrincipalId' and roleDefinitionId eq '$RoleId'" --query "length(value[?directoryScopeId=='/'])" --output tsv
if ($LASTEXITCODE -ne 0) { exit 1 }
if ($existing -and $existing -ne '0') { Write-Host "assign-exchange-role: the service principal already holds directory role $RoleId"; exit 0 }
$body = @{ principalId = $PrincipalId; roleDefinitionId = $RoleId; directoryScopeId = '/' } | ConvertTo-Json -Compress
$file = New-TemporaryFile
try {
    Set-Content -Path $file -Value $body -NoNewline
    az rest --method POST --url $url --headers 'Content-Type=application/json' --body "@$file" --output none
    if ($LASTEXITCODE -ne 0) { Write-Error "assigning directory role $RoleId failed; the signed-in account must be a Privileged Role Administrator"; exit 1 }
} finally { Remove-Item $file -Force }
Write-Host "assign-exchange-role: assigned directory role $RoleId to $PrincipalId; Exchange Online may answer 403 until it propagates"
