"""The Azure Blob Storage side of ``blob:`` state: the one service client of
``AzureWebJobsStorage`` (connection string or identity), the container made on first use, and
Azure SDK errors reduced to what may be shown. The state, the lock and the run reports of one
run share the client that ``shared/storage/backend.py`` builds once."""

from __future__ import annotations

from typing import Any


def blob_service(settings: Any) -> tuple[Any, str]:
    """The blob service client of ``AzureWebJobsStorage`` (connection string or identity) and
    a hint naming the account for messages: ``(BlobServiceClient, str)``."""
    from azure.storage.blob import BlobServiceClient

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
