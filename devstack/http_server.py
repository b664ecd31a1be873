"""The socket layer that the loopback servers of devstack/ share: the Graph emulator, the Exchange
Online emulator and the sync API receiver.

- ``LoopbackServer``: a threaded HTTP/1.1 server that knows its open connections (so ``stop``
  can cut keep-alive connections and clients see the server go) and prints no traceback for a
  client that hangs up mid-exchange.
- ``TrackedHandler``: the request handler base: keep-alive, no Nagle delay, quiet logging, its
  connection registered with the server while it is open.
- ``EmulatorHandler``: hands each request to ``app.handle(method, target, headers, body)`` and
  writes the answer (a ``Response``) in one write, headers and body together; ``drop`` closes
  the connection without an answer.
- ``LoopbackService``: a mixin giving a server object ``start`` (serve from a daemon thread,
  return the base URL), ``stop`` and ``with``.
- ``loopback_parser``, ``parse_loopback_args`` and ``serve_until_signalled``: the command line
  shared by ``python -m devstack.graph_emulator``, ``devstack.exchange_emulator`` and
  ``devstack.sync_receiver``: ``--port`` (and ``--host``, loopback only), a ``READY <base_url>``
  line once listening, and serving until SIGTERM/SIGINT.
"""

from __future__ import annotations

import argparse
import contextlib
import signal
import socket
import sys
import threading
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from email.utils import formatdate
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any, Self

LOOPBACK = "127.0.0.1"


@dataclass
class Response:
    """An emulator's answer, as ``EmulatorHandler`` writes it."""

    status: int
    body: bytes = b""
    headers: dict[str, str] = field(default_factory=dict)
    drop: bool = False  # close the socket without answering


class LoopbackServer(ThreadingHTTPServer):
    """A threaded server for ``app`` that knows its open connections, so ``stop`` can close them."""

    daemon_threads = True

    def __init__(self, address: tuple[str, int], handler: type[BaseHTTPRequestHandler], app: Any) -> None:
        self.app = app
        self.connections: set[socket.socket] = set()
        self.connections_lock = threading.Lock()
        super().__init__(address, handler)

    def handle_error(self, request: Any, client_address: Any) -> None:
        """A client that hangs up (e.g. it cancelled a read after a sibling read failed) is not a
        server fault: no traceback on stderr for it, which would look like a client's crash."""
        if isinstance(sys.exc_info()[1], ConnectionError):
            return
        super().handle_error(request, client_address)

    def close_connections(self) -> None:
        with self.connections_lock:
            conns = list(self.connections)
        for conn in conns:
            with contextlib.suppress(OSError):
                conn.shutdown(socket.SHUT_RDWR)


class TrackedHandler(BaseHTTPRequestHandler):
    """HTTP/1.1 keep-alive without Nagle's delay; the connection is known to the server while open."""

    protocol_version = "HTTP/1.1"
    disable_nagle_algorithm = True
    server: LoopbackServer

    def setup(self) -> None:
        super().setup()
        with self.server.connections_lock:
            self.server.connections.add(self.connection)

    def finish(self) -> None:
        with self.server.connections_lock:
            self.server.connections.discard(self.connection)
        with contextlib.suppress(OSError):
            super().finish()

    def log_message(self, format: str, *args: Any) -> None:  # noqa: A002 - stdlib signature
        """Quiet: tests and benches read stdout, and each server keeps its own request log."""


class EmulatorHandler(TrackedHandler):
    """Each request to ``server.app.handle``; its answer goes out in one write (headers and body together)."""

    server_version = "Microsoft-IIS/10.0"
    sys_version = ""

    def _serve(self) -> None:
        length = int(self.headers.get("Content-Length") or 0)
        body = self.rfile.read(length) if length > 0 else b""
        resp = self.server.app.handle(self.command, self.path, self.headers, body)
        if resp.drop:
            self.close_connection = True
            with contextlib.suppress(OSError):
                self.connection.shutdown(socket.SHUT_RDWR)
            return
        reason = self.responses.get(resp.status, ("",))[0]
        head = [f"HTTP/1.1 {resp.status} {reason}", f"Date: {formatdate(usegmt=True)}", f"Content-Length: {len(resp.body)}"]
        head += [f"{k}: {v}" for k, v in resp.headers.items()]
        if self.close_connection:
            head.append("Connection: close")
        self.wfile.write(("\r\n".join(head) + "\r\n\r\n").encode("latin-1") + resp.body)

    do_GET = do_POST = do_PUT = do_PATCH = do_DELETE = _serve


class LoopbackService:
    """Mixin: serve this object over HTTP from a daemon thread.

    The class names ``http_handler`` (its ``server.app`` is this object), ``thread_name`` and
    ``url_path`` (appended to ``http://host:port`` in ``base_url``)."""

    http_handler: type[BaseHTTPRequestHandler] = EmulatorHandler
    thread_name = "loopback-server"
    url_path = ""
    base_url = ""
    _http: tuple[LoopbackServer, threading.Thread] | None = None

    def start(self, port: int = 0, host: str = LOOPBACK) -> str:
        """Listen on ``host:port`` (0: any free port) in a background thread; returns the base URL.
        A second call while serving returns the same URL."""
        if self._http is None:
            server = LoopbackServer((host, port), self.http_handler, self)
            thread = threading.Thread(target=server.serve_forever, kwargs={"poll_interval": 0.01}, name=self.thread_name, daemon=True)
            thread.start()
            self._http = (server, thread)
            self.base_url = f"http://{host}:{server.server_address[1]}{self.url_path}"
        return self.base_url

    def stop(self) -> None:
        """Stop listening and cut open keep-alive connections, so clients see the server gone."""
        http, self._http = self._http, None
        if http is None:
            return
        server, thread = http
        server.shutdown()
        server.close_connections()
        server.server_close()
        thread.join(timeout=5)

    def __enter__(self) -> Self:
        self.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop()


# --- command line -------------------------------------------------------------------------------------
def loopback_parser(prog: str, description: str, *, host: bool = True, port_help: str | None = None) -> argparse.ArgumentParser:
    """A parser with ``--port`` (default 0: any free port) and, when ``host``, ``--host`` (loopback only)."""
    parser = argparse.ArgumentParser(prog=prog, description=description)
    parser.add_argument("--port", type=int, default=0, help=port_help)
    if host:
        parser.add_argument("--host", default=LOOPBACK, help="loopback only, e.g. 127.0.0.1")
    return parser


def parse_loopback_args(parser: argparse.ArgumentParser, argv: Sequence[str] | None) -> argparse.Namespace:
    """The parsed arguments; a ``--host`` that is not a loopback address is a usage error (exit 2)."""
    args = parser.parse_args(argv)
    host = getattr(args, "host", LOOPBACK)
    if not (host == "localhost" or host.startswith("127.")):
        parser.error("--host must be a loopback address (127.0.0.0/8 or localhost)")
    return args


def serve_until_signalled(start: Callable[[], str], stop: Callable[[], None]) -> int:
    """Call ``start`` (it returns the base URL), print ``READY <base_url>`` and serve until SIGTERM
    or SIGINT; then ``stop``. Returns the exit status, 0."""
    stopping = threading.Event()
    for signum in (signal.SIGTERM, signal.SIGINT):
        signal.signal(signum, lambda *_: stopping.set())
    base_url = start()
    print(f"READY {base_url}", flush=True)
    try:
        while not stopping.wait(0.5):
            pass
    finally:
        stop()
    return 0
