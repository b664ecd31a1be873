"""The product's sync API client (shared/target/syncapi.py) against the strict local receiver.

Every test talks real HTTP on loopback to devstack.sync_receiver.SyncReceiver, the project's
independent reading of docs/sync-api.md, and checks what the receiver saw (its request log and its
data) as well as what the client returned or raised. Backoff is tiny so the suite stays fast;
only the two Retry-After tests wait a real second, to prove Retry-After is honoured.
"""

from __future__ import annotations

import asyncio
import base64
import gzip
import json
import logging
import time
from collections.abc import AsyncIterator, Iterator
from typing import Any

import pytest

from devstack.sync_receiver import SyncReceiver
from shared.common.errors import (
    PayloadTooLargeError,
    SyncApiAuthError,
    SyncApiError,
    SyncApiProtocolError,
    SyncApiRequestError,
    SyncApiUnavailableError,
)
from shared.common.redact import Secret
from shared.send import idempotency_key
from shared.target.syncapi import GZIP_ABOVE_BYTES, SyncApiClient, WriteResult

DOMAINS = ["contoso.com"]
OTHER_ACCOUNT = {"taken@contoso.com"}
CREDENTIAL = "sync:secret"
SETTING = "SYNC_API_CREDENTIAL"


# ---- fixtures and helpers ------------------------------------------------------------------


class HeaderRecordingReceiver(SyncReceiver):
    """The strict receiver, also keeping each request's headers and raw (possibly gzip) body,
    which its request log does not record."""

    def __init__(self, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        self.raw: list[tuple[str, str, dict[str, str], bytes]] = []

    def _dispatch(self, request):  # type: ignore[override]
        headers = {k.lower(): v for k, v in request.headers.items()}
        self.raw.append((request.method, request.path, headers, request.body))
        return super()._dispatch(request)


@pytest.fixture
def receiver() -> Iterator[HeaderRecordingReceiver]:
    r = HeaderRecordingReceiver(domains=DOMAINS, other_account_addresses=OTHER_ACCOUNT, forbidden_credential="viewer:lacks-roles")
    r.start()
    yield r
    r.stop()


def make_client(url: str, credential: str = CREDENTIAL, **kwargs: Any) -> SyncApiClient:
    kwargs.setdefault("backoff_seconds", 0.01)
    kwargs.setdefault("timeout_seconds", 10.0)
    return SyncApiClient(url, Secret(credential, SETTING), **kwargs)


@pytest.fixture
async def api(receiver: SyncReceiver) -> AsyncIterator[SyncApiClient]:
    async with make_client(receiver.base_url) as c:
        yield c


def addr(i: int) -> dict[str, str]:
    return {"address": f"user{i:05d}@contoso.com"}


def change_log(receiver: SyncReceiver, dataset: str = "addresses") -> list:
    return [e for e in receiver.request_log if e.path == f"/v1/datasets/{dataset}/changes"]


def assert_same_request_retried(entries: list, key: str) -> None:
    """Every attempt carried the same key and the same body, and the receiver never saw that key
    with a different request."""
    assert len(entries) >= 2
    assert {e.idempotency_key for e in entries} == {key}
    first = entries[0].body
    assert first is not None
    assert all(e.body == first for e in entries)


# ---- authentication ---------------------------------------------------------------------------


async def test_basic_auth_for_user_and_password(receiver: HeaderRecordingReceiver, api: SyncApiClient) -> None:
    assert await api.domains() == ["contoso.com"]
    auth = receiver.raw[-1][2]["authorization"]
    assert auth == "Basic " + base64.b64encode(b"sync:secret").decode()


async def test_bearer_for_a_bare_token() -> None:
    with HeaderRecordingReceiver(domains=DOMAINS, credential="tok-0123456789abcdef") as r:
        async with make_client(r.base_url, "tok-0123456789abcdef") as c:
            assert await c.domains() == ["contoso.com"]
        assert r.raw[-1][2]["authorization"] == "Bearer tok-0123456789abcdef"
        # the same token sent to a Basic receiver is refused: the scheme really differs
    with SyncReceiver(domains=DOMAINS, credential="sync:secret") as r:
        async with make_client(r.base_url, "tok-0123456789abcdef") as c:
            with pytest.raises(SyncApiAuthError):
                await c.domains()


def _assert_clean_auth_error(exc: SyncApiAuthError, status: int, secret_parts: list[str]) -> None:
    text = str(exc)
    assert exc.status == status
    assert SETTING in text
    for part in secret_parts:
        assert part not in text
        assert part not in repr(exc)
        assert all(part not in str(a) for a in exc.args)
    assert exc.__cause__ is None or all(p not in str(exc.__cause__) for p in secret_parts)


async def test_401_names_the_setting_and_hides_the_secret(receiver: SyncReceiver, caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.DEBUG)
    canary = "sync:Canary-Pw-7f3e9a"
    basic = base64.b64encode(canary.encode()).decode()
    async with make_client(receiver.base_url, canary) as c:
        with pytest.raises(SyncApiAuthError) as info:
            await c.post_changes("addresses", [addr(1)], [], "k-401")
    _assert_clean_auth_error(info.value, 401, ["Canary-Pw-7f3e9a", basic])
    assert "Canary-Pw-7f3e9a" not in caplog.text and basic not in caplog.text
    assert len(change_log(receiver)) == 1  # not retried
    assert receiver.records("addresses") == {}


async def test_injected_401_is_not_retried(receiver: SyncReceiver, api: SyncApiClient) -> None:
    receiver.inject_fault("401", path_contains="/changes", times=3)
    with pytest.raises(SyncApiAuthError) as info:
        await api.post_changes("addresses", [addr(1)], [], "k-401b")
    _assert_clean_auth_error(info.value, 401, ["sync:secret", base64.b64encode(b"sync:secret").decode()])
    assert len(change_log(receiver)) == 1


async def test_403_names_the_setting_and_hides_the_secret(receiver: SyncReceiver) -> None:
    async with make_client(receiver.base_url, "viewer:lacks-roles") as c:
        with pytest.raises(SyncApiAuthError) as info:
            await c.post_changes("addresses", [addr(1)], [], "k-403")
    _assert_clean_auth_error(info.value, 403, ["lacks-roles", base64.b64encode(b"viewer:lacks-roles").decode()])
    assert "Mail Platform" in str(info.value)
    assert len(change_log(receiver)) == 1
    assert receiver.records("addresses") == {}


# ---- requests that must not be retried ----------------------------------------------------------


async def test_400_bad_idempotency_key_is_not_retried(receiver: SyncReceiver, api: SyncApiClient) -> None:
    with pytest.raises(SyncApiRequestError) as info:
        await api.post_changes("addresses", [addr(1)], [], "k" * 129)
    assert info.value.status == 400
    assert "Idempotency-Key" in str(info.value)  # the receiver's detail is carried
    assert len(change_log(receiver)) == 1


async def test_400_wrong_shape_is_not_retried(receiver: SyncReceiver, api: SyncApiClient) -> None:
    with pytest.raises(SyncApiRequestError) as info:
        await api.post_changes("addresses", ["not-an-object"], [], "k-400")  # type: ignore[list-item]
    assert info.value.status == 400
    assert "upsert" in str(info.value)
    assert len(change_log(receiver)) == 1


async def test_404_unknown_dataset_is_not_retried(receiver: SyncReceiver, api: SyncApiClient) -> None:
    with pytest.raises(SyncApiRequestError) as info:
        await api.post_changes("Users", [], ["x"], "k-404")
    assert info.value.status == 404
    assert "SYNC_API_URL" in str(info.value)
    assert len(receiver.request_log) == 1


async def test_409_key_reused_with_a_different_body_is_not_retried(receiver: SyncReceiver, api: SyncApiClient) -> None:
    await api.post_changes("addresses", [addr(1)], [], "k-409")
    with pytest.raises(SyncApiRequestError) as info:
        await api.post_changes("addresses", [addr(2)], [], "k-409")
    assert info.value.status == 409
    assert "Idempotency-Key" in str(info.value)
    assert [e.status for e in change_log(receiver)] == [200, 409]
    assert receiver.idempotency_conflicts() == 1
    assert set(receiver.records("addresses")) == {"user00001@contoso.com"}


# ---- retries with the same Idempotency-Key --------------------------------------------------


@pytest.mark.parametrize("status", ["429", "503"])
async def test_throttled_request_waits_retry_after_and_is_applied_once(receiver: SyncReceiver, api: SyncApiClient, status: str) -> None:
    receiver.inject_fault(status, path_contains="/changes", retry_after=1)
    start = time.monotonic()
    result = await api.post_changes("addresses", [addr(1), addr(2)], [], "k-throttled")
    elapsed = time.monotonic() - start
    assert elapsed >= 0.9, "Retry-After: 1 was not honoured (the client retried after its own small backoff)"
    assert result.count == 2 and result.rejected == []
    entries = change_log(receiver)
    assert [e.status for e in entries] == [int(status), 200]
    assert_same_request_retried(entries, "k-throttled")
    assert receiver.keys_reused_with_different_body() == []
    assert set(receiver.records("addresses")) == {"user00001@contoso.com", "user00002@contoso.com"}


async def test_throttled_several_times_then_applied(receiver: SyncReceiver, api: SyncApiClient) -> None:
    receiver.inject_fault("429", path_contains="/changes", times=2, retry_after=0)
    receiver.inject_fault("503", path_contains="/changes", times=1, retry_after=0)
    result = await api.post_changes("addresses", [addr(1)], ["gone@contoso.com"], "k-many")
    assert result.count == 2
    entries = change_log(receiver)
    assert [e.status for e in entries] == [429, 429, 503, 200]
    assert_same_request_retried(entries, "k-many")
    assert receiver.keys_reused_with_different_body() == []


async def test_500_is_retried_with_the_same_key(receiver: SyncReceiver, api: SyncApiClient) -> None:
    receiver.inject_fault("500", path_contains="/changes", times=2)
    result = await api.post_changes("addresses", [addr(1)], [], "k-500")
    assert result.count == 1
    entries = change_log(receiver)
    assert [e.status for e in entries] == [500, 500, 200]
    assert_same_request_retried(entries, "k-500")
    assert receiver.keys_reused_with_different_body() == []
    assert list(receiver.records("addresses")) == ["user00001@contoso.com"]


async def test_connection_dropped_before_processing_is_retried(receiver: SyncReceiver, api: SyncApiClient) -> None:
    receiver.inject_fault("drop_before", path_contains="/changes")
    result = await api.post_changes("addresses", [addr(1)], [], "k-drop-before")
    assert result.count == 1
    entries = change_log(receiver)
    assert [(e.fault, e.status) for e in entries] == [("drop_before", None), (None, 200)]
    assert_same_request_retried(entries, "k-drop-before")
    assert receiver.keys_reused_with_different_body() == []
    assert list(receiver.records("addresses")) == ["user00001@contoso.com"]


async def test_lost_answer_is_replayed_not_reapplied(receiver: SyncReceiver, api: SyncApiClient) -> None:
    """drop_after: the receiver applied the batch and the answer was lost. The retry with the same
    key must get the first answer back (a replay) and apply nothing more."""
    receiver.load("addresses", [{"address": "old@contoso.com"}])
    receiver.inject_fault("drop_after", path_contains="/changes")
    result = await api.post_changes("addresses", [addr(1), {"address": "bad..dot@contoso.com"}], ["old@contoso.com"], "k-drop-after")
    entries = change_log(receiver)
    assert [(e.fault, e.status, e.replayed) for e in entries] == [("drop_after", None, False), (None, 200, True)]
    assert_same_request_retried(entries, "k-drop-after")
    first_answer = entries[0].response
    assert first_answer == entries[1].response
    assert result.count == first_answer["applied"] == 2
    assert [(r.key, r.code) for r in result.rejected] == [("bad..dot@contoso.com", "invalid_address")]
    assert receiver.keys_reused_with_different_body() == []
    assert receiver.records("addresses") == {"user00001@contoso.com": {"address": "user00001@contoso.com"}}


async def test_lost_answer_on_replacement_records_is_replayed(receiver: SyncReceiver, api: SyncApiClient) -> None:
    rid = await api.create_replacement("addresses")
    receiver.inject_fault("drop_after", path_contains="/records")
    result = await api.post_replacement_records("addresses", rid, [addr(1), addr(2)], "k-rep-drop")
    assert result.count == 2
    entries = [e for e in receiver.request_log if e.path.endswith("/records")]
    assert [e.replayed for e in entries] == [False, True]
    assert_same_request_retried(entries, "k-rep-drop")
    assert (await api.commit_replacement("addresses", rid)).count == 2
    assert receiver.keys_reused_with_different_body() == []


async def test_408_request_timeout_is_retried_with_the_same_key(receiver: SyncReceiver) -> None:
    """A 408 is a timeout, which docs/sync-api.md counts as transient: retried with the same
    Idempotency-Key; when every attempt times out, the run's error says so and the request
    is known not to have been applied."""
    receiver.inject_fault("408", path_contains="/changes", times=1)
    async with make_client(receiver.base_url, max_attempts=3) as c:
        assert (await c.post_changes("addresses", [addr(1)], [], "k-408")).count == 1
        entries = change_log(receiver)
        assert [e.status for e in entries] == [408, 200]
        assert_same_request_retried(entries, "k-408")
        receiver.inject_fault("408", path_contains="/changes", times=10)
        with pytest.raises(SyncApiUnavailableError) as info:
            await c.post_changes("addresses", [addr(2)], [], "k-408-always")
    assert "3 attempts" in str(info.value) and "HTTP 408" in str(info.value) and info.value.maybe_applied is False
    assert list(receiver.records("addresses")) == ["user00001@contoso.com"]


async def test_retries_exhausted_raise_unavailable(receiver: SyncReceiver) -> None:
    receiver.inject_fault("500", path_contains="/changes", times=10)
    async with make_client(receiver.base_url, max_attempts=3) as c:
        with pytest.raises(SyncApiUnavailableError) as info:
            await c.post_changes("addresses", [addr(1)], [], "k-exhausted")
    assert "3 attempts" in str(info.value) and "500" in str(info.value)
    entries = change_log(receiver)
    assert len(entries) == 3
    assert_same_request_retried(entries, "k-exhausted")
    assert receiver.records("addresses") == {}


async def test_retries_exhausted_on_dropped_connections(receiver: SyncReceiver) -> None:
    receiver.inject_fault("drop_before", path_contains="/domains", times=10)
    async with make_client(receiver.base_url, max_attempts=2) as c:
        with pytest.raises(SyncApiUnavailableError) as info:
            await c.domains()
    assert "connection fault" in str(info.value)
    assert c.requests == 2  # the client's attempts
    # Each GET twice on the wire: aiohttp sends an idempotent request again once, at once, when
    # the connection closes before an answer (RFC 9112, 9.3.1.1); a POST it never sends twice.
    assert len(receiver.request_log) == 4


async def test_retries_exhausted_name_the_url_setting_and_the_fix_without_the_credential() -> None:
    """An operator whose SYNC_API_URL points nowhere (a closed port) is told which URL and which
    setting, and what to check; never the credential."""
    from tests.loopback import closed_port

    url = f"http://127.0.0.1:{closed_port()}/v1"
    async with make_client(url, max_attempts=2) as c:
        with pytest.raises(SyncApiUnavailableError) as info:
            await c.domains()
    text = str(info.value)
    assert "connection fault" in text and url in text and "check SYNC_API_URL" in text and "firewall" in text
    assert "secret" not in text and base64.b64encode(CREDENTIAL.encode()).decode() not in text


async def test_retries_exhausted_on_5xx_name_the_service_and_say_the_next_run_tries_again(receiver: SyncReceiver) -> None:
    receiver.inject_fault("503", path_contains="/domains", times=10)
    async with make_client(receiver.base_url, max_attempts=2) as c:
        with pytest.raises(SyncApiUnavailableError) as info:
            await c.domains()
    text = str(info.value)
    assert "HTTP 503" in text and receiver.base_url in text and "SYNC_API_URL" in text and "next run tries again" in text
    assert "secret" not in text


async def test_absurd_retry_after_fails_promptly(receiver: SyncReceiver, api: SyncApiClient) -> None:
    receiver.inject_fault("429", path_contains="/changes", retry_after=86400)
    start = time.monotonic()
    with pytest.raises(SyncApiUnavailableError) as info:
        # wait_for: a client that sleeps (even a clamped 300 s) fails here instead of hanging the suite
        await asyncio.wait_for(api.post_changes("addresses", [addr(1)], [], "k-absurd"), timeout=5)
    assert time.monotonic() - start < 2.0
    text = str(info.value)
    assert "Retry-After" in text and "86400" in text
    assert len(change_log(receiver)) == 1
    assert receiver.records("addresses") == {}


async def test_malformed_retry_after_falls_back_to_backoff(receiver: SyncReceiver, api: SyncApiClient) -> None:
    receiver.inject_fault("503", path_contains="/changes", times=2, retry_after="soon-ish")
    start = time.monotonic()
    result = await api.post_changes("addresses", [addr(1)], [], "k-malformed")
    elapsed = time.monotonic() - start
    assert result.count == 1
    assert elapsed < 1.0, f"a malformed Retry-After should fall back to the (0.01 s) backoff, took {elapsed:.2f} s"
    entries = change_log(receiver)
    assert [e.status for e in entries] == [503, 503, 200]
    assert_same_request_retried(entries, "k-malformed")


async def test_retry_after_as_a_past_http_date_retries_at_once(receiver: SyncReceiver, api: SyncApiClient) -> None:
    receiver.inject_fault("429", path_contains="/changes", retry_after="Wed, 21 Oct 2015 07:28:00 GMT")
    start = time.monotonic()
    assert (await api.post_changes("addresses", [addr(1)], [], "k-date")).count == 1
    assert time.monotonic() - start < 1.0
    assert [e.status for e in change_log(receiver)] == [429, 200]


# ---- hostile 200 answers ------------------------------------------------------------------------


async def test_html_200_is_a_protocol_error(receiver: SyncReceiver, api: SyncApiClient) -> None:
    receiver.inject_fault("html", path_contains="/changes")
    with pytest.raises(SyncApiProtocolError) as info:
        await api.post_changes("addresses", [addr(1)], [], "k-html")
    text = str(info.value)
    assert "not JSON" in text and "text/html" in text and "proxy" in text
    assert "<html" not in text.lower()
    assert len(change_log(receiver)) == 1  # not retried
    assert receiver.records("addresses") == {}


@pytest.mark.parametrize(
    ("path", "call", "needle"),
    [
        ("/changes", lambda c: c.post_changes("addresses", [addr(1)], [], "k-shape"), "'applied'"),
        ("/domains", lambda c: c.domains(), "'domains'"),
        ("/records", lambda c: _drain(c.records("addresses")), "'records'"),
        ("/replacements", lambda c: c.create_replacement("addresses"), "replacementId"),
    ],
)
async def test_wrong_shape_200_is_a_protocol_error(receiver: SyncReceiver, api: SyncApiClient, path: str, call: Any, needle: str) -> None:
    receiver.inject_fault("wrong_shape", path_contains=path)
    with pytest.raises(SyncApiProtocolError) as info:
        await call(api)
    assert needle in str(info.value)
    assert len(receiver.request_log) == 1
    assert receiver.records("addresses") == {}


async def _drain(pages: AsyncIterator[list[dict[str, Any]]]) -> list[dict[str, Any]]:
    return [r async for page in pages for r in page]


# ---- body size: gzip, 413 -----------------------------------------------------------------------


async def test_large_bodies_are_gzipped_and_accepted(receiver: HeaderRecordingReceiver, api: SyncApiClient) -> None:
    batch = [addr(i) for i in range(900)]
    plain = json.dumps({"upsert": batch, "delete": []}, separators=(",", ":")).encode()
    assert len(plain) > GZIP_ABOVE_BYTES
    result = await api.post_changes("addresses", batch, [], "k-gzip")
    assert result.count == 900 and result.rejected == []
    method, path, headers, raw = receiver.raw[-1]
    assert (method, path) == ("POST", "/v1/datasets/addresses/changes")
    assert headers.get("content-encoding") == "gzip"
    assert headers.get("content-type", "").startswith("application/json")
    assert raw[:2] == b"\x1f\x8b" and len(raw) < len(plain) // 3
    assert json.loads(gzip.decompress(raw)) == {"upsert": batch, "delete": []}
    assert len(receiver.records("addresses")) == 900


async def test_small_bodies_are_sent_plain(receiver: HeaderRecordingReceiver, api: SyncApiClient) -> None:
    await api.post_changes("addresses", [addr(1)], [], "k-small")
    _, _, headers, raw = receiver.raw[-1]
    assert "content-encoding" not in headers
    assert json.loads(raw) == {"upsert": [addr(1)], "delete": []}


async def test_gzipped_body_survives_a_retry_unchanged(receiver: HeaderRecordingReceiver, api: SyncApiClient) -> None:
    receiver.inject_fault("drop_after", path_contains="/changes")
    batch = [addr(i) for i in range(900)]
    await api.post_changes("addresses", batch, [], "k-gzip-retry")
    raws = [raw for m, p, _, raw in receiver.raw if p.endswith("/changes")]
    assert len(raws) == 2 and raws[0] == raws[1]  # compressed once: the retry resends the very same bytes
    assert receiver.keys_reused_with_different_body() == []
    assert len(receiver.records("addresses")) == 900


async def test_more_than_1000_items_is_413(receiver: SyncReceiver, api: SyncApiClient) -> None:
    with pytest.raises(PayloadTooLargeError) as info:
        await api.post_changes("addresses", [addr(i) for i in range(1000)], ["x@contoso.com"], "k-413")
    assert info.value.status == 413
    assert len(change_log(receiver)) == 1  # the caller splits; the client does not retry
    assert receiver.records("addresses") == {}


async def test_413_from_a_receiver_with_small_max_items() -> None:
    with SyncReceiver(domains=DOMAINS, max_items=3) as r:
        async with make_client(r.base_url) as c:
            rid = await c.create_replacement("addresses")
            with pytest.raises(PayloadTooLargeError):
                await c.post_replacement_records("addresses", rid, [addr(i) for i in range(4)], "k-413r")
            assert (await c.post_replacement_records("addresses", rid, [addr(i) for i in range(3)], "k-413r-half")).count == 3
        assert r.keys_reused_with_different_body() == []


# ---- per-record rejections ------------------------------------------------------------------------


async def test_rejections_are_returned_not_raised(receiver: SyncReceiver, api: SyncApiClient) -> None:
    result = await api.post_changes(
        "addresses",
        [
            {"address": "ok@contoso.com"},
            {"address": "bad..dot@contoso.com"},
            {"address": "someone@fabrikam.com"},
            {"address": "taken@contoso.com"},
            {"address": "extra@contoso.com", "name": "x"},
        ],
        [],
        "k-rej-addresses",
    )
    assert isinstance(result, WriteResult)
    assert result.count == 1
    assert {(r.key, r.code) for r in result.rejected} == {
        ("bad..dot@contoso.com", "invalid_address"),
        ("someone@fabrikam.com", "domain_not_provisioned"),
        ("taken@contoso.com", "address_in_other_account"),
        ("extra@contoso.com", "invalid_record"),
    }
    assert all(r.message for r in result.rejected)
    assert set(receiver.records("addresses")) == {"ok@contoso.com"}


async def test_user_rejections_duplicate_address_and_unknown_group(receiver: SyncReceiver, api: SyncApiClient) -> None:
    groups = await api.post_changes("groups", [{"id": "g1", "name": "Sales", "parentIds": []}], [], "k-rej-groups")
    assert groups.count == 1
    result = await api.post_changes(
        "users",
        [
            {"id": "u1", "address": "alice@contoso.com", "groupIds": ["g1"]},
            {"id": "u2", "address": "Alice@contoso.com", "groupIds": []},
            {"id": "u3", "address": "bob@contoso.com", "groupIds": ["no-such-group"]},
        ],
        [],
        "k-rej-users",
    )
    assert result.count == 1
    assert [(r.key, r.code) for r in result.rejected] == [("u2", "duplicate_address"), ("u3", "unknown_group")]
    assert set(receiver.records("users")) == {"u1"}
    assert [r.as_dict()["code"] for r in result.rejected] == ["duplicate_address", "unknown_group"]


# ---- reading: paging ------------------------------------------------------------------------------


async def test_records_pages_through_everything(receiver: SyncReceiver, api: SyncApiClient) -> None:
    receiver.load("addresses", [addr(i) for i in range(23)])
    pages = [page async for page in api.records("addresses", page_size=5)]
    assert [len(p) for p in pages] == [5, 5, 5, 5, 3]
    assert [r["address"] for p in pages for r in p] == [addr(i)["address"] for i in range(23)]
    gets = [e for e in receiver.request_log if e.path.endswith("/records")]
    assert len(gets) == 5
    assert "pageToken" not in gets[0].query and all("pageToken=" in e.query for e in gets[1:])
    assert all("pageSize=5" in e.query for e in gets)


async def test_records_of_an_empty_dataset_and_an_exact_multiple(receiver: SyncReceiver, api: SyncApiClient) -> None:
    assert await _drain(api.records("groups", page_size=2)) == []
    receiver.load("addresses", [addr(i) for i in range(4)])
    assert len(await _drain(api.records("addresses", page_size=2))) == 4


async def test_records_survive_a_throttled_page(receiver: SyncReceiver, api: SyncApiClient) -> None:
    receiver.load("addresses", [addr(i) for i in range(7)])
    receiver.inject_fault("503", path_contains="pageToken=", retry_after=0)
    assert len(await _drain(api.records("addresses", page_size=3))) == 7


# ---- staged replace ---------------------------------------------------------------------------------


async def test_staged_replace_create_post_commit(receiver: SyncReceiver, api: SyncApiClient) -> None:
    receiver.load("addresses", [{"address": "old@contoso.com"}])
    rid = await api.create_replacement("addresses")
    assert isinstance(rid, str) and rid
    first = await api.post_replacement_records("addresses", rid, [addr(1), addr(2)], "k-rep-1")
    second = await api.post_replacement_records("addresses", rid, [addr(3), {"address": "x@fabrikam.com"}], "k-rep-2")
    assert (first.count, second.count) == (2, 1)
    assert [(r.key, r.code) for r in second.rejected] == [("x@fabrikam.com", "domain_not_provisioned")]
    assert set(receiver.records("addresses")) == {"old@contoso.com"}  # untouched until the commit
    committed = await api.commit_replacement("addresses", rid)
    assert committed.count == 3 and committed.rejected == []
    assert set(receiver.records("addresses")) == {"user00001@contoso.com", "user00002@contoso.com", "user00003@contoso.com"}
    again = await api.commit_replacement("addresses", rid)  # a repeated commit returns the first answer
    assert again.count == 3


async def test_groups_commit_reports_dropped_parents(receiver: SyncReceiver, api: SyncApiClient) -> None:
    rid = await api.create_replacement("groups")
    await api.post_replacement_records("groups", rid, [{"id": "g1", "name": "A", "parentIds": ["g2", "nowhere"]}], "k-g1")
    await api.post_replacement_records("groups", rid, [{"id": "g2", "name": "B", "parentIds": []}], "k-g2")
    committed = await api.commit_replacement("groups", rid)
    assert committed.count == 2
    assert [r.code for r in committed.rejected] == ["unknown_group"]
    assert receiver.records("groups")["g1"]["parentIds"] == ["g2"]


async def test_staged_replace_abandon_leaves_the_dataset(receiver: SyncReceiver, api: SyncApiClient) -> None:
    receiver.load("addresses", [{"address": "old@contoso.com"}])
    rid = await api.create_replacement("addresses")
    await api.post_replacement_records("addresses", rid, [addr(1)], "k-abandon")
    await api.abandon_replacement("addresses", rid)
    deletes = [e for e in receiver.request_log if e.method == "DELETE"]
    assert [e.status for e in deletes] == [204]
    assert set(receiver.records("addresses")) == {"old@contoso.com"}
    await api.abandon_replacement("addresses", rid)  # idempotent
    with pytest.raises(SyncApiRequestError) as info:
        await api.commit_replacement("addresses", rid)
    assert info.value.status == 404
    assert set(receiver.records("addresses")) == {"old@contoso.com"}


# ---- transport security ----------------------------------------------------------------------------


@pytest.mark.parametrize(
    "url",
    [
        "http://dirsync.example.net/v1",
        "http://10.0.0.5:8080/v1",
        "http://192.168.1.1/v1",
        "http://localhost.evil.example/v1",
        "http://127.0.0.1.nip.io/v1",
        "ftp://127.0.0.1/v1",
        "https://sync:secret@dirsync.example.net/v1",
        "not a url",
    ],
)
def test_plain_http_to_a_non_loopback_host_is_refused(url: str) -> None:
    with pytest.raises(SyncApiError) as info:
        SyncApiClient(url, Secret(CREDENTIAL, SETTING))
    assert "SYNC_API_URL" in str(info.value)
    assert "secret" not in str(info.value).replace("SYNC_API_URL", "")


@pytest.mark.parametrize(
    "url",
    ["http://127.0.0.1:8080/v1", "http://127.5.6.7/v1", "http://localhost:9/v1", "http://[::1]:9/v1", "https://dirsync.example.net/v1"],
)
async def test_loopback_http_and_https_are_allowed(url: str) -> None:
    async with make_client(url) as c:
        assert c.base_url == url.rstrip("/")


async def test_the_client_talks_to_a_receiver_on_localhost(receiver: SyncReceiver) -> None:
    async with make_client(receiver.base_url.replace("127.0.0.1", "localhost")) as c:
        assert await c.domains() == ["contoso.com"]


# ---- engine.idempotency_key ---------------------------------------------------------------------


def test_idempotency_key_is_stable_and_distinguishes_batches() -> None:
    body = {"upsert": [addr(1), addr(2)], "delete": ["x@contoso.com"]}
    same = json.loads(json.dumps(body))
    key = idempotency_key("lineage-1:7", "addresses", body)
    assert key == idempotency_key("lineage-1:7", "addresses", same)
    assert 1 <= len(key) <= 128 and key.isascii() and key.isprintable()
    others = {
        idempotency_key("lineage-1:8", "addresses", body),  # another position
        idempotency_key("lineage-2:7", "addresses", body),  # another lineage
        idempotency_key("lineage-1:7", "users", body),  # another dataset
        idempotency_key("lineage-1:7", "addresses", {"upsert": [addr(1)], "delete": ["x@contoso.com"]}),
        idempotency_key("lineage-1:7", "addresses", {"upsert": [addr(2), addr(1)], "delete": ["x@contoso.com"]}),
        idempotency_key("lineage-1:7", "addresses", {"upsert": [addr(1), addr(2)], "delete": []}),
    }
    assert key not in others and len(others) == 6


def test_idempotency_key_length_for_huge_inputs() -> None:
    body = {"upsert": [addr(i) for i in range(1000)], "delete": []}
    assert len(idempotency_key("p" * 5000, "addresses", body)) <= 128


async def test_engine_key_is_accepted_and_replayed_by_the_receiver(receiver: SyncReceiver, api: SyncApiClient) -> None:
    body = {"upsert": [addr(1)], "delete": []}
    key = idempotency_key("lineage-1:1", "addresses", body)
    first = await api.post_changes("addresses", body["upsert"], body["delete"], key)
    again = await api.post_changes("addresses", body["upsert"], body["delete"], key)
    assert (first.count, again.count) == (1, 1)
    assert [e.replayed for e in change_log(receiver)] == [False, True]
    assert receiver.keys_reused_with_different_body() == []


# ---- "maybe applied" (issue 9) ----------------------------------------------------------------
@pytest.mark.parametrize("kind", ["applied_not_json", "applied_wrong_shape", "applied_truncated_gzip", "applied_html"])
async def test_an_applied_write_answered_unreadably_is_maybe_applied(receiver: SyncReceiver, api: SyncApiClient, kind: str) -> None:
    receiver.inject_fault(kind, path_contains="/changes")
    with pytest.raises(SyncApiProtocolError) as info:
        await api.post_changes("addresses", [addr(1)], [], "k-unreadable")
    assert info.value.maybe_applied is True
    assert "user00001@contoso.com" in receiver.records("addresses")  # it was applied


async def test_a_definite_refusal_is_not_maybe_applied(receiver: SyncReceiver, api: SyncApiClient) -> None:
    with pytest.raises(SyncApiRequestError) as info:
        await api.post_changes("nosuch", [], ["x"], "k-refused")
    assert info.value.status == 404 and info.value.maybe_applied is False


@pytest.mark.parametrize(("records", "faulted"), [(7, "/records"), (7, "pageToken="), (4, "pageToken=")], ids=["first", "middle", "last"])
async def test_a_records_page_without_next_page_token_is_a_protocol_error(receiver: SyncReceiver, api: SyncApiClient, records: int, faulted: str) -> None:
    """``nextPageToken`` is ``null`` on the last page (docs/sync-api.md): a page without the
    member does not say whether another follows, so the listing fails instead of ending there
    (refresh would otherwise rebuild the state from part of the service's copy). Pages of 3:
    the first page, the second of three, or the second and last."""
    receiver.load("addresses", [addr(i) for i in range(records)])
    receiver.inject_fault("no_page_token", path_contains=faulted)
    got: list[dict[str, Any]] = []
    with pytest.raises(SyncApiProtocolError, match="without 'nextPageToken'"):
        async for part in api.records("addresses", page_size=3):
            got.extend(part)
    assert len(got) == (0 if faulted == "/records" else 3)  # only the pages before the faulted one
    assert [e.fault for e in receiver.request_log if e.path.endswith("/records")][-1] == "no_page_token"


@pytest.mark.parametrize("fault", ["drop_before", "drop_after"])
async def test_a_dropped_post_is_sent_again_only_by_the_clients_retries(receiver: SyncReceiver, fault: str) -> None:
    """The one retry policy for a write: a POST whose connection drops is sent again only by
    the client's own retries, with the same Idempotency-Key (aiohttp resends only idempotent
    methods), and the error says it may have been applied."""
    receiver.inject_fault(fault, path_contains="/changes", times=10)
    async with make_client(receiver.base_url, max_attempts=3) as c:
        with pytest.raises(SyncApiUnavailableError, match=r"connection fault \(RemoteProtocolError\)") as info:
            await c.post_changes("addresses", [{"address": "a@contoso.com"}], [], key="k-drop")
    assert c.requests == 3
    posts = [r for r in receiver.request_log if r.path.endswith("/changes")]
    assert [(r.method, r.idempotency_key) for r in posts] == [("POST", "k-drop")] * 3
    assert info.value.maybe_applied
