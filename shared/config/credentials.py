"""How the run authenticates to Graph: the three GRAPH_AUTH modes, built in one place."""

from __future__ import annotations

from urllib.parse import urlsplit

from kiota_abstractions.authentication import AnonymousAuthenticationProvider, AuthenticationProvider

from ..common.errors import SecretError
from ..common.redact import Secret
from .settings import Settings

TOKEN_EXCHANGE_SCOPE = "api://AzureADTokenExchange/.default"  # noqa: S105  # nosec B105 - an audience, not a secret

_AUTHORITIES = {
    "graph.microsoft.com": "login.microsoftonline.com",
    "graph.microsoft.us": "login.microsoftonline.us",
    "dod-graph.microsoft.us": "login.microsoftonline.us",
    "microsoftgraph.chinacloudapi.cn": "login.chinacloudapi.cn",
    # Exchange Online's admin endpoints, per cloud (EXO_BASE_URL)
    "outlook.office365.com": "login.microsoftonline.com",
    "outlook.office365.us": "login.microsoftonline.us",
    "outlook-dod.office365.us": "login.microsoftonline.us",
    "partner.outlook.cn": "login.chinacloudapi.cn",
}


def authority_for(graph_base_url: str) -> str:
    host = (urlsplit(graph_base_url).hostname or "").lower()
    return _AUTHORITIES.get(host, "login.microsoftonline.com")


def graph_token_credential(settings: Settings, client_secret: Secret | None, *, base_url: str | None = None):
    """The azure-identity credential for the app registration, or None for GRAPH_AUTH=none.
    ``base_url`` (default GRAPH_BASE_URL) picks the cloud's sign-in authority."""
    if settings.graph_auth == "none":
        return None
    from azure.identity import ClientAssertionCredential, ClientSecretCredential, ManagedIdentityCredential

    authority = authority_for(base_url or settings.graph_base_url)
    if settings.graph_auth == "client_secret":
        if client_secret is None:
            raise SecretError("no Graph client secret: set GRAPH_CLIENT_SECRET, or KEY_VAULT_URL with GRAPH_CLIENT_SECRET_NAME")
        return ClientSecretCredential(
            settings.graph_tenant_id, settings.graph_client_id, client_secret.reveal(), authority=authority
        )
    # managed_identity: the Function's identity signs in as the app through a federated
    # credential, so no client secret exists to expire or leak.
    mi = ManagedIdentityCredential(client_id=settings.managed_identity_client_id)

    def assertion() -> str:
        return mi.get_token(TOKEN_EXCHANGE_SCOPE).token

    return ClientAssertionCredential(settings.graph_tenant_id, settings.graph_client_id, assertion, authority=authority)


def graph_auth_provider(settings: Settings, client_secret: Secret | None) -> AuthenticationProvider:
    credential = graph_token_credential(settings, client_secret)
    if credential is None:
        return AnonymousAuthenticationProvider()
    from kiota_authentication_azure.azure_identity_authentication_provider import (
        AzureIdentityAuthenticationProvider,
    )

    host = urlsplit(settings.graph_base_url).hostname or "graph.microsoft.com"
    return AzureIdentityAuthenticationProvider(credential, scopes=[settings.graph_scope], allowed_hosts=[host])


def exchange_token_credential(settings: Settings, client_secret: Secret | None):
    """The same app credential as Graph (GRAPH_AUTH), signed in at EXO_BASE_URL's cloud; its
    tokens are asked for the scope ``{EXO_BASE_URL}/.default``. None for GRAPH_AUTH=none."""
    return graph_token_credential(settings, client_secret, base_url=settings.exo.base_url)
