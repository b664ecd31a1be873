"""Exchange Online recipients with missing, null or odd-typed fields.

docs/sync-rules.md: a recipient's candidate addresses are its PrimarySmtpAddress and the
``smtp:`` values of EmailAddresses, "kept by exactly the rules for Graph candidates", and an
invalid value "is skipped with a warning that names the object id. It never fails the run." A
Graph object whose ``proxyAddresses`` is not a list offers no proxy candidate; so a recipient
whose EmailAddresses (or PrimarySmtpAddress, DisplayName, RecipientTypeDetails,
ExternalDirectoryObjectId) is of an odd type offers what it can, with a warning naming its
Guid, and the run goes on: one odd recipient must not stop every address of the tenant from
being registered. Only a recipient without a Guid (nothing to know it by from one run to the
next) leaves the page unreadable."""

from __future__ import annotations

import asyncio
import logging

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from devstack.exchange_emulator import ExchangeEmulator, recipient
from shared.common.errors import ExchangeError
from shared.model.directory import scratch_cache
from shared.sources.exchange import ExchangeSource
from tests.stack import EXPECTED, base_env, run_cli, service_view

TENANT = "11111111-2222-3333-4444-555555555555"
TYPES = ("DynamicDistributionGroup", "PublicFolder")
PROVISIONED = frozenset({"contoso.com", "fabrikam.com"})


def X(n: int) -> str:
    return f"e0dd0dd0-0000-4000-8000-{n:012d}"


def odd_recipients() -> list[dict]:
    return [
        {**recipient(X(1), "PublicFolder", "pf@contoso.com"), "EmailAddresses": "SMTP:pf@contoso.com"},  # a string, not a list
        {**recipient(X(2), "DynamicDistributionGroup", "ddg@contoso.com"), "EmailAddresses": {"smtp": "x@contoso.com"}},
        {**recipient(X(3), "PublicFolder", ""), "PrimarySmtpAddress": 42, "EmailAddresses": [None, 7, "smtp:alias@fabrikam.com", ["smtp:n@contoso.com"]]},
        {**recipient(X(4), "DynamicDistributionGroup", "plain@contoso.com"), "DisplayName": None, "ExternalDirectoryObjectId": 12},
    ]


@pytest.fixture
def stack(nasty_graph, receiver, tmp_path):
    exo = ExchangeEmulator(odd_recipients(), tenant=TENANT, max_page_size=2)
    exo.start()
    env = {**base_env(nasty_graph.base_url, receiver.base_url, f"file:{tmp_path / 'state'}"),
           "GRAPH_TENANT_ID": TENANT, "EXO_MODE": "augment", "EXO_BASE_URL": exo.base_url}
    yield env, exo
    exo.stop()


def test_odd_typed_fields_register_what_they_can_and_warn_naming_the_guid(stack, receiver):
    env, exo = stack
    r = run_cli("update", env, "--json")
    assert r.code == 0, r.stderr
    assert service_view(receiver)["addresses"] == EXPECTED["addresses"] | {"pf@contoso.com", "ddg@contoso.com", "alias@fabrikam.com", "plain@contoso.com"}
    assert r.summary["exoRequests"] == 2  # two pages, each read once: nothing was retried
    warned = [line for line in r.stderr.splitlines() if "EmailAddresses" in line]
    assert any(X(1) in line for line in warned) and any(X(2) in line for line in warned), r.stderr
    again = run_cli("update", env, "--json")  # the same listing: nothing changes
    assert again.code == 0 and all(v["added"] == v["removed"] == 0 for v in again.summary["datasets"].values())


def read(emu: ExchangeEmulator) -> list[dict]:
    async def go():
        src = ExchangeSource(emu.base_url, TENANT, TYPES, token=None, backoff_seconds=0.001, max_attempts=2)
        try:
            return await src.read_recipients()
        finally:
            await src.aclose()

    return asyncio.run(go())


ODD = st.one_of(st.none(), st.integers(), st.booleans(), st.floats(allow_nan=False), st.text(max_size=8),
                st.lists(st.none() | st.integers() | st.sampled_from(["SMTP:a@contoso.com", "smtp:b@fabrikam.com", "X500:/o=x"]), max_size=3),
                st.dictionaries(st.sampled_from(["smtp", "a"]), st.sampled_from(["smtp:c@contoso.com", "1"]), max_size=2))
FIELDS = ("PrimarySmtpAddress", "EmailAddresses", "DisplayName", "ExternalDirectoryObjectId")


@settings(max_examples=40, deadline=None, derandomize=True, database=None, suppress_health_check=list(HealthCheck))
@given(st.lists(st.fixed_dictionaries({}, optional={f: ODD for f in FIELDS}), min_size=1, max_size=4))
def test_any_odd_field_values_are_read_and_kept_as_graph_values_would_be(fields):
    """Any JSON value in any of the fields the rules read (or none at all): the listing is read
    whole, on the first attempt, and each recipient keeps exactly the candidates a Graph object
    with ``mail`` = PrimarySmtpAddress and ``proxyAddresses`` = EmailAddresses would keep."""
    listing = []
    for n, extra in enumerate(fields):
        rec = {k: v for k, v in recipient(X(n), TYPES[n % 2], "").items() if k not in FIELDS}
        listing.append({**rec, **extra})
    with ExchangeEmulator(listing, tenant=TENANT, max_page_size=3) as emu:
        got = read(emu)
        assert len(emu.posts()) == -(-len(listing) // 3)  # no page was retried
    assert sorted(r["Guid"] for r in got) == sorted(r["Guid"] for r in listing)
    cache = scratch_cache(PROVISIONED)
    cache.apply_recipients(got, None)
    want: set[str] = set()
    for rec in listing:
        values = [rec.get("PrimarySmtpAddress")]
        if isinstance(rec.get("EmailAddresses"), list):
            values += [v[5:] for v in rec["EmailAddresses"] if isinstance(v, str) and v[:5].lower() == "smtp:"]
        want |= {v.strip().lower() for v in values if isinstance(v, str) and v.strip().lower().split("@")[-1] in PROVISIONED}
    assert set(cache.records("addresses")) == want


@pytest.mark.parametrize("guid", [None, "", "  ", 7, ["e0"]])
def test_a_recipient_without_a_guid_leaves_the_page_unreadable(guid, caplog):
    """A recipient with no Guid cannot be told from one run to the next (a vanished one's
    addresses could never be deleted): the read fails and nothing is sent."""
    bad = {**recipient(X(9), "PublicFolder", "pf@contoso.com"), "Guid": guid}
    with ExchangeEmulator([recipient(X(1), "PublicFolder", "ok@contoso.com")], tenant=TENANT) as emu:
        emu.upsert(bad)
        with caplog.at_level(logging.WARNING), pytest.raises(ExchangeError) as e:
            read(emu)
    assert "without a Guid" in str(e.value) and "nothing was sent" in str(e.value)


# (RecipientTypeDetails too, but Exchange lists only the recipients of the types asked for: an odd one never comes.)
@pytest.mark.parametrize("field", ["PrimarySmtpAddress", "EmailAddresses", "ExternalDirectoryObjectId"])
@pytest.mark.parametrize("value", [7, 1.5, True, {"password": "S3cr3t-v4lue"}, ["S3cr3t-v4lue"]])
def test_each_odd_field_the_rules_read_is_warned_with_the_guid_and_never_its_value(field, value, caplog):
    """Every field the rules read (ExternalDirectoryObjectId decides which Entra object's
    verdict a recipient follows under the scope and user-type rules) is warned about when odd,
    naming the Guid and the field; the value itself never reaches the log (it may be anything)."""
    if field == "EmailAddresses" and isinstance(value, list):
        value = "S3cr3t-v4lue"  # a list is what EmailAddresses should be
    odd = {**recipient(X(5), "PublicFolder", "pf@contoso.com"), "Guid": X(5) + "\x1b[31m", field: value}
    with ExchangeEmulator([odd], tenant=TENANT) as emu, caplog.at_level(logging.WARNING):
        got = read(emu)
    assert [r["Guid"] for r in got] == [odd["Guid"]]
    warned = [r.getMessage() for r in caplog.records if field in r.getMessage()]
    assert len(warned) == 1 and X(5) in warned[0], [r.getMessage() for r in caplog.records]
    assert "S3cr3t" not in caplog.text and "\x1b" not in caplog.text
