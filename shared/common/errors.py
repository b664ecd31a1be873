"""The exception hierarchy. Every failure a user can meet is a ``SyncError`` with a message
that names what is wrong and never carries a secret value. Each class says how a door reports
it: ``exit_code``, the command line's exit status, and ``http_status``, the operator
endpoints' HTTP status (500 unless a class says otherwise)."""

from __future__ import annotations


class SyncError(Exception):
    """Base of every expected failure of a run."""

    exit_code = 1
    http_status = 500


class SettingsError(SyncError):
    """A setting is missing or malformed; raised before any network call."""

    exit_code = 2

    def __init__(self, setting: str, problem: str, example: str | None = None) -> None:
        self.setting = setting
        text = f"setting {setting}: {problem}"
        if example:
            text += f" (a valid value looks like: {example})"
        super().__init__(text)

    @property
    def http_status(self) -> int:  # type: ignore[override]
        """400 when the caller's own input is wrong (a request parameter, ``--expect``), else 500:
        the app's settings are the operator's to fix, not the caller's."""
        return 400 if self.setting.startswith("--") else 500


class SecretError(SyncError):
    """A secret could not be read from Key Vault or the environment."""

    http_status = 502  # a service the sync depends on failed or refused


class CredentialExpiredError(SecretError):
    """Entra or the sync API refused a credential that has expired or is wrong."""


class GraphError(SyncError):
    """Microsoft Graph could not be read completely."""

    http_status = 502


class DeltaExpiredError(GraphError):
    """Graph refused a saved delta link (HTTP 410, or its sync-reset error): read in full."""


class IncompleteReadError(GraphError):
    """A page failed for good: nothing is sent, because deletions would be computed from it."""


class SyncApiError(SyncError):
    """The sync API refused a request or answered something the contract does not allow."""

    http_status = 502
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

    @property
    def http_status(self) -> int:  # type: ignore[override]
        """409 for a state another run holds (exit status 3: the run lock of
        ``shared/storage/lock.py``, a running preview), else 500."""
        return 409 if self.exit_code == 3 else 500


class StateConflictError(StateError):
    """Someone else wrote the state while this run held it."""




class RunCancelledError(SyncError):
    """The run was cancelled (SIGTERM: scale-in, deployment, timeout); it wrote its report."""

    exit_code = 143


class ExchangeError(SyncError):
    """Exchange Online could not be read completely: the run fails and nothing is sent."""


class ExchangeAuthError(ExchangeError):
    """401/403 from Exchange Online: the app lacks Exchange.ManageAsApp or the directory role."""
