"""Helpers of the ``blob:`` state tests: a blob client whose write requests are counted (and
can be cut off, as a process killed between two requests would be), the rows of a database
as a user would compare them, and the parts a container holds."""

from __future__ import annotations

import sqlite3
import uuid
from pathlib import Path
from typing import Any

from azure.core.pipeline.transport import RequestsTransport
from azure.storage.blob import BlobServiceClient

from shared.storage.image import MANIFEST_NAME, PARTS

WRITES = frozenset({"PUT", "DELETE", "POST", "PATCH"})


class Killed(BaseException):  # noqa: N818 - it stands for SIGKILL: nothing catches it
    """The process died here: no later request reaches the storage."""


class CountingTransport(RequestsTransport):
    """Counts write requests (method and path) and bytes sent; once ``kill_after`` writes
    went out, every later write raises ``Killed`` before it is sent."""

    def __init__(self, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        self.writes: list[tuple[str, str]] = []
        self.sent = 0
        self.kill_after: int | None = None

    def send(self, request: Any, **kwargs: Any) -> Any:
        if request.method in WRITES:
            if self.kill_after is not None and len(self.writes) >= self.kill_after:
                raise Killed(f"killed before {request.method} {request.url}")
            path = request.url.split("?")[0]
            self.writes.append((request.method, PARTS + path.rsplit("/", 1)[-1] if "/state.parts/" in path else path.rsplit("/", 1)[-1]))
            self.sent += int(request.headers.get("Content-Length") or 0)
        return super().send(request, **kwargs)

    def reset(self) -> None:
        self.writes.clear()
        self.sent = 0
        self.kill_after = None


def client(azurite: Any) -> tuple[BlobServiceClient, CountingTransport]:
    transport = CountingTransport()
    return BlobServiceClient.from_connection_string(azurite.connection_string, transport=transport), transport


def container_name(tag: str) -> str:
    return f"{tag}-{uuid.uuid4().hex[:10]}"


def rows(path_or_conn: Path | sqlite3.Connection) -> dict[str, list[tuple]]:
    """Every table's rows in key order and the schema: what two copies must agree on."""
    conn = sqlite3.connect(path_or_conn) if isinstance(path_or_conn, Path) else path_or_conn
    try:
        out: dict[str, list[tuple]] = {"": sorted(conn.execute("SELECT type, name, sql FROM main.sqlite_master").fetchall(), key=repr)}
        for (name,) in conn.execute("SELECT name FROM main.sqlite_master WHERE type='table'").fetchall():
            out[name] = sorted(conn.execute(f'SELECT * FROM main."{name}"').fetchall(), key=repr)  # noqa: S608 - the test's own tables
        return out
    finally:
        if isinstance(path_or_conn, Path):
            conn.close()


def parts(svc: BlobServiceClient, container: str) -> dict[str, int]:
    """The parts in the container: name → stored bytes."""
    return {b.name: b.size for b in svc.get_container_client(container).list_blobs(name_starts_with=PARTS)}


def stored_bytes(svc: BlobServiceClient, container: str) -> int:
    """Bytes of every state blob (parts and the manifest)."""
    return sum(b.size for b in svc.get_container_client(container).list_blobs() if b.name.startswith(PARTS) or b.name == MANIFEST_NAME)
