"""The socket layer: a threading HTTP/1.1 server that hands each request to ``GraphEmulator.handle``."""

from __future__ import annotations

import socket
import sys
from email.utils import formatdate
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from devstack.graph.emulator import GraphEmulator


# --- the socket layer -----------------------------------------------------------------------------------
class _Server(ThreadingHTTPServer):
    def handle_error(self, request: Any, client_address: Any) -> None:
        """A client that hangs up (e.g. it cancelled a read after a sibling read failed) is not an
        emulator fault: no traceback on stderr for it, which would look like a client's crash."""
        if isinstance(sys.exc_info()[1], ConnectionError):
            return
        super().handle_error(request, client_address)


class _Handler(BaseHTTPRequestHandler):
    """HTTP/1.1 keep-alive; each response goes out in one write (headers and body together)."""

    protocol_version = "HTTP/1.1"
    disable_nagle_algorithm = True
    server_version = "Microsoft-IIS/10.0"
    sys_version = ""

    def setup(self) -> None:
        super().setup()
        emulator: GraphEmulator = self.server.emulator  # type: ignore[attr-defined]
        with emulator._lock:
            emulator._connections.add(self.connection)

    def finish(self) -> None:
        emulator: GraphEmulator = self.server.emulator  # type: ignore[attr-defined]
        with emulator._lock:
            emulator._connections.discard(self.connection)
        try:
            super().finish()
        except OSError:
            pass

    def log_message(self, format: str, *args: Any) -> None:  # quiet: tests and benches read stdout
        pass

    def _serve(self) -> None:
        length = int(self.headers.get("Content-Length") or 0)
        body = self.rfile.read(length) if length > 0 else b""
        emulator: GraphEmulator = self.server.emulator  # type: ignore[attr-defined]
        resp = emulator.handle(self.command, self.path, self.headers, body)
        if resp.drop:
            self.close_connection = True
            try:
                self.connection.shutdown(socket.SHUT_RDWR)
            except OSError:
                pass
            return
        reason = self.responses.get(resp.status, ("",))[0]
        head = [f"HTTP/1.1 {resp.status} {reason}", f"Date: {formatdate(usegmt=True)}", f"Content-Length: {len(resp.body)}"]
        head += [f"{k}: {v}" for k, v in resp.headers.items()]
        if self.close_connection:
            head.append("Connection: close")
        self.wfile.write(("\r\n".join(head) + "\r\n\r\n").encode("latin-1") + resp.body)

    do_GET = do_POST = do_PUT = do_PATCH = do_DELETE = _serve
