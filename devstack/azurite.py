"""Start and stop Azurite (the Azure Storage emulator, npm package ``azurite``) for the
``blob:`` state backend in tests and in the local demo."""

from __future__ import annotations

import os
import shutil
import socket
import subprocess  # noqa: S404 - starts the local emulator only
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
# Azurite's documented development account; a public, well-known value, not a secret.
DEV_ACCOUNT = "devstoreaccount1"
DEV_KEY = "Eby8vdM02xNOcqFlqUwJPLlmEtlCDXJ1OUzFT50uSRZ6IFsuFq2UVErCz4I6tq/K1SZFPTOtr/KBHBeksoGMGw=="  # noqa: S105


class AzuriteNotInstalled(RuntimeError):
    pass


def azurite_command() -> list[str]:
    local = ROOT / "node_modules" / ".bin" / "azurite-blob"
    if local.exists():
        return [str(local)]
    found = shutil.which("azurite-blob")
    if found:
        return [found]
    raise AzuriteNotInstalled("Azurite is not installed: run 'npm ci' (or 'npm install') in the repository root")


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class Azurite:
    """One Azurite blob service on a free loopback port, with its data in a temp folder."""

    def __init__(self) -> None:
        self.port = _free_port()
        self.location = tempfile.mkdtemp(prefix="azurite-")
        self.proc: subprocess.Popen[bytes] | None = None

    @property
    def connection_string(self) -> str:
        return (
            f"DefaultEndpointsProtocol=http;AccountName={DEV_ACCOUNT};AccountKey={DEV_KEY};"
            f"BlobEndpoint=http://127.0.0.1:{self.port}/{DEV_ACCOUNT};"
        )

    def start(self, timeout: float = 30.0) -> Azurite:
        cmd = [*azurite_command(), "--blobHost", "127.0.0.1", "--blobPort", str(self.port), "--location", self.location,
               "--silent", "--skipApiVersionCheck", "--loose", "--disableProductStyleUrl"]
        self.proc = subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, start_new_session=True)  # noqa: S603
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                err = self.proc.stderr.read().decode(errors="replace") if self.proc.stderr else ""
                raise RuntimeError(f"Azurite exited at start: {err.strip()[:500]}")
            try:
                with socket.create_connection(("127.0.0.1", self.port), timeout=0.5):
                    return self
            except OSError:
                time.sleep(0.1)
        self.stop()
        raise RuntimeError(f"Azurite did not listen on 127.0.0.1:{self.port} within {timeout:.0f} s")

    def stop(self) -> None:
        if self.proc and self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(timeout=10)
            except subprocess.TimeoutExpired:
                self.proc.kill()
        shutil.rmtree(self.location, ignore_errors=True)

    def __enter__(self) -> Azurite:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()


if __name__ == "__main__":  # pragma: no cover - manual use
    with Azurite() as az:
        print(az.connection_string, flush=True)
        try:
            while True:
                time.sleep(3600)
        except KeyboardInterrupt:
            pass
    os._exit(0)
