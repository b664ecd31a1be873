"""The exception hierarchy. Every failure a user can meet is a ``SyncError`` with a message
that names what is wrong and never carries a secret value."""

from __future__ import annotations


class SyncError(Exception):
    """Base of every expected failure of a run."""

    exit_code = 1


class SettingsError(SyncError):
    """A setting is missing or malformed; raised before any network call."""

    exit_code = 2

    def __init__(self, setting: str, problem: str, example: str | None = None) -> None:
        self.setting = setting
        text = f"setting {setting}: {problem}"
        if example:
            text += f" (a valid value looks like: {example})"
        super().__init__(text)


class SecretError(SyncError):
    """A secret could not be read from Key Vault or the environment."""


class CredentialExpiredError(SecretError):
    """Entra or the sync API refused a credential that has expired or is wrong."""


class GraphError(SyncError):
    """Microsoft Graph could not be read completely."""


class DeltaExpiredError(GraphError):
    """Graph refused a saved delta link (HTTP 410, or its sync-reset error): read in full."""


class IncompleteReadError(GraphError):
    """A page failed for good: nothing is sent, because deletions would be computed from it."""


class SyncApiError(SyncError):
    """The sync API refused a request or answered something the contract does not allow."""

    # True when an attempt may have been applied without its answer reaching us (a connection
    # lost after sending, a gateway error): the caller must treat the records as unknown.
    maybe_applied = False

    def __init__(self, message: str, status: int | None = None) -> None:
        self.status = status
        super().__init__(message)


class SyncApiAuthError(SyncApiError):
    """401/403: the sync API credential is wrong or lacks the roles."""


class SyncApiRequestError(SyncApiError):
    """400/404/409: a bug or bad data; never retried."""


class PayloadTooLargeError(SyncApiError):
    """413: the caller splits the request and sends the halves."""


class SyncApiUnavailableError(SyncApiError):
    """Retries were exhausted on 429/5xx/connection faults."""


class SyncApiProtocolError(SyncApiError):
    """A 2xx answer that is not the JSON shape the contract promises (e.g. a proxy's HTML page)."""


class DeletionsHeldError(SyncError):
    """The deletion guard held deletions: the run sent everything else, then fails so that
    someone looks (the failure alert fires)."""

    exit_code = 4


class StateError(SyncError):
    """The change-tracking state cannot be read or written safely."""


class StateConflictError(StateError):
    """Someone else wrote the state while this run held it."""




class RunCancelledError(SyncError):
    """The run was cancelled (SIGTERM: scale-in, deployment, timeout); it wrote its report."""

    exit_code = 143


class ExchangeError(SyncError):
    """Exchange Online could not be read completely: the run fails and nothing is sent."""


class ExchangeAuthError(ExchangeError):
    """401/403 from Exchange Online: the app lacks Exchange.ManageAsApp or the directory role."""
