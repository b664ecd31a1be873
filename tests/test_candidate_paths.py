"""The load's fast paths give exactly what the slow paths give (docs/sync-rules.md,
"Candidate addresses"), over generated values (hypothesis): ``split_address`` (the compiled
path for plain ASCII, with the domain it returns) against ``normalize_address_fully`` and
``domain_of``, on values with non-ASCII, uppercase, whitespace, odd dots, IDN labels and lone
surrogates; and ``tally`` (the count-only candidates a full read's load uses) against
``candidates`` (the ``Exclusion``s a report lists) and against the candidate rules as they were
before the count-only path (``tests/load_reference.py``)."""

from __future__ import annotations

from itertools import product
from typing import Any

from hypothesis import given
from hypothesis import strategies as st

from shared.model import addresses
from shared.model.addresses import SMTP_PREFIXES, InvalidAddress, check_domain, domain_of, normalize_address_fully, split_address
from shared.model.fold import KIND_OF, Net, Round, _fold_members, compact, member_kind
from shared.model.projection import GROUP_TYPE, USER_TYPE, _sift, candidates, tally
from shared.model.rules import NO_RULES, Rules, parse_rules
from tests.load_reference import reference_candidates
from tests.test_properties import address_like, candidate, display_name, mail, prefix, props, proxies

PROVISIONED = frozenset({"contoso.com", "fabrikam.com", "xn--bcher-kva.example"})
RULES = [NO_RULES, parse_rules(None, None, r"noreply@.*,.*@fabrikam\.com,[a-c].*")]
odd = st.sampled_from([
    "a..b@contoso.com", ".a@contoso.com", "a.@contoso.com", "a@contoso..com", "a@.contoso.com", "a@contoso.com.", "a@contoso.com..",
    "A.B@CONTOSO.COM", " a@contoso.com\t", "a @contoso.com", "a@ contoso.com", "k@BÜCHER.example", "k@xn--bcher-kva.example",
    "k@XN--BCHER-KVA.EXAMPLE", "\u212a@contoso.com", "İ@contoso.com", "a@contoso.c\u00f6m", "a\ud800@contoso.com", "a@contoso.com\ud800",
    "a@" + "b" * 63 + ".com", "a@" + "b" * 64 + ".com", "a" * 64 + "@contoso.com", "a" * 65 + "@contoso.com", "a@xn--.com", "a@123.45",
])
value = st.one_of(candidate, odd, address_like.map(str.upper), st.builds(str.__add__, prefix, candidate),
                  st.text(st.sampled_from("aZ0.-_@ \t+é\u212aİ\ud800K"), max_size=40))


def _slow(v: str) -> tuple[str, Any]:
    try:
        address = normalize_address_fully(v)
    except InvalidAddress as exc:
        return "invalid", str(exc)
    return "ok", (address, domain_of(address))


def _fast(v: str) -> tuple[str, Any]:
    try:
        return "ok", split_address(v)
    except InvalidAddress as exc:
        return "invalid", str(exc)


@props(3000)
@given(value)
def test_split_address_equals_the_full_normalization_and_its_domain(v: str) -> None:
    assert _fast(v) == _slow(v)


@props(1500)
@given(st.fixed_dictionaries({}, optional={"mail": st.one_of(value, mail), "proxyAddresses": st.one_of(
    st.lists(st.one_of(st.builds(str.__add__, prefix, value), st.builds(str.__add__, st.just("SMTP:"), odd)), max_size=5), proxies)}),
       st.sampled_from(RULES))
def test_the_count_only_candidates_equal_the_listed_ones(obj: dict[str, Any], rules: Rules) -> None:
    listed = candidates("o1", "user", obj, PROVISIONED, rules, warn=False)
    counted = tally(obj, PROVISIONED, rules)
    assert (counted.kept, counted.primary, counted.excluded) == (listed.kept, listed.primary, len(listed.exclusions))
    assert [f"invalid address: {exc}" for _, exc in counted.invalid] == [e.reason for e in listed.exclusions if e.reason.startswith("invalid address: ")]
    kept, primary, excluded, values = reference_candidates(obj, PROVISIONED, rules)
    assert (counted.kept, counted.primary, counted.excluded) == (kept, primary, excluded)
    assert [v for v, _ in counted.invalid] == values


def test_the_smtp_prefix_set_is_the_lowercase_comparison_for_every_code_point() -> None:
    """``p[:5] in SMTP_PREFIXES`` (fold, candidates) stands for ``p[:5].lower() == "smtp:"``:
    no code point other than the ASCII letters of "smtp" in either case lowercases to one of
    them, and a blank ``mail`` (``strip()`` leaves nothing) is exactly one that ``isspace()``
    calls whitespace, for every code point (the space is small: all of Unicode)."""
    targets = set("smtp:")
    assert [hex(i) for i in range(0x110000) if targets & set(chr(i).lower()) and chr(i) not in "smtpSMTP:"] == []
    assert all((chr(i).strip() == "") == chr(i).isspace() for i in range(0x110000))
    assert SMTP_PREFIXES == {p for p in SMTP_PREFIXES if p.lower() == "smtp:"} and len(SMTP_PREFIXES) == 16


def test_split_address_equals_the_full_normalization_on_every_short_nasty_string() -> None:
    """Exhaustively: every string of up to 5 characters over a nasty alphabet (dots, "@",
    hyphen, blank, the Kelvin sign that lowercases to ASCII), and every local part of up to 4
    over another before a set of good and bad domains, with the length limits' edges."""
    values = ["".join(t) for n in range(6) for t in product("a.@-_K\u212a ", repeat=n)]
    domains = ["contoso.com", "a.b", "-a.com", "a-.com", "a..com", ".a.com", "a.com.", "a.123", "1.com", "xn--bcher-kva.example",
               "xn--a.com", "a_b.com", "A.COM", "c\u00f6.com", "a", "a@b.com", " a.com", "a.com "]
    values += [f"{''.join(t)}@{d}" for n in range(5) for t in product("a.+-\u00e9", repeat=n) for d in domains]
    for local, label in [(63, 57), (64, 57), (65, 57), (64, 58), (63, 58), (64, 56)]:  # 64 + "@" + 63.63.57.com is 254 octets
        domain = ".".join(["b" * 63, "c" * 63, "d" * label, "com"])
        values += [f"{'a' * local}@{domain}", f"{'a' * (local - 2)}.x@{domain}"]
    for v in values:
        assert _fast(v) == _slow(v), v


def test_split_address_equals_the_full_normalization_when_the_domain_cache_is_full(monkeypatch: Any) -> None:
    """check_domain's cache (``_GOOD_DOMAINS``, also read by split_address's fast path) at a bound
    of 3: a fourth good domain empties it first, a domain emptied out is checked again and still
    passes, a bad domain never enters it and fails every time, by either path."""
    monkeypatch.setattr(addresses, "_GOOD_DOMAINS", set())
    monkeypatch.setattr(addresses, "_GOOD_DOMAINS_MAX", 3)
    good = [f"d{i}.com" for i in range(7)]
    bad = ["a..com", "-a.com", "a.123", "xn--a.com"]
    for turn in range(3):
        for d in good + bad:
            for v in (f"a@{d}", f"A.B@{d.upper()}", f"a@{d}\t"):
                assert _fast(v) == _slow(v), v
                assert len(addresses._GOOD_DOMAINS) <= 3 and not addresses._GOOD_DOMAINS & set(bad)
            if d in bad:
                try:
                    check_domain(d)
                    raise AssertionError(d)
                except InvalidAddress:
                    pass
        if turn == 0:
            assert addresses._GOOD_DOMAINS == {"d6.com"}  # d3 and d6 each found it full
    assert addresses._GOOD_DOMAINS == {"d4.com", "d5.com", "d6.com"}
    check_domain("d6.com")  # a hit leaves it as it is
    assert addresses._GOOD_DOMAINS == {"d4.com", "d5.com", "d6.com"}
    check_domain("d0.com")
    assert addresses._GOOD_DOMAINS == {"d0.com"}


# Every code point str.strip removes (the fast path does not strip: such a value takes the full path).
BLANKS = [chr(i) for i in range(0x110000) if chr(i).isspace()]


def test_split_address_equals_the_full_normalization_with_every_blank_around() -> None:
    """Leading and trailing whitespace of every kind ``str.strip`` removes (``\x1c``-``\x1f``,
    ``\x85``, ``\u3000``, ...), around good, bad, upper-case and Kelvin-sign addresses; and no
    blank lowercases to anything else (the fast path's pattern never sees one at an end)."""
    assert {"\t", "\x1c", "\x1f", "\x85", "\xa0", "\u2028", "\u3000", " "} <= set(BLANKS) and all(b.lower() == b for b in BLANKS)
    assert all((b + "a").strip() == "a" and ("a" + b).strip() == "a" for b in BLANKS)
    cores = ["a@contoso.com", "A.B@CONTOSO.COM", "\u212a@contoso.com", "a..b@contoso.com", "a@contoso.com.", "", "@", "a@b@c.com",
             "a@" + "b" * 64 + ".com", "a" * 64 + "@contoso.com"]
    for b in BLANKS:
        for core in cores:
            for v in (b + core, core + b, b + core + b, b + b + core + "\t"):
                assert _fast(v) == _slow(v), repr(v)


# A small pool, so that an object's mail and proxies often repeat one another (in other cases,
# with blanks, unprovisioned or invalid): the one-pass count's reuse of the mail's split and its
# dedup of kept, excluded and invalid values.
pool = st.sampled_from(["a@contoso.com", "A@Contoso.COM", " a@contoso.com", "a@gmail.com", "A@GMAIL.com", "b@fabrikam.com", "bad@@x",
                        "BAD@@X", " bad@@x ", "a..b@contoso.com", "k@b\u00fccher.example", "k@xn--bcher-kva.example", "\u212a@contoso.com",
                        "a\ud800@contoso.com", "", " "])


@props(1500)
@given(st.fixed_dictionaries({}, optional={"mail": st.one_of(pool, mail), "proxyAddresses": st.lists(st.builds(str.__add__, prefix, pool), max_size=6)}),
       st.sampled_from(RULES))
def test_the_count_only_candidates_equal_the_listed_ones_when_values_repeat(obj: dict[str, Any], rules: Rules) -> None:
    listed = candidates("o1", "user", obj, PROVISIONED, rules, warn=False)
    counted = tally(obj, PROVISIONED, rules)
    assert (counted.kept, counted.primary, counted.excluded) == (listed.kept, listed.primary, len(listed.exclusions))
    assert [(v, str(exc)) for v, exc in counted.invalid] == [(v, str(exc)) for v, exc in _sift(obj, PROVISIONED, rules, None)[4]]
    assert (counted.kept, counted.primary, counted.excluded) == reference_candidates(obj, PROVISIONED, rules)[:3]


@props(1500)
@given(st.sampled_from(sorted(KIND_OF)), st.dictionaries(st.sampled_from(["mail", "proxyAddresses", "displayName", "userType", "other"]),
                                                          st.one_of(mail, proxies, display_name), max_size=5))
def test_a_folded_page_keeps_each_property_as_compact_value(collection: str, entry: dict[str, Any]) -> None:
    """``Round.take_page`` compacts inline: the same as ``compact`` (``compact_value``)."""
    rnd = Round()
    obj = {"id": "o1", **entry}
    assert rnd.take_page(collection, [obj]) == 1
    assert list(rnd.nets[collection]["o1"].props.items()) == list(compact(KIND_OF[collection], obj).items())  # the same keys in the same order
    again = {"id": "o1", **{k: v for k, v in reversed(entry.items()) if k != "mail"}}  # a later entry: updated in place, in the same order
    rnd.take_page(collection, [again])
    assert list(rnd.nets[collection]["o1"].props.items()) == list({**compact(KIND_OF[collection], obj), **compact(KIND_OF[collection], again)}.items())


def _reference_members(present: bool, ops: list[Any]) -> dict[str, tuple[bool, str]]:
    """``_fold_members`` as member_kind states it, without the lookup tables."""
    members: dict[str, tuple[bool, str]] = {}
    for m in ops:
        mid = m.get("id") if isinstance(m, dict) else None
        if isinstance(mid, str) and mid:
            if "@removed" in m:
                members[mid] = (False, member_kind(m.get("@odata.type")))
            elif present:
                members[mid] = (True, member_kind(m.get("@odata.type")))
    return members


otype = st.one_of(st.sampled_from([USER_TYPE, GROUP_TYPE, "#microsoft.graph.orgContact", "#microsoft.graph.device", "", "#x", None, 0, 7, [], ["a"]]),
                  st.text(max_size=3))
member = st.one_of(st.fixed_dictionaries({}, optional={"id": st.one_of(st.sampled_from(["m1", "m2", "m3", "", None, 5]), st.text(max_size=2)),
                                                       "@odata.type": otype, "@removed": st.just({"reason": "deleted"})}),
                   st.sampled_from([None, "m1", 3, ["m1"]]))


@props(1500)
@given(st.booleans(), st.lists(member, max_size=8))
def test_folded_members_are_member_kind_of_each_entry(present: bool, ops: list[Any]) -> None:
    net = Net()
    net.present = present
    _fold_members(net, ops)
    assert net.members == _reference_members(present, ops)
