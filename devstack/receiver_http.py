"""HTTP/1.1 plumbing of the receiver: framing, body decoding and responses.

The standard library's ThreadingHTTPServer is enough (the server and the
handler base are devstack/http_server.py, shared with the emulators): with
keep-alive, one write per response and TCP_NODELAY, a request costs a few
milliseconds, which is dominated by JSON parsing and validation, not by HTTP.
"""

from __future__ import annotations

import json
import zlib
from dataclasses import dataclass, field
from email.message import Message
from http import HTTPStatus
from typing import Any
from urllib.parse import urlsplit

from devstack.http_server import TrackedHandler
from devstack.receiver_store import ApiError

_CHUNK = 1 << 16
PROBLEM_TYPE_BASE = "https://dirsync.example.net/problems/"


@dataclass
class HttpRequest:
    """A fully read request; `body` is the raw (possibly gzip) entity."""

    method: str
    target: str
    path: str
    query: str
    headers: Message
    body: bytes
    body_too_large: bool = False


@dataclass
class HttpResponse:
    """What to send; `drop` closes the connection without sending anything."""

    status: int = 200
    body: bytes = b""
    content_type: str | None = None
    headers: list[tuple[str, str]] = field(default_factory=list)
    drop: bool = False


def json_response(status: int, value: Any, headers: list[tuple[str, str]] | None = None) -> HttpResponse:
    """A JSON answer, or an empty one for 204."""
    if value is None:
        return HttpResponse(status=status, headers=headers or [])
    body = json.dumps(value, separators=(",", ":"), ensure_ascii=False).encode("utf-8")
    return HttpResponse(status, body, "application/json", headers or [])


def problem_response(error: ApiError, headers: list[tuple[str, str]] | None = None) -> HttpResponse:
    """An RFC 9457 problem document, the only failure format docs/sync-api.md allows."""
    slug = error.title.lower().replace(" ", "-").replace("/", "-")
    value = {"type": PROBLEM_TYPE_BASE + slug, "title": error.title, "status": error.status, "detail": error.detail}
    body = json.dumps(value, ensure_ascii=False).encode("utf-8")
    return HttpResponse(error.status, body, "application/problem+json", headers or [])


# ---- request bodies -------------------------------------------------------


def decode_entity(request: HttpRequest, max_bytes: int) -> bytes:
    """The uncompressed body: 413 past max_bytes, 400 for an unknown or corrupt encoding."""
    if request.body_too_large:
        raise ApiError(413, "Payload too large", f"the body is over {max_bytes} bytes uncompressed")
    encodings = [v.strip().lower() for v in ",".join(request.headers.get_all("Content-Encoding") or []).split(",") if v.strip()]
    if encodings in ([], ["identity"]):
        data = request.body
    elif encodings == ["gzip"]:
        data = gunzip(request.body, max_bytes)
    else:
        raise ApiError(400, "Unsupported content encoding", f"Content-Encoding {encodings} is not gzip")
    if len(data) > max_bytes:
        raise ApiError(413, "Payload too large", f"the body is {len(data)} bytes uncompressed, over {max_bytes}")
    return data


def gunzip(data: bytes, max_bytes: int) -> bytes:
    """Decompress every gzip member, refusing truncation, trailing garbage and bombs."""
    out = bytearray()
    rest = data
    if not rest:
        raise ApiError(400, "Corrupt gzip body", "Content-Encoding is gzip but the body is empty")
    while rest:
        inflater = zlib.decompressobj(wbits=16 + zlib.MAX_WBITS)
        try:
            out += inflater.decompress(rest, max_bytes + 1 - len(out))
        except zlib.error as exc:
            raise ApiError(400, "Corrupt gzip body", f"the gzip body cannot be decompressed: {exc}") from None
        if len(out) > max_bytes:
            raise ApiError(413, "Payload too large", f"the body is over {max_bytes} bytes uncompressed")
        if not inflater.eof:
            raise ApiError(400, "Corrupt gzip body", "the gzip body is truncated")
        rest = inflater.unused_data
    return bytes(out)


def check_json_content_type(request: HttpRequest) -> None:
    """docs/sync-api.md bodies are `application/json` in UTF-8; anything else is malformed."""
    value = request.headers.get("Content-Type")
    if value is None:
        raise ApiError(400, "Bad content type", "a request body needs Content-Type: application/json")
    media, *params = [part.strip().lower() for part in value.split(";")]
    charset_ok = all(p.replace(" ", "") in ("charset=utf-8", 'charset="utf-8"') for p in params if p)
    if media != "application/json" or not charset_ok:
        raise ApiError(400, "Bad content type", f"Content-Type {value!r} is not application/json in UTF-8")


def parse_json(data: bytes) -> Any:
    """Strict JSON: UTF-8 without BOM, no NaN/Infinity, no duplicate member names."""
    try:
        text = data.decode("utf-8")
        return json.loads(text, object_pairs_hook=_unique_members, parse_constant=_no_constants)
    except (UnicodeDecodeError, ValueError) as exc:
        raise ApiError(400, "Bad JSON", f"the body is not valid JSON in UTF-8: {exc}") from None


def _unique_members(pairs: list[tuple[str, Any]]) -> dict[str, Any]:
    result = dict(pairs)
    if len(result) != len(pairs):
        raise ValueError("an object has a duplicate member name")
    return result


def _no_constants(name: str) -> Any:
    raise ValueError(f"{name} is not JSON")


# ---- the server -------------------------------------------------------------


class ReceiverHandler(TrackedHandler):
    """Reads one request fully, hands it to ``server.app.handle`` (the receiver), writes the
    answer in one send. The server is a ``devstack.http_server.LoopbackServer``; the app also
    names ``raw_body_cap``, the most raw body bytes read before a request counts as too large."""

    server_version = "devstack-sync-receiver/1"
    timeout = 300

    def send_error(self, code: int, message: str | None = None, explain: str | None = None) -> None:
        """The stdlib's own errors (bad request line, huge headers) as problem+json too."""
        self.close_connection = True
        title = HTTPStatus(code).phrase if code in HTTPStatus._value2member_map_ else "Error"
        self._send(problem_response(ApiError(code, title, explain or message or title)))

    def _serve(self) -> None:
        try:
            body, too_large = self._read_body()
        except ApiError as exc:
            self.close_connection = True
            self._send(problem_response(exc))
            return
        target = urlsplit(self.path)
        request = HttpRequest(self.command, self.path, target.path, target.query, self.headers, body, too_large)
        response = self.server.app.handle(request)
        if response.drop:
            self.close_connection = True
            return
        self._send(response)

    # No endpoint serves HEAD: it is answered 405 without a body, keeping the framing right.
    do_GET = do_POST = do_DELETE = do_PUT = do_PATCH = do_OPTIONS = do_HEAD = _serve

    def _read_body(self) -> tuple[bytes, bool]:
        """The raw body, drained but discarded past the cap so keep-alive stays usable."""
        if "chunked" in (self.headers.get("Transfer-Encoding") or "").lower():
            return self._read_chunked()
        length_header = self.headers.get("Content-Length")
        if length_header is None:
            return b"", False
        if not length_header.strip().isdigit():
            raise ApiError(400, "Bad Content-Length", f"Content-Length {length_header!r} is not a number")
        length = int(length_header)
        if length > self.server.app.raw_body_cap:
            self._drain(length)
            return b"", True
        return self._read_exact(length), False

    def _read_exact(self, length: int) -> bytes:
        data = self.rfile.read(length)
        if len(data) != length:
            raise ApiError(400, "Truncated body", "the connection closed before the whole body arrived")
        return data

    def _drain(self, length: int) -> None:
        while length > 0:
            chunk = self.rfile.read(min(length, _CHUNK))
            if not chunk:
                break
            length -= len(chunk)

    def _read_chunked(self) -> tuple[bytes, bool]:
        parts, total, too_large = [], 0, False
        while True:
            line = self.rfile.readline(1024).split(b";")[0].strip()
            try:
                size = int(line, 16)
            except ValueError:
                raise ApiError(400, "Bad chunked body", "a chunk size is not hexadecimal") from None
            if size == 0:
                while self.rfile.readline(1024) not in (b"\r\n", b"\n", b""):
                    pass
                return b"".join(parts), too_large
            total += size
            if total > self.server.app.raw_body_cap:
                too_large, parts = True, []
                self._drain(size)
            else:
                parts.append(self._read_exact(size))
            self.rfile.readline(1024)

    def _send(self, response: HttpResponse) -> None:
        """Status line, headers and body in a single write, to avoid Nagle/delayed-ACK stalls."""
        phrase = HTTPStatus(response.status).phrase if response.status in HTTPStatus._value2member_map_ else ""
        lines = [f"HTTP/1.1 {response.status} {phrase}", f"Server: {self.server_version}", f"Date: {self.date_time_string()}"]
        if response.content_type:
            lines.append(f"Content-Type: {response.content_type}")
        if response.status != 204:
            lines.append(f"Content-Length: {len(response.body)}")
        lines += [f"{name}: {value}" for name, value in response.headers]
        if self.close_connection:
            lines.append("Connection: close")
        head = ("\r\n".join(lines) + "\r\n\r\n").encode("latin-1")
        no_body = response.status == 204 or getattr(self, "command", None) == "HEAD"
        try:
            self.wfile.write(head + (b"" if no_body else response.body))
        except OSError:
            self.close_connection = True
