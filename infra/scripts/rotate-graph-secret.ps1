<#
.SYNOPSIS
  Adds a client secret with a bounded lifetime to the directory sync's app registration
  and writes it straight into Key Vault, without ever printing it.

.DESCRIPTION
  The PowerShell twin of rotate-graph-secret.sh, used by the azd postprovision hook on
  Windows. The secret goes from `az ad app credential reset` into a variable, then into
  a temporary file that only the current user can read, which `az keyvault secret set
  --file` reads; the file is overwritten and deleted straight after. It never appears
  on the console or in a process argument.

  Rerun it to rotate: each run adds a new secret and stores it as the vault secret's new
  version, with the same expiry date. -Prune then removes this script's older secrets
  from the app. With GRAPH_AUTH=managed_identity no secret is created.

  Needs the Azure CLI, signed in as a principal that may add credentials to the app
  (Application Administrator, Cloud Application Administrator or an owner of the app)
  and that holds Key Vault Secrets Officer on the vault (main.bicep grants it to the
  deployer).

.EXAMPLE
  ./infra/scripts/rotate-graph-secret.ps1 -Days 90 -Prune
#>
[CmdletBinding()]
param(
    [string] $AppId = $env:GRAPH_CLIENT_ID,
    [string] $Vault = $env:KEY_VAULT_NAME,
    [string] $SecretName = $(if ($env:GRAPH_CLIENT_SECRET_NAME) { $env:GRAPH_CLIENT_SECRET_NAME } else { 'graph-client-secret' }),
    [ValidateRange(1, 730)]
    [int] $Days = $(if ($env:GRAPH_SECRET_DAYS) { [int] $env:GRAPH_SECRET_DAYS } else { 180 }),
    [ValidateSet('client_secret', 'managed_identity')]
    [string] $GraphAuth = $(if ($env:GRAPH_AUTH) { $env:GRAPH_AUTH } else { 'client_secret' }),
    [switch] $IfNeeded,
    [switch] $Prune
)

Set-PSDebug -Off
Set-StrictMode -Version Latest
$ErrorActionPreference = 'Stop'

$displayName = 'directory-sync (rotate-graph-secret)'
$renewWithinDays = 30

if ($GraphAuth -eq 'managed_identity') {
    Write-Host 'rotate-graph-secret: GRAPH_AUTH=managed_identity: the Function uses its managed identity as a federated credential; no client secret is created.'
    exit 0
}
if (-not $AppId) { Write-Error 'rotate-graph-secret: no app id: pass -AppId or set GRAPH_CLIENT_ID (a deployment output).'; exit 2 }
if (-not $Vault) { Write-Error 'rotate-graph-secret: no vault: pass -Vault or set KEY_VAULT_NAME (a deployment output).'; exit 2 }
if (-not (Get-Command az -ErrorAction SilentlyContinue)) { Write-Error 'rotate-graph-secret: the Azure CLI (az) is not installed.'; exit 2 }

# The expiry of the vault's current secret, from the secret list (which never returns values).
# (No '|' or '&' in the query: az is a .cmd file on Windows, and cmd.exe would split there.)
$currentExpiry = az keyvault secret list --vault-name $Vault --query "[?name=='$SecretName'].attributes.expires" -o tsv
if ($LASTEXITCODE -ne 0) { exit $LASTEXITCODE }
if ($IfNeeded -and $currentExpiry) {
    $expires = [DateTimeOffset]::Parse(@($currentExpiry)[0])
    if ($expires -gt [DateTimeOffset]::UtcNow.AddDays($renewWithinDays)) {
        Write-Host "rotate-graph-secret: $Vault/$SecretName is valid until $currentExpiry; nothing to do (rerun without -IfNeeded to rotate now)."
        exit 0
    }
}

$endDate = [DateTime]::UtcNow.AddDays($Days).ToString('yyyy-MM-ddTHH:mm:ssZ')

$newSecret = az ad app credential reset --id $AppId --append --display-name $displayName --end-date $endDate --query password -o tsv
if ($LASTEXITCODE -ne 0 -or -not $newSecret) {
    Write-Error "rotate-graph-secret: Entra ID returned no secret for app $AppId; the vault is unchanged."
    exit 1
}

$secretFile = [System.IO.Path]::Combine([System.IO.Path]::GetTempPath(), [System.IO.Path]::GetRandomFileName())
try {
    # Create the file empty, restrict it to the current user, then write the value.
    [System.IO.File]::WriteAllText($secretFile, '')
    if ($IsLinux -or $IsMacOS) {
        & chmod 600 $secretFile
    }
    else {
        $acl = Get-Acl $secretFile
        $acl.SetAccessRuleProtection($true, $false)
        $rule = New-Object System.Security.AccessControl.FileSystemAccessRule(
            [System.Security.Principal.WindowsIdentity]::GetCurrent().Name, 'FullControl', 'Allow')
        $acl.SetAccessRule($rule)
        Set-Acl $secretFile $acl
    }
    [System.IO.File]::WriteAllText($secretFile, $newSecret)
    az keyvault secret set --vault-name $Vault --name $SecretName --file $secretFile --encoding utf-8 `
        --expires $endDate --content-type "client secret of app $AppId" -o none
    $stored = ($LASTEXITCODE -eq 0)
}
finally {
    $newSecret = $null
    if (Test-Path $secretFile) {
        [System.IO.File]::WriteAllText($secretFile, ('x' * 64))
        Remove-Item $secretFile -Force
    }
}

if (-not $stored) {
    Write-Error ("rotate-graph-secret: the new secret was added to app $AppId but could not be stored in $Vault/$SecretName. " +
        "Check that you hold Key Vault Secrets Officer on $Vault, then rerun; remove the unused secret " +
        "(display name '$displayName', expiring $endDate) with 'az ad app credential delete'.")
    exit 1
}
Write-Host "rotate-graph-secret: added a client secret to app $AppId, valid until $endDate, and stored it as $Vault/$SecretName."

if ($Prune) {
    $ours = @(az ad app credential list --id $AppId -o json | ConvertFrom-Json |
        Where-Object { $_.displayName -eq $displayName } | Sort-Object { [DateTimeOffset] $_.endDateTime })
    $older = if ($ours.Count -gt 1) { $ours[0..($ours.Count - 2)] } else { @() }
    foreach ($keyId in @($older | ForEach-Object { $_.keyId })) {
        az ad app credential delete --id $AppId --key-id $keyId -o none
        Write-Host "rotate-graph-secret: removed the older secret $keyId from app $AppId."
    }
}
