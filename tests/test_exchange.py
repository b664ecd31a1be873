"""The Exchange Online adapter (shared/sources/exchange.py) against the protocol-faithful Exchange
emulator on loopback: paging by POST to the nextLink, the exact body and headers, every fault,
the 401/403 message, one request in flight, and the emulator's own refusals."""

from __future__ import annotations

import asyncio
import json

import httpx
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from devstack.exchange_emulator import ExchangeEmulator, recipient
from shared.common.errors import ExchangeAuthError, ExchangeError
from shared.sources.exchange import ExchangeSource, invoke_body

TENANT = "11111111-2222-3333-4444-555555555555"
ANCHOR = f"APP:SystemMailbox{{bb558c35-97f1-4cb9-8ff7-d53741dc928c}}@{TENANT}"
TYPES = ("DynamicDistributionGroup", "PublicFolder")


def guid(n: int) -> str:
    return f"e0000000-0000-4000-8000-{n:012d}"


def people(n: int) -> list[dict]:
    out = []
    for i in range(n):
        kind = TYPES[i % 2]
        out.append(recipient(guid(i), kind, f"r{i}@contoso.com"))
    out.append(recipient(guid(999), "UserMailbox", "mailbox@contoso.com", entra_id="10000000-0000-0000-0000-000000000001"))
    return out


@pytest.fixture
def exo():
    emu = ExchangeEmulator(people(7), tenant=TENANT, max_page_size=3)
    emu.start()
    yield emu
    emu.stop()


def read(emu: ExchangeEmulator, *, token=None, types=TYPES, attempts: int = 4, base_url: str | None = None) -> tuple[list[dict], ExchangeSource]:
    async def go():
        src = ExchangeSource(base_url or emu.base_url, TENANT, types, token=token, backoff_seconds=0.001, max_attempts=attempts)
        try:
            return await src.read_recipients(), src
        finally:
            await src.aclose()

    return asyncio.run(go())


def test_pages_by_posting_the_same_body_to_the_next_link(exo):
    got, src = read(exo)
    assert sorted(r["Guid"] for r in got) == [guid(i) for i in range(7)]  # the UserMailbox is not asked for
    posts = exo.posts()
    assert len(posts) == 3 == src.stats.requests == src.stats.pages  # 7 recipients, 3 a page
    assert all(p.method == "POST" for p in exo.request_log)
    assert posts[0].path == f"/adminapi/beta/{TENANT}/InvokeCommand"
    assert all("$skiptoken=" in p.path for p in posts[1:])
    assert {p.body for p in posts} == {invoke_body(TYPES)}
    body = json.loads(posts[0].body)
    assert body == {"CmdletInput": {"CmdletName": "Get-Recipient", "Parameters": {"ResultSize": "Unlimited", "RecipientTypeDetails": list(TYPES)}}}
    for p in posts:
        assert p.headers["prefer"] == "odata.maxpagesize=1000"
        assert p.headers["x-anchormailbox"] == ANCHOR
        assert p.headers["content-type"] == "application/json"
        assert "authorization" not in p.headers  # GRAPH_AUTH=none: no token


def test_keeps_only_the_properties_the_rules_read(exo):
    got, _ = read(exo)
    assert set(got[0]) == {"Guid", "RecipientTypeDetails", "PrimarySmtpAddress", "EmailAddresses", "DisplayName", "ExternalDirectoryObjectId"}


def test_bearer_token_for_the_exchange_scope_on_every_page():
    scopes = []

    async def token(scope: str):
        scopes.append(scope)
        return "exo-token-canary", 4102444800.0

    with ExchangeEmulator(people(5), tenant=TENANT, bearer="exo-token-canary", max_page_size=2) as emu:
        got, src = read(emu, token=token)
        assert len(got) == 5 and src.stats.pages == 3
        assert {p.headers["authorization"] for p in emu.posts()} == {"Bearer exo-token-canary"}
    assert scopes == [f"{emu.base_url}/.default"]  # fetched once, reused while valid


@pytest.mark.parametrize("kind,retry_after", [("429", "0"), ("429", None), ("503", "0"), ("503", None), ("throttle", None), ("malformed", None), ("drop", None)])
@pytest.mark.parametrize("on_page", [0, 1, 2])
def test_each_fault_on_any_page_is_retried_and_the_read_is_complete(exo, kind, retry_after, on_page):
    exo.fail(kind, retry_after=retry_after, on_page=on_page, times=2)
    got, src = read(exo)
    assert sorted(r["Guid"] for r in got) == [guid(i) for i in range(7)]
    assert src.stats.retries == 2 and src.stats.requests == 5


def test_other_5xx_is_retried(exo):
    exo.fail("503", status=502)
    exo.fail("503", status=500)
    got, src = read(exo)
    assert len(got) == 7 and src.stats.retries == 2


def test_retry_after_is_honoured(exo, monkeypatch):
    waits = []
    real_sleep = asyncio.sleep

    async def sleep(s):
        waits.append(s)
        await real_sleep(0)

    monkeypatch.setattr("shared.sources.exchange.asyncio.sleep", sleep)
    exo.fail("429", retry_after="7", on_page=1)
    exo.fail("throttle", retry_after="3", on_page=2)
    read(exo)
    assert waits == [7.0, 3.0]


@pytest.mark.parametrize("kind", ["429", "503", "throttle", "malformed", "drop"])
def test_a_page_that_keeps_failing_fails_the_read(exo, kind):
    exo.fail(kind, on_page=1, times=99, retry_after="0")
    with pytest.raises(ExchangeError) as e:
        read(exo, attempts=3)
    assert "nothing was sent" in str(e.value) and "after 3 attempts" in str(e.value)


def test_no_answer_at_all_names_exo_base_url_and_the_network(exo):
    """Nothing listens where EXO_BASE_URL points: the error says which setting to check, not only
    that a page could not be read; a throttled page does not (the setting is right)."""
    from tests.loopback import closed_port

    with pytest.raises(ExchangeError) as e:
        read(exo, attempts=2, base_url=f"http://127.0.0.1:{closed_port()}")
    assert "EXO_BASE_URL" in str(e.value) and "firewall" in str(e.value)
    exo.fail("429", on_page=1, times=99, retry_after="0")
    with pytest.raises(ExchangeError) as e:
        read(exo, attempts=2)
    assert "EXO_BASE_URL" not in str(e.value)


@pytest.mark.parametrize("status", [401, 403])
def test_auth_refusal_names_the_permission_the_role_and_exchanges_reason(exo, status):
    exo.fail(str(status), on_page=1)
    with pytest.raises(ExchangeAuthError) as e:
        read(exo)
    text = str(e.value)
    assert "Exchange.ManageAsApp" in text and "Global Reader" in text and "directory role" in text
    assert "propagate" in text and "403" in text
    assert "does not have the Exchange role assignments" in text  # x-ms-diagnostics
    assert len(exo.posts()) == 2  # never retried


def test_missing_bearer_is_a_401_with_diagnostics():
    with ExchangeEmulator(people(2), tenant=TENANT, bearer="right") as emu:
        with pytest.raises(ExchangeAuthError) as e:
            read(emu)
    assert "access token is missing or invalid" in str(e.value)


def test_a_refused_request_is_not_retried_and_says_what_exchange_said(exo):
    with pytest.raises(ExchangeError) as e:
        read(exo, types=("NoSuchType",))
    assert "HTTP 400" in str(e.value) and "NoSuchType" in str(e.value)
    assert len(exo.posts()) == 1


def test_a_next_link_to_another_host_is_never_followed():
    page = {"value": [recipient(guid(1), "PublicFolder", "a@contoso.com")], "@odata.nextLink": "https://evil.example/steal"}
    seen = []

    def handler(request: httpx.Request) -> httpx.Response:
        seen.append(str(request.url))
        return httpx.Response(200, json=page)

    async def go():
        async def token(scope):
            return "t", 4102444800.0

        src = ExchangeSource("https://outlook.office365.com", TENANT, TYPES, token=token, transport=httpx.MockTransport(handler))
        try:
            await src.read_recipients()
        finally:
            await src.aclose()

    with pytest.raises(ExchangeError, match="outside EXO_BASE_URL"):
        asyncio.run(go())
    assert seen == [f"https://outlook.office365.com/adminapi/beta/{TENANT}/InvokeCommand"]


def test_a_relative_next_link_is_resolved_against_the_page():
    pages = {f"/adminapi/beta/{TENANT}/InvokeCommand": {"value": [recipient(guid(1), "PublicFolder", "a@contoso.com")], "@odata.nextLink": "InvokeCommand?$skiptoken=2"},
             f"/adminapi/beta/{TENANT}/InvokeCommand?$skiptoken=2": {"value": [recipient(guid(2), "PublicFolder", "b@contoso.com")]}}
    seen = []

    def handler(request: httpx.Request) -> httpx.Response:
        target = request.url.raw_path.decode()
        seen.append((request.method, target, request.content))
        return httpx.Response(200, json=pages[target])

    async def go():
        src = ExchangeSource("https://outlook.office365.com", TENANT, TYPES, token=None, transport=httpx.MockTransport(handler))
        try:
            return await src.read_recipients()
        finally:
            await src.aclose()

    got = asyncio.run(go())
    assert [r["Guid"] for r in got] == [guid(1), guid(2)]
    assert [m for m, _, _ in seen] == ["POST", "POST"] and seen[0][2] == seen[1][2] == invoke_body(TYPES)


def test_one_request_in_flight():
    active = 0
    peak = 0

    async def handler(request: httpx.Request) -> httpx.Response:
        nonlocal active, peak
        active += 1
        peak = max(peak, active)
        await asyncio.sleep(0.01)
        active -= 1
        return httpx.Response(200, json={"value": []})

    async def go():
        src = ExchangeSource("http://127.0.0.1:1", TENANT, TYPES, token=None, transport=httpx.MockTransport(handler))
        try:
            await asyncio.gather(*(src.read_recipients() for _ in range(4)))
        finally:
            await src.aclose()

    asyncio.run(go())
    assert peak == 1


# --- the emulator's own protocol checks (what the harness's emulator may also refuse) -------
def test_emulator_refuses_a_get_on_a_next_link_and_a_changed_body(exo):
    headers = {"X-AnchorMailbox": ANCHOR, "Prefer": "odata.maxpagesize=1000", "Content-Type": "application/json"}
    first = httpx.post(f"{exo.base_url}/adminapi/beta/{TENANT}/InvokeCommand", content=invoke_body(TYPES), headers=headers)
    link = first.json()["@odata.nextLink"]
    assert httpx.get(link, headers=headers).status_code == 400
    assert httpx.post(link, content=invoke_body(("PublicFolder",)), headers=headers).status_code == 400
    assert httpx.post(link, content=invoke_body(TYPES), headers={**headers, "X-AnchorMailbox": "APP:someone@else"}).status_code == 400
    assert httpx.post(link, content=invoke_body(TYPES), headers=headers).status_code == 200
    bad = link.replace("$skiptoken=", "$skiptoken=x")
    assert httpx.post(bad, content=invoke_body(TYPES), headers=headers).status_code == 400


def test_emulator_listing_is_a_snapshot(exo):
    headers = {"X-AnchorMailbox": ANCHOR}
    first = httpx.post(f"{exo.base_url}/adminapi/beta/{TENANT}/InvokeCommand", content=invoke_body(TYPES), headers=headers).json()
    exo.delete(guid(6))
    exo.upsert(recipient(guid(50), "PublicFolder", "late@contoso.com"))
    rest = []
    link = first.get("@odata.nextLink")
    while link:
        page = httpx.post(link, content=invoke_body(TYPES), headers=headers).json()
        rest += page["value"]
        link = page.get("@odata.nextLink")
    assert sorted(r["Guid"] for r in first["value"] + rest) == [guid(i) for i in range(7)]
    got, _ = read(exo)
    assert guid(50) in {r["Guid"] for r in got} and guid(6) not in {r["Guid"] for r in got}


def test_emulator_serves_only_its_tenant(exo):
    other = "99999999-2222-3333-4444-555555555555"
    r = httpx.post(f"{exo.base_url}/adminapi/beta/{other}/InvokeCommand", content=invoke_body(TYPES),
                   headers={"X-AnchorMailbox": ANCHOR.replace(TENANT, other)})
    assert r.status_code == 404


def test_emulator_standalone_prints_ready():
    import subprocess
    import sys

    from tests.stack import ROOT

    proc = subprocess.Popen([sys.executable, "-m", "devstack.exchange_emulator", "--tenant", TENANT], cwd=ROOT,
                            stdout=subprocess.PIPE, text=True)
    try:
        line = proc.stdout.readline().strip()
        assert line.startswith("READY http://127.0.0.1:")
        base = line.split()[1]
        page = httpx.post(f"{base}/adminapi/beta/{TENANT}/InvokeCommand", content=invoke_body(TYPES), headers={"X-AnchorMailbox": ANCHOR}).json()
        kinds = {r["RecipientTypeDetails"] for r in page["value"]}
        assert kinds == set(TYPES)
    finally:
        proc.terminate()
        proc.wait(timeout=10)


# --- the credential: the same app as Graph, the Exchange scope and the cloud's authority ---------
@pytest.mark.parametrize("base,authority", [("https://outlook.office365.com", "login.microsoftonline.com"),
                                            ("https://outlook.office365.us", "login.microsoftonline.us"),
                                            ("https://outlook-dod.office365.us", "login.microsoftonline.us"),
                                            ("https://partner.outlook.cn", "login.chinacloudapi.cn")])
def test_exchange_credential_is_the_graph_app_at_the_clouds_authority(base, authority):
    from azure.identity import ClientSecretCredential

    from shared.common.redact import Secret
    from shared.config import credentials
    from shared.config.settings import load_settings

    env = {"GRAPH_TENANT_ID": TENANT, "GRAPH_CLIENT_ID": "66666666-7777-8888-9999-000000000000", "GRAPH_CLIENT_SECRET": "s-canary",
           "SYNC_API_URL": "https://dirsync.example.net/v1", "SYNC_API_CREDENTIAL": "u:p", "SYNC_STATE": "file:/tmp/x",
           "EXO_MODE": "augment", "EXO_BASE_URL": base}
    s = load_settings(env)
    cred = credentials.exchange_token_credential(s, Secret("s-canary", "GRAPH_CLIENT_SECRET"))
    assert isinstance(cred, ClientSecretCredential) and cred._client_id == env["GRAPH_CLIENT_ID"]
    assert credentials.authority_for(base) == authority
    assert s.exo.scope == f"{base}/.default"


def test_a_credential_is_asked_for_the_exchange_scope():
    from types import SimpleNamespace

    from shared.sources.exchange import token_getter_for

    asked = []

    class Cred:
        def get_token(self, *scopes):
            asked.append(scopes)
            return SimpleNamespace(token="tok-canary", expires_on=4102444800)

    with ExchangeEmulator(people(3), tenant=TENANT, bearer="tok-canary") as emu:
        got, _ = read(emu, token=token_getter_for(Cred()))
    assert len(got) == 3 and asked == [(f"{emu.base_url}/.default",)]
    assert token_getter_for(None) is None


def test_both_sources_implement_the_source_interface():
    """Graph and Exchange Online answer the reading stage's interface (shared/sources/base.py)."""
    from shared.sources.base import DirectorySource
    from shared.sources.exchange import ExchangeSource
    from shared.sources.graph import GraphSource

    for cls, delta in ((GraphSource, True), (ExchangeSource, False)):
        for member in DirectorySource.__annotations__:
            assert hasattr(cls, member), f"{cls.__name__} lacks {member}"
        assert callable(cls.read) and callable(cls.aclose)
        assert cls.delta is delta
    assert ExchangeSource.collections == ("recipients",)
    assert GraphSource.collections == ("users", "groups", "contacts")


@pytest.mark.parametrize("details,rtype", [
    ("UserMailbox", "UserMailbox"), ("SharedMailbox", "UserMailbox"), ("RoomMailbox", "UserMailbox"), ("EquipmentMailbox", "UserMailbox"),
    ("MailUser", "MailUser"), ("GuestMailUser", "MailUser"), ("MailContact", "MailContact"),
    ("MailUniversalDistributionGroup", "MailUniversalDistributionGroup"), ("MailUniversalSecurityGroup", "MailUniversalSecurityGroup"),
    ("MailNonUniversalGroup", "MailNonUniversalGroup"), ("RoomList", "MailUniversalDistributionGroup"),
    ("GroupMailbox", "MailUniversalDistributionGroup"), ("DynamicDistributionGroup", "DynamicDistributionGroup"), ("PublicFolder", "PublicFolder"),
])
def test_emulator_recipient_type_is_the_one_exchange_reports_for_its_details(details, rtype):
    """Get-Recipient's RecipientType is the coarse class of RecipientTypeDetails (a shared or room
    mailbox is a UserMailbox, a Microsoft 365 group or room list a MailUniversalDistributionGroup),
    as Exchange Online reports it; the emulator served MailUser for every mailbox and group."""
    with ExchangeEmulator([recipient(guid(1), details, "a@contoso.com")], tenant=TENANT) as emu:
        got = httpx.post(f"{emu.base_url}/adminapi/beta/{TENANT}/InvokeCommand", content=invoke_body((details,)),
                         headers={"X-AnchorMailbox": ANCHOR}).json()["value"]
    assert [(r["RecipientTypeDetails"], r["RecipientType"]) for r in got] == [(details, rtype)]


@pytest.mark.parametrize("status", [400, 401, 403, 404])
def test_an_answer_echoing_the_access_token_leaks_it_into_no_message(status):
    """A broken or hostile endpoint (or a proxy in front of it) that echoes the Authorization
    header in its error body or x-ms-diagnostics: the access token, a secret like the client
    secret it came from, appears in no error message (the run's stderr line and summary)."""
    token_value = "eyJ0eXAiOiJKV1QifQ.exo-access-token-canary.c2lnbmF0dXJl"

    def handler(request: httpx.Request) -> httpx.Response:
        echo = request.headers["authorization"]
        return httpx.Response(status, json={"error": {"code": "BadRequest", "message": f"rejected {echo}"}},
                              headers={"x-ms-diagnostics": f'2000001;reason="bad token {echo}";error_category="invalid_token"'})

    async def go():
        async def token(scope):
            return token_value, 4102444800.0

        src = ExchangeSource("https://outlook.office365.com", TENANT, TYPES, token=token, transport=httpx.MockTransport(handler))
        try:
            await src.read_recipients()
        finally:
            await src.aclose()

    with pytest.raises(ExchangeError) as e:
        asyncio.run(go())
    assert "exo-access-token-canary" not in str(e.value) and f"HTTP {status}" in str(e.value)


def _bomb(inflated: int) -> bytes:
    """A valid, empty Get-Recipient page padded with blanks to ``inflated`` bytes, gzipped (a few KB)."""
    import gzip
    import io

    out = io.BytesIO()
    with gzip.GzipFile(fileobj=out, mode="wb") as gz:
        gz.write(b'{"value": [')
        blanks = b" " * (1 << 20)
        for _ in range(inflated >> 20):
            gz.write(blanks)
        gz.write(b"]}")
    return out.getvalue()


@pytest.mark.parametrize("encoding", ["gzip", "identity"])
def test_an_answer_larger_than_the_page_cap_fails_the_read_at_once(encoding):
    """A page (or a proxy's answer) that is, or inflates to, more than MAX_PAGE_BYTES is refused
    as it streams in, without a retry, as Graph's is: the read fails naming the cap instead of
    holding the whole answer in memory (a gzip bomb of a few KB would take gigabytes)."""
    from shared.sources.exchange import MAX_PAGE_BYTES

    size = MAX_PAGE_BYTES + (2 << 20)
    body = _bomb(size) if encoding == "gzip" else b'{"value": [' + b" " * size + b"]}"
    calls = []

    def handler(request: httpx.Request) -> httpx.Response:
        calls.append(request.url)
        headers = {"Content-Type": "application/json", **({"Content-Encoding": "gzip"} if encoding == "gzip" else {})}
        return httpx.Response(200, content=body, headers=headers)

    async def go():
        src = ExchangeSource("https://outlook.office365.com", TENANT, TYPES, token=None, backoff_seconds=0, transport=httpx.MockTransport(handler))
        try:
            return await src.read_recipients()
        finally:
            await src.aclose()

    with pytest.raises(ExchangeError) as e:
        asyncio.run(go())
    assert f"more than {MAX_PAGE_BYTES} bytes" in str(e.value) and "nothing was sent" in str(e.value)
    assert len(calls) == 1  # hostile, not transient: not asked again


def test_a_deeply_nested_answer_is_a_malformed_page_not_a_crash():
    """JSON nested deeper than the parser goes (an error body or a page): a malformed answer,
    retried and then failing with what it was, not a RecursionError taken for a sign-in failure."""
    nested = b"[" * 200_000 + b"]" * 200_000

    def handler(request: httpx.Request) -> httpx.Response:
        return httpx.Response(200, content=nested)

    async def go():
        src = ExchangeSource("https://outlook.office365.com", TENANT, TYPES, token=None, backoff_seconds=0, max_attempts=2,
                             transport=httpx.MockTransport(handler))
        try:
            return await src.read_recipients()
        finally:
            await src.aclose()

    with pytest.raises(ExchangeError, match="malformed page"):
        asyncio.run(go())


_FAULTS = ["ok", "429", "429ra0", "429date", "429junk", "503", "503ra", "500", "502", "504", "drop", "cut", "timeout", "malformed", "html", "busy400"]


@settings(max_examples=300, deadline=None, suppress_health_check=list(HealthCheck))
@given(st.lists(st.integers(0, 3), min_size=1, max_size=4), st.lists(st.sampled_from(_FAULTS), max_size=20),
       st.sampled_from(["absolute", "relative", "port443", "HOST", "escaped"]))
def test_any_faults_and_link_spellings_give_the_whole_listing_or_a_failed_read(page_sizes, faults, spelling):
    """Over any sequence of answers (throttling with and without Retry-After in any form, 5xx,
    dropped or cut connections, timeouts, malformed pages) and any spelling of the nextLink on
    the same origin: the read returns every recipient of every page in order when no page met
    ``max_attempts`` failures in a row, else raises ExchangeError (never a partial listing,
    never another exception); every request is a POST of the same body with the token."""
    max_attempts = 4
    pages = [[recipient(f"e0000000-0000-4000-8000-{p:06d}{i:06d}", "PublicFolder", f"a{p}-{i}@contoso.com") for i in range(n)]
             for p, n in enumerate(page_sizes)]
    queue, log = list(faults), []

    def link(n: int) -> str:
        root, query = f"/adminapi/beta/{TENANT}/InvokeCommand", f"$skiptoken={n}"
        return {"absolute": f"https://outlook.office365.com{root}?{query}", "relative": f"InvokeCommand?{query}",
                "port443": f"https://outlook.office365.com:443{root}?{query}", "HOST": f"https://OUTLOOK.Office365.com{root}?{query}",
                "escaped": f"https://outlook.office365.com{root}?%24skiptoken={n}"}[spelling]

    def handler(request: httpx.Request) -> httpx.Response:
        log.append((request.method, request.content, request.headers.get("authorization")))
        fault = queue.pop(0) if queue else "ok"
        if fault in ("drop", "cut", "timeout"):
            raise {"drop": httpx.ReadError, "cut": httpx.RemoteProtocolError, "timeout": httpx.ReadTimeout}[fault]("x", request=request)
        if fault.startswith("429"):
            after = {"429ra0": "0", "429date": "Wed, 21 Oct 2015 07:28:00 GMT", "429junk": "soon"}.get(fault)
            return httpx.Response(429, headers={"Retry-After": after} if after else {}, json={"error": {"code": "TooManyRequests"}})
        if fault[0] == "5":
            return httpx.Response(int(fault[:3]), headers={"Retry-After": "0"} if fault == "503ra" else {})
        if fault in ("malformed", "html"):
            return httpx.Response(200, content=b'{"value": [{' if fault == "malformed" else b"<html>")
        if fault == "busy400":
            return httpx.Response(400, json={"error": {"message": "the tenant has exceeded the maximum number of concurrent requests"}})
        n = int(request.url.params.get("$skiptoken") or 0)
        doc = {"value": pages[n], **({"@odata.nextLink": link(n + 1)} if n + 1 < len(pages) else {})}
        return httpx.Response(200, json=doc)

    left, complete = list(faults), True  # the oracle: a page fails after max_attempts failures in a row
    for _ in pages:
        failed = 0
        while left and left[0] != "ok" and failed < max_attempts:
            left.pop(0)
            failed += 1
        if failed == max_attempts:
            complete = False
            break
        if left:
            left.pop(0)

    async def token(scope):
        return "exo-token", 4102444800.0

    async def go():
        src = ExchangeSource("https://outlook.office365.com", TENANT, TYPES, token=token, backoff_seconds=0, max_attempts=max_attempts,
                             transport=httpx.MockTransport(handler))
        try:
            return await src.read_recipients(), src
        finally:
            await src.aclose()

    import shared.sources.exchange as exchange

    real_sleep = exchange.asyncio.sleep
    exchange.asyncio.sleep = lambda s: real_sleep(0)  # Retry-After and backoff, without the wait
    try:
        if complete:
            got, src = asyncio.run(go())
            assert [r["Guid"] for r in got] == [r["Guid"] for page in pages for r in page] and src.stats.requests == len(log)
        else:
            with pytest.raises(ExchangeError):
                asyncio.run(go())
    finally:
        exchange.asyncio.sleep = real_sleep
    assert all(m == "POST" and body == invoke_body(TYPES) and auth == "Bearer exo-token" for m, body, auth in log)
