"""The Graph transport's gzip handling as a class (shared/sources/graph_transport.py): a gzip
body is inflated once, checked whole (every member's end marker, CRC-32 and length) and capped
before and after inflation, and handed on inflated. Checked on
generated bodies (hypothesis), on an exhaustive matrix of sizes around the caps for both
encodings, and end to end through ``GraphSource`` against a Graph server on loopback that
answers in gzip when asked, as Microsoft Graph does (the Graph SDKs' decompression handler
specification: clients send ``Accept-Encoding: gzip`` and inflate ``Content-Encoding: gzip``,
https://microsoftgraph.github.io/msgraph-sdk-design/middleware/DecompressionHandler.html)."""

from __future__ import annotations

import asyncio
import gzip
import json
import struct
import zlib
from collections.abc import Callable, Iterator
from http.server import BaseHTTPRequestHandler
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from shared.common.errors import IncompleteReadError
from shared.sources.graph import GraphSource
from shared.sources.graph_transport import GraphHttp, GraphHttpError, _BadGzip, _RefusedAnswer, inflate_gzip
from tests.loopback import Loopback

Answer = tuple[int, dict[str, str], bytes]


# --- a Graph server on loopback that records what it was asked --------------------------------
class _Handler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"

    def log_message(self, *args: Any) -> None:
        pass

    def do_GET(self) -> None:  # noqa: N802 - http.server's name
        server: Server = self.server.owner  # type: ignore[attr-defined]
        server.asked.append(self.headers)  # an email.message.Message: case-insensitive
        server.paths.append(self.path)
        status, headers, data = server.answer(self.path)
        self.send_response(status)
        for k, v in headers.items():
            self.send_header(k, v)
        self.send_header("Content-Length", str(len(data)))
        self.end_headers()
        self.wfile.write(data)


class Server:
    def __init__(self, answer: Callable[[str], Answer]) -> None:
        self.answer = answer
        self.asked: list[Any] = []
        self.paths: list[str] = []
        self._loopback = Loopback(_Handler, self)
        self.origin = self._loopback.origin

    def stop(self) -> None:
        self._loopback.stop()


@pytest.fixture
def serve() -> Iterator[Callable[[Callable[[str], Answer]], Server]]:
    started: list[Server] = []

    def start(answer: Callable[[str], Answer]) -> Server:
        started.append(Server(answer))
        return started[-1]

    yield start
    for s in started:
        s.stop()


def page_bytes(origin: str, collection: str, values: list[dict[str, Any]]) -> bytes:
    return json.dumps({"value": values, "@odata.deltaLink": f"{origin}/v1.0/{collection}/delta?$deltatoken=next"}).encode()


def users_in(encode: Callable[[bytes], bytes], coding: str | None, users: list[dict[str, Any]]) -> Callable[[str], Answer]:
    """A Graph whose users page is ``encode(page)`` with ``Content-Encoding: coding``; groups
    and contacts are empty pages."""
    holder: dict[str, Server] = {}

    def answer(path: str) -> Answer:
        origin = holder["server"].origin
        for collection in ("groups", "contacts"):
            if f"/{collection}/" in path:
                return 200, {"Content-Type": "application/json"}, page_bytes(origin, collection, [])
        headers = {"Content-Type": "application/json", **({"Content-Encoding": coding} if coding else {})}
        return 200, headers, encode(page_bytes(origin, "users", users))

    answer.holder = holder  # type: ignore[attr-defined]
    return answer


def start_graph(serve: Callable[[Callable[[str], Answer]], Server], answer: Callable[[str], Answer]) -> Server:
    server = serve(answer)
    answer.holder["server"] = server  # type: ignore[attr-defined]
    return server


def read_users(origin: str) -> list[dict[str, Any]]:
    taken: list[dict[str, Any]] = []

    class Sink:
        def take(self, collection: str, obj: dict[str, Any]) -> None:
            if collection == "users":
                taken.append(obj)

    async def go() -> None:
        source = GraphSource(f"{origin}/v1.0", None, backoff_seconds=0.01, max_attempts=2)
        try:
            await source.read_directory(Sink())
        finally:
            await source.aclose()

    asyncio.run(go())
    return taken


def members(payload: bytes, cuts: list[int], level: int = 6) -> bytes:
    """``payload`` as a multi-member gzip stream, split at ``cuts`` (RFC 1952, 2.2)."""
    bounds = sorted({0, len(payload), *(c % (len(payload) + 1) for c in cuts)})
    return b"".join(gzip.compress(payload[a:b], compresslevel=level) for a, b in zip(bounds, bounds[1:], strict=False)) or gzip.compress(b"")


# --- inflate_gzip over generated bodies ---------------------------------------------------------
@settings(max_examples=200, deadline=None)
@given(payload=st.binary(max_size=4096), cuts=st.lists(st.integers(0, 4096), max_size=3), level=st.integers(0, 9),
       padding=st.integers(0, 4))
def test_any_gzip_body_inflates_to_its_payload(payload: bytes, cuts: list[int], level: int, padding: int) -> None:
    body = members(payload, cuts, level) + b"\x00" * padding
    assert inflate_gzip(body, 1 << 20) == payload


@settings(max_examples=200, deadline=None)
@given(payload=st.binary(max_size=4096), level=st.integers(0, 9), data=st.data())
def test_any_truncated_gzip_body_fails_as_truncated(payload: bytes, level: int, data: st.DataObject) -> None:
    # One member: a cut at a member boundary of a multi-member body leaves a complete gzip
    # stream, which only the page's JSON check can catch.
    body = gzip.compress(payload, compresslevel=level)
    keep = data.draw(st.integers(1, len(body) - 1), label="bytes kept")
    with pytest.raises(_BadGzip, match="truncated or corrupt gzip"):
        inflate_gzip(body[:keep], 1 << 20)


@settings(max_examples=100, deadline=None)
@given(payload=st.binary(max_size=2048), field=st.sampled_from(["crc", "length"]), flip=st.integers(1, 255))
def test_a_wrong_crc_or_length_fails_the_body(payload: bytes, field: str, flip: int) -> None:
    body = bytearray(gzip.compress(payload))
    at = len(body) - (8 if field == "crc" else 4)
    body[at] ^= flip
    with pytest.raises(_BadGzip, match="truncated or corrupt gzip"):
        inflate_gzip(bytes(body), 1 << 20)


def test_trailing_bytes_that_are_not_gzip_fail_the_body() -> None:
    with pytest.raises(_BadGzip):
        inflate_gzip(gzip.compress(b'{"value": []}') + b"garbage", 1 << 20)


def test_an_empty_gzip_body_stays_empty() -> None:
    assert inflate_gzip(b"", 1 << 20) == b""


@pytest.mark.parametrize("cap", [0, 1, 1000, 65536])
@pytest.mark.parametrize("delta", [-1, 0, 1, 1000])
@pytest.mark.parametrize("split", [False, True])
def test_the_inflated_cap_holds_for_every_size_around_it(cap: int, delta: int, split: bool) -> None:
    size = cap + delta
    if size < 0:
        return
    payload = bytes(range(256)) * (size // 256) + b"x" * (size % 256)
    body = members(payload, [size // 2] if split else [])
    if size <= cap:
        assert inflate_gzip(body, cap) == payload
    else:
        with pytest.raises(_RefusedAnswer, match=rf"inflates to more than {cap} bytes"):
            inflate_gzip(body, cap)


def test_a_bomb_is_refused_without_inflating_it_whole() -> None:
    comp = zlib.compressobj(9, zlib.DEFLATED, 31)
    bomb = b"".join([*(comp.compress(b"\0" * (1 << 20)) for _ in range(256)), comp.flush()])  # 256 MiB inflated
    assert len(bomb) < 1 << 20
    with pytest.raises(_RefusedAnswer, match=r"inflates to more than 1048576 bytes"):
        inflate_gzip(bomb, 1 << 20)


# --- the transport: caps on the wire and inflated, for both encodings ---------------------------
def _get(origin: str, max_bytes: int) -> bytes:
    async def go() -> bytes:
        http = GraphHttp(origin, None, "scope", max_bytes=max_bytes)
        try:
            return await http.get(f"{origin}/v1.0/users")
        finally:
            await http.aclose()

    return asyncio.run(go())


CAP = 4096


@pytest.mark.parametrize("coding", [None, "identity", "gzip", "x-gzip", "GZip "])
@pytest.mark.parametrize("inflated", [CAP - 1, CAP, CAP + 1])
def test_the_transport_caps_a_body_for_each_encoding(serve, coding: str | None, inflated: int) -> None:
    payload = b"a" * inflated
    zipped = coding is not None and coding.strip().lower() in ("gzip", "x-gzip")
    wire = gzip.compress(payload) if zipped else payload
    server = serve(lambda path: (200, {"Content-Type": "application/json", **({"Content-Encoding": coding} if coding else {})}, wire))
    if inflated > CAP:
        with pytest.raises(_RefusedAnswer, match="inflates to more than" if zipped else "larger than"):
            _get(server.origin, CAP)
        return
    assert _get(server.origin, CAP) == payload  # inflated here, once
    assert server.asked[-1]["Accept-Encoding"] == "gzip"


def test_a_gzip_body_over_the_cap_on_the_wire_is_refused_before_inflating(serve) -> None:
    wire = gzip.compress(bytes(range(256)) * 64, compresslevel=0)  # stored blocks: larger than its payload
    server = serve(lambda path: (200, {"Content-Encoding": "gzip"}, wire))
    with pytest.raises(_RefusedAnswer, match=r"larger than \d+ bytes"):
        _get(server.origin, len(wire) - 1)


@pytest.mark.parametrize("coding", ["deflate", "br", "zstd", "compress", "gzip, gzip"])
def test_a_coding_that_was_not_asked_for_is_refused(serve, coding: str) -> None:
    server = serve(lambda path: (200, {"Content-Encoding": coding}, b"\x00" * 64))
    with pytest.raises(_RefusedAnswer, match="only gzip was asked for"):
        _get(server.origin, CAP)


def test_an_error_answer_in_gzip_reaches_the_reader_inflated(serve) -> None:
    error = json.dumps({"error": {"code": "syncStateNotFound", "message": "reset"}}).encode()
    server = serve(lambda path: (410, {"Content-Type": "application/json", "Content-Encoding": "gzip"}, gzip.compress(error)))
    with pytest.raises(GraphHttpError) as caught:
        _get(server.origin, CAP)
    assert caught.value.status == 410 and caught.value.code == "syncStateNotFound" and caught.value.message == "reset"


# --- end to end: GraphSource reads the same directory in either encoding --------------------------
USERS = [{"id": f"u{i}", "mail": f"user{i}@contoso.com", "proxyAddresses": [f"SMTP:user{i}@contoso.com"]} for i in range(50)]


@pytest.mark.parametrize("coding", [None, "gzip", "x-gzip"])
def test_the_reader_takes_the_same_users_in_either_encoding(serve, coding: str | None) -> None:
    answer = users_in(gzip.compress if coding else (lambda b: b), coding, USERS)
    server = start_graph(serve, answer)
    assert read_users(server.origin) == USERS
    assert {h["Accept-Encoding"] for h in server.asked} == {"gzip"}


def test_a_truncated_gzip_page_fails_the_read(serve) -> None:
    answer = users_in(lambda b: gzip.compress(b)[:-5], "gzip", USERS)
    server = start_graph(serve, answer)
    with pytest.raises(IncompleteReadError, match="truncated or corrupt gzip"):
        read_users(server.origin)


def test_a_gzip_page_with_a_wrong_length_fails_the_read(serve) -> None:
    def wrong_length(b: bytes) -> bytes:
        body = gzip.compress(b)
        return body[:-4] + struct.pack("<I", len(b) + 1)

    server = start_graph(serve, users_in(wrong_length, "gzip", USERS))
    with pytest.raises(IncompleteReadError, match="truncated or corrupt gzip"):
        read_users(server.origin)
