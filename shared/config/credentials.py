"""How the run authenticates to Graph: the three GRAPH_AUTH modes, built in one place."""

from __future__ import annotations

import asyncio
import time
from collections.abc import Awaitable, Callable
from typing import Any
from urllib.parse import urlsplit

from ..common.errors import SecretError
from ..common.redact import Secret, register_short_lived
from .settings import Settings

# A token getter: scope → (access token, expiry as POSIX seconds). Graph and Exchange Online
# sign in through one (None: GRAPH_AUTH=none, no Authorization header).
TokenGetter = Callable[[str], Awaitable[tuple[str, float]]]

TOKEN_EXCHANGE_SCOPE = "api://AzureADTokenExchange/.default"  # noqa: S105  # nosec B105 - an audience, not a secret
# The audience of a managed identity's token that a federated identity credential accepts, per
# cloud (by its sign-in authority): Microsoft Entra, "Configure an application to trust a managed
# identity" (public cloud, Fairfax, Mooncake). The app's federated credential must name the same.
_TOKEN_EXCHANGE_SCOPES = {
    "login.microsoftonline.com": TOKEN_EXCHANGE_SCOPE,
    "login.microsoftonline.us": "api://AzureADTokenExchangeUSGov/.default",
    "login.chinacloudapi.cn": "api://AzureADTokenExchangeChina/.default",
}

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


def token_exchange_scope(authority: str) -> str:
    """The scope a managed identity asks for the client assertion of a federated identity
    credential in the cloud of ``authority`` (``authority_for``)."""
    return _TOKEN_EXCHANGE_SCOPES.get(authority, TOKEN_EXCHANGE_SCOPE)


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
    exchange = token_exchange_scope(authority)  # its cloud's audience, which the federated credential names

    def assertion() -> str:
        return mi.get_token(exchange).token

    return ClientAssertionCredential(settings.graph_tenant_id, settings.graph_client_id, assertion, authority=authority)


def token_getter_for(credential: Any) -> TokenGetter | None:
    """Wrap an azure-identity (sync) credential as a ``TokenGetter``, its ``get_token`` run in
    a worker thread (a sign-in is a blocking HTTP call); None stays None."""
    if credential is None:
        return None

    async def get(scope: str) -> tuple[str, float]:
        token = await asyncio.to_thread(credential.get_token, scope)
        return token.token, float(token.expires_on)

    return get


class BearerToken:
    """The token ``getter`` gives for ``scope``, kept until ``MARGIN_SECONDS`` before it
    expires and then asked for again; one sign-in at a time, so requests that start together
    share it. Graph and Exchange Online hold one each."""

    MARGIN_SECONDS = 300

    def __init__(self, getter: TokenGetter, scope: str) -> None:
        self.getter = getter
        self.scope = scope
        self._token: tuple[str, float] | None = None
        self._lock: asyncio.Lock | None = None  # made in the running loop, at the first use

    async def value(self) -> str:
        """The access token to send (``Authorization: Bearer <value>``)."""
        if self._lock is None:
            self._lock = asyncio.Lock()
        async with self._lock:
            if self._token is None or self._token[1] - self.MARGIN_SECONDS <= time.time():
                self._token = await self.getter(self.scope)
                register_short_lived(self._token[0])  # a secret too: an answer that echoes it is scrubbed
        return self._token[0]


def graph_token_getter(settings: Settings, client_secret: Secret | None) -> TokenGetter | None:
    """How Graph requests sign in: a ``TokenGetter`` over the app's credential, asked for
    GRAPH_SCOPE; None for GRAPH_AUTH=none (no Authorization header). The token goes only to
    GRAPH_BASE_URL's origin (``GraphHttp`` refuses any other)."""
    return token_getter_for(graph_token_credential(settings, client_secret))


def exchange_token_credential(settings: Settings, client_secret: Secret | None):
    """The same app credential as Graph (GRAPH_AUTH), signed in at EXO_BASE_URL's cloud; its
    tokens are asked for the scope ``{EXO_BASE_URL}/.default``. None for GRAPH_AUTH=none."""
    return graph_token_credential(settings, client_secret, base_url=settings.exo.base_url)
