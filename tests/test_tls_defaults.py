"""aiohttp's own default TLS contexts load their CA certificates only if used
(``shared/common/netutil.py`` ``default_cas_deferred``, used by ``shared/common/aio.py``).

aiohttp's connector makes two client contexts when it is imported, each loading the CA bundle
(about 0.24 billion instructions apiece); the product's sessions verify with ``tls_context`` and
never use them. Held here: the product's entry points import aiohttp with both deferred; a
deferred context, once used, is the context it would have been (the same certificates, the same
SSL_CERT_FILE reading, the same verify mode and host-name check), so verification is exactly as
strict; a context made in another thread meanwhile, or after the block, loads at once; and the
block leaves ``ssl.SSLContext`` as it found it."""

from __future__ import annotations

import socket
import ssl
import subprocess
import sys
import threading
from collections.abc import Iterator
from pathlib import Path

import pytest

from shared.common.netutil import default_cas_deferred
from tests.loopback import self_signed_pair

ROOT = Path(__file__).resolve().parents[1]


@pytest.mark.parametrize("entry", ["shared.cli", "function_app", "operator_endpoints"])
def test_the_entry_points_import_aiohttp_with_its_default_contexts_deferred(entry: str) -> None:
    code = (
        f"import ssl, {entry}, aiohttp.connector as c\n"
        "assert 'set_default_verify_paths' not in ssl.SSLContext.__dict__\n"
        "print(type(c._SSL_CONTEXT_VERIFIED).__name__, type(c._SSL_CONTEXT_UNVERIFIED).__name__)\n"
        "print(c._SSL_CONTEXT_VERIFIED.cert_store_stats() == ssl.create_default_context().cert_store_stats())\n"
        "print(type(c._SSL_CONTEXT_VERIFIED).__name__, c._SSL_CONTEXT_VERIFIED.verify_mode == ssl.CERT_REQUIRED)\n"
    )
    out = subprocess.run([sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True, check=True).stdout.split("\n")
    assert out[:3] == ["_DeferredDefaultCAs _DeferredDefaultCAs", "True", "SSLContext True"]


def test_a_deferred_context_once_used_is_the_context_it_would_have_been() -> None:
    with default_cas_deferred():
        deferred = ssl.create_default_context()
        unverified = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
        unverified.check_hostname, unverified.verify_mode = False, ssl.CERT_NONE
        unverified.set_default_verify_paths()
    plain = ssl.create_default_context()
    assert type(deferred).__name__ == "_DeferredDefaultCAs" and type(unverified).__name__ == "_DeferredDefaultCAs"
    assert (deferred.verify_mode, deferred.check_hostname, deferred.options) == (plain.verify_mode, plain.check_hostname, plain.options)
    assert deferred.get_ca_certs(binary_form=True) == plain.get_ca_certs(binary_form=True) != []
    assert type(deferred) is ssl.SSLContext
    assert unverified.cert_store_stats() == plain.cert_store_stats()
    assert (unverified.verify_mode, unverified.check_hostname) == (ssl.CERT_NONE, False)


def test_the_block_defers_in_its_own_thread_only_and_restores_ssl_even_when_it_fails() -> None:
    made: list[ssl.SSLContext] = []
    with pytest.raises(RuntimeError), default_cas_deferred():
        other = threading.Thread(target=lambda: made.append(ssl.create_default_context()))
        other.start()
        other.join()
        raise RuntimeError("the import failed")
    assert type(made[0]) is ssl.SSLContext and made[0].cert_store_stats()["x509_ca"] > 0
    assert "set_default_verify_paths" not in ssl.SSLContext.__dict__
    assert type(ssl.create_default_context()) is ssl.SSLContext


@pytest.fixture
def tls_server(tmp_path: Path) -> Iterator[tuple[int, str]]:
    """A TLS server on 127.0.0.1 with a self-signed certificate: ``(port, cert_file)``; it
    completes each handshake it can and closes."""
    cert_file, key_file = self_signed_pair(tmp_path)
    server_ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    server_ctx.load_cert_chain(cert_file, key_file)
    listener = socket.create_server(("127.0.0.1", 0))
    listener.settimeout(10)
    stop = threading.Event()

    def serve() -> None:
        while not stop.is_set():
            try:
                conn, _ = listener.accept()
            except OSError:
                return
            try:
                with server_ctx.wrap_socket(conn, server_side=True):
                    pass
            except (OSError, ssl.SSLError):
                pass

    thread = threading.Thread(target=serve, daemon=True)
    thread.start()
    yield listener.getsockname()[1], str(cert_file)
    stop.set()
    listener.close()
    thread.join(5)


def _handshake(context: ssl.SSLContext, port: int, host: str) -> str:
    try:
        with socket.create_connection(("127.0.0.1", port), timeout=10) as raw, context.wrap_socket(raw, server_hostname=host):
            return "ok"
    except ssl.SSLCertVerificationError as exc:
        return exc.verify_message


@pytest.mark.parametrize(("trusted", "host"), [(True, "127.0.0.1"), (True, "other.invalid"), (False, "127.0.0.1")])
def test_a_deferred_context_verifies_exactly_as_a_plain_one(tls_server: tuple[int, str], monkeypatch: pytest.MonkeyPatch,
                                                             trusted: bool, host: str) -> None:
    """SSL_CERT_FILE naming the server's certificate trusts it, as OpenSSL reads the variable;
    a host name the certificate does not carry, or a certificate not trusted, fails the
    handshake with the same reason with or without the deferral."""
    port, cert_file = tls_server
    if trusted:
        monkeypatch.setenv("SSL_CERT_FILE", cert_file)
    else:
        monkeypatch.delenv("SSL_CERT_FILE", raising=False)
    with default_cas_deferred():
        deferred = ssl.create_default_context()
    expected = _handshake(ssl.create_default_context(), port, host)
    assert _handshake(deferred, port, host) == expected
    assert (expected == "ok") == (trusted and host == "127.0.0.1")
