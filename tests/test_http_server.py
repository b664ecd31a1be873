"""devstack/http_server.py, the socket layer the Graph emulator, the Exchange Online emulator and
the sync API receiver share: served over real sockets on loopback."""

from __future__ import annotations

import http.client
from typing import Any

import pytest

from devstack.http_server import LoopbackService, Response, loopback_parser, parse_loopback_args


class Echo(LoopbackService):
    """Answers every request with its method and target; ``/drop`` closes without answering."""

    thread_name = "echo"
    url_path = "/api"

    def __init__(self) -> None:
        self.seen: list[tuple[str, str, bytes]] = []

    def handle(self, method: str, target: str, headers: Any, body: bytes) -> Response:
        self.seen.append((method, target, body))
        if target == "/drop":
            return Response(0, drop=True)
        return Response(201, f"{method} {target}".encode(), {"Content-Type": "text/plain", "X-Echo": "1"})


def connect(base_url: str) -> http.client.HTTPConnection:
    host, port = base_url.removeprefix("http://").split("/")[0].split(":")
    return http.client.HTTPConnection(host, int(port), timeout=5)


def test_answers_over_keep_alive_with_status_headers_and_body() -> None:
    with Echo() as echo:
        assert echo.base_url.startswith("http://127.0.0.1:") and echo.base_url.endswith("/api")
        conn = connect(echo.base_url)
        for method, body in (("GET", None), ("POST", b'{"a": 1}'), ("DELETE", None)):
            conn.request(method, "/x?y=1", body=body)
            resp = conn.getresponse()
            assert (resp.status, resp.read(), resp.getheader("X-Echo")) == (201, f"{method} /x?y=1".encode(), "1")
            assert resp.getheader("Content-Length") == str(len(f"{method} /x?y=1"))
        conn.close()
        assert echo.seen == [("GET", "/x?y=1", b""), ("POST", "/x?y=1", b'{"a": 1}'), ("DELETE", "/x?y=1", b"")]


def test_a_dropped_answer_closes_the_connection_without_a_status_line() -> None:
    with Echo() as echo:
        conn = connect(echo.base_url)
        conn.request("GET", "/drop")
        with pytest.raises((http.client.RemoteDisconnected, ConnectionError)):
            conn.getresponse()


def test_stop_cuts_open_keep_alive_connections_and_start_is_idempotent() -> None:
    echo = Echo()
    url = echo.start()
    assert echo.start() == url  # a second start while serving: the same server
    conn = connect(url)
    conn.request("GET", "/before")
    assert conn.getresponse().read() == b"GET /before"
    echo.stop()
    echo.stop()  # stopping twice is harmless
    with pytest.raises((http.client.RemoteDisconnected, ConnectionError, OSError)):
        conn.request("GET", "/after")
        conn.getresponse()
    assert [target for _, target, _ in echo.seen] == ["/before"]
    # It can serve again after a stop, on a fresh port.
    again = echo.start()
    fresh = connect(again)
    fresh.request("GET", "/again")
    assert fresh.getresponse().status == 201
    fresh.close()
    echo.stop()


@pytest.mark.parametrize("host", ["10.0.0.1", "0.0.0.0", "example.com"])  # noqa: S104 - each must be refused
def test_a_host_that_is_not_loopback_is_a_usage_error(host: str, capsys: pytest.CaptureFixture[str]) -> None:
    parser = loopback_parser("prog", "test")
    with pytest.raises(SystemExit) as exit_info:
        parse_loopback_args(parser, ["--host", host])
    assert exit_info.value.code == 2
    assert "--host must be a loopback address" in capsys.readouterr().err


def test_port_and_loopback_host_are_parsed_and_host_can_be_left_out() -> None:
    args = parse_loopback_args(loopback_parser("prog", "test"), ["--port", "8123", "--host", "127.0.0.2"])
    assert (args.port, args.host) == (8123, "127.0.0.2")
    assert parse_loopback_args(loopback_parser("prog", "test"), []).host == "127.0.0.1"
    no_host = loopback_parser("prog", "test", host=False)
    assert vars(parse_loopback_args(no_host, ["--port", "0"])) == {"port": 0}
    with pytest.raises(SystemExit):
        no_host.parse_args(["--host", "127.0.0.1"])
