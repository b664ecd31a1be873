"""Exchange recipients under the Graph candidate rules, over generated shapes (hypothesis):

* a recipient's kept addresses and exclusions are exactly those of a Graph object whose
  ``mail`` is its PrimarySmtpAddress and whose ``proxyAddresses`` are its EmailAddresses;
* the directory cache, fed any sequence of complete Exchange reads (recipients appearing,
  changing, disappearing), ends where a fresh full read of the last one starts, and every
  address whose holding changed between two reads is among the affected keys (so a delta run
  deletes a vanished recipient's addresses);
* a recipient listed more than once in a read (its Guid in any letter case) is its last entry."""

from __future__ import annotations

import json

from hypothesis import given, settings
from hypothesis import strategies as st

from devstack.exchange_emulator import recipient
from shared.model.directory import Affected, Cache, Round, scratch_cache
from shared.model.projection import candidates

PROVISIONED = frozenset({"contoso.com", "fabrikam.com", "xn--bcher-kva.example"})
PREFIXES = ["SMTP:", "smtp:", "Smtp:", "X500:", "SIP:", "sip:", "EUM:", "SPO:", "x400:", " smtp:", "smtp: ", ""]
LOCALS = ["a", "Al.Ice", "bad..dot", '"q"', "ü", "x y", "", "sales-team", "b"]
DOMAINS = ["contoso.com", "Contoso.COM", "bücher.example", "BÜCHER.example", "elsewhere.org", " fabrikam.com", "fabrikam.com ", "xn--bcher-kva.example", "-bad.com"]
TYPES = ["DynamicDistributionGroup", "PublicFolder", "UserMailbox", "MailContact"]

address = st.builds(lambda pre, local, dom, pad: f"{pad}{pre}{local}@{dom}{pad}", st.sampled_from(PREFIXES), st.sampled_from(LOCALS),
                    st.sampled_from(DOMAINS), st.sampled_from(["", " ", "\t"]))
primary = st.builds(lambda local, dom: f"{local}@{dom}", st.sampled_from(LOCALS), st.sampled_from(DOMAINS)) | st.just("")


@st.composite
def recipients(draw):
    n = draw(st.integers(0, 7))  # few Guids: listings repeat, change and drop recipients
    return recipient(f"e0000000-0000-4000-8000-{n:012d}", draw(st.sampled_from(TYPES)), draw(primary),
                     emails=draw(st.lists(address, max_size=5)))


def kept_of(cache: Cache) -> set[str]:
    return {a for (a,) in cache.conn.execute("SELECT DISTINCT address FROM kept")}


def full_read(listing: list[dict]) -> Cache:
    """A full read of one Exchange listing: applied to an empty cache."""
    cache = scratch_cache(PROVISIONED)
    cache.apply_recipients(listing, None)
    return cache


@settings(max_examples=300, deadline=None)
@given(recipients())
def test_exchange_candidates_are_graph_candidates(rec):
    proj = full_read([rec]).projection()
    graph_shaped = candidates("g", "user", {"mail": rec["PrimarySmtpAddress"], "proxyAddresses": rec["EmailAddresses"]}, PROVISIONED)
    assert set(proj.datasets["addresses"]) == set(graph_shaped.kept)
    assert sorted((e.value, e.reason) for e in proj.exclusions) == sorted((e.value, e.reason) for e in graph_shaped.exclusions)
    assert all(e.source == "Exchange Online" and e.object_type == rec["RecipientTypeDetails"] for e in proj.exclusions)
    assert proj.datasets["groups"] == {} and proj.datasets["users"] == {}


@settings(max_examples=150, deadline=None)
@given(st.lists(st.lists(recipients(), max_size=6), min_size=1, max_size=5))
def test_cache_follows_any_sequence_of_complete_reads(reads):
    cache = scratch_cache(PROVISIONED)
    cache.apply_round(Round(), None)  # no longer empty: recipients now take the incremental path
    before: set[str] = set()
    for listing in reads:
        affected = Affected()
        cache.apply_recipients(listing, affected)
        after = kept_of(cache)
        assert before ^ after <= affected.addresses
        before = after
        full = full_read(listing).projection()
        assert after == set(full.datasets["addresses"])
        want = cache.desired("addresses", sorted(before | affected.addresses))
        assert {a for a, v in want.items() if v is not None} == after
        assert cache.excluded()["addresses"] == full.excluded("addresses")
        assert sorted(json.dumps(e.as_dict()) for e in cache.exclusions()) == sorted(json.dumps(e.as_dict()) for e in full.exclusions)


def last_of_each(listing: list[dict]) -> list[dict]:
    """A listing with each recipient once: its last entry (its Guid compared in any letter case)."""
    last: dict[str, dict] = {}
    for rec in listing:
        key = rec["Guid"].lower()
        last.pop(key, None)
        last[key] = rec
    return list(last.values())


@settings(max_examples=200, deadline=None)
@given(st.lists(st.tuples(recipients(), st.booleans()), max_size=8), st.lists(recipients(), max_size=4))
def test_a_recipient_listed_twice_is_its_last_entry(listing, before):
    """A listing that names a recipient more than once (any Guid letter case) says what its last
    entry says, as Graph's entries do within a round (docs/sync-rules.md, "Every round is a
    delta round, and entries are applied in arrival order"): the cache, whether empty or
    holding an earlier read, ends as with that entry alone."""
    listing = [{**rec, "Guid": rec["Guid"].upper()} if upper else rec for rec, upper in listing]
    for start in ([], before):
        twice, once = scratch_cache(PROVISIONED), scratch_cache(PROVISIONED)
        for cache in (twice, once):
            cache.apply_round(Round(), None)
            cache.apply_recipients(start, None)
        twice.apply_recipients(listing, Affected())
        once.apply_recipients(last_of_each(listing), Affected())
        assert kept_of(twice) == kept_of(once)
        assert sorted(json.dumps(e.as_dict()) for e in twice.exclusions()) == sorted(json.dumps(e.as_dict()) for e in once.exclusions())
