"""The Azure Blob Storage side of ``blob:`` state: the one service client of
``AzureWebJobsStorage`` (connection string or identity), the container made on first use, and
Azure SDK errors reduced to what may be shown. The state, the lock and the run reports of one
run share the client that ``shared/storage/backend.py`` builds once."""

from __future__ import annotations

import sys
from typing import Any

AIOHTTP_TRANSPORT = "azure.core.pipeline.transport._aiohttp"


def import_blob_sdk() -> Any:
    """``azure.storage.blob``, imported without loading aiohttp when nothing has loaded it yet.

    The SDK's shared-key policy probes at import for azure-core's aiohttp transport
    (its module ``azure.storage.blob._shared.authentication``, ``except ImportError``), which it needs
    only to sign the requests of its async clients; this product uses the sync client alone
    (requests). The probe loads aiohttp, about 7 MB of resident memory for the whole run
    (docs/performance.md, *`blob:` state on the wire*). While the SDK is imported, that
    transport module is marked absent, so the probe finds what it finds on an installation
    without aiohttp; the mark is removed right after, so anything else can still import it."""
    if "aiohttp" in sys.modules or "azure.storage.blob" in sys.modules or AIOHTTP_TRANSPORT in sys.modules:
        import azure.storage.blob

        return azure.storage.blob
    sys.modules[AIOHTTP_TRANSPORT] = None  # type: ignore[assignment]
    try:
        import azure.storage.blob
    finally:
        if sys.modules.get(AIOHTTP_TRANSPORT, "") is None:
            del sys.modules[AIOHTTP_TRANSPORT]
    return azure.storage.blob


def blob_service(settings: Any) -> tuple[Any, str]:
    """The blob service client of ``AzureWebJobsStorage`` (connection string or identity) and
    a hint naming the account for messages: ``(BlobServiceClient, str)``."""
    BlobServiceClient = import_blob_sdk().BlobServiceClient  # noqa: N806 - the SDK's class

    if settings.storage_connection_string:
        service = BlobServiceClient.from_connection_string(settings.storage_connection_string)
        return service, service.account_name or "connection string"
    from azure.identity import DefaultAzureCredential, ManagedIdentityCredential

    if settings.storage_client_id:
        credential = ManagedIdentityCredential(client_id=settings.storage_client_id)
    else:
        credential = DefaultAzureCredential(managed_identity_client_id=settings.managed_identity_client_id)
    return BlobServiceClient(settings.storage_blob_uri, credential=credential), settings.storage_blob_uri


def ensure_container(container: Any) -> None:
    """Create the container if it is missing; one that exists (made meanwhile too) is fine."""
    from azure.core.exceptions import ResourceExistsError

    try:
        container.create_container()
    except ResourceExistsError:
        pass


def if_not_modified() -> Any:
    """The match condition of a conditional write (the ETag read must still be current)."""
    from azure.core import MatchConditions

    return MatchConditions.IfNotModified


def azure_reason(exc: Exception) -> str:
    """An Azure SDK error as its type and code only: its message can echo request details."""
    code = getattr(exc, "error_code", None) or getattr(exc, "status_code", None)
    return f"{type(exc).__name__}{f' ({code})' if code else ''}"


def storage_problem(exc: Exception) -> str:
    """``azure_reason``, with what to check when the storage account never answered or refused
    the credential (a run's first contact with it: the lock, the state, the run reports)."""
    from azure.core.exceptions import ClientAuthenticationError, ServiceRequestError

    reason = azure_reason(exc)
    if isinstance(exc, ServiceRequestError):  # no answer at all: the setting or the network
        return (f"{reason}: no answer from the storage account; check AzureWebJobsStorage (or its __blobServiceUri) and "
                "that this host can reach it (DNS, firewall, private endpoint)")
    if isinstance(exc, ClientAuthenticationError):
        return (f"{reason}: the storage account refused the credential; check AzureWebJobsStorage's key, or that the "
                "identity has 'Storage Blob Data Owner' on the account")
    return reason
