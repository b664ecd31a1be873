"""The load's fast paths give exactly what the slow paths give (docs/sync-rules.md,
"Candidate addresses"), over generated values (hypothesis): ``split_address`` (the compiled
path for plain ASCII, with the domain it returns) against ``normalize_address_fully`` and
``domain_of``, on values with non-ASCII, uppercase, whitespace, odd dots, IDN labels and lone
surrogates; and ``tally`` (the count-only candidates a full read's load uses) against
``candidates`` (the ``Exclusion``s a report lists) and against the candidate rules as they were
before the count-only path (``tests/load_reference.py``)."""

from __future__ import annotations

from typing import Any

from hypothesis import given
from hypothesis import strategies as st

from shared.model.addresses import SMTP_PREFIXES, InvalidAddress, domain_of, normalize_address_fully, split_address
from shared.model.projection import candidates, tally
from shared.model.rules import NO_RULES, Rules, parse_rules
from tests.load_reference import reference_candidates
from tests.test_properties import address_like, candidate, mail, prefix, props, proxies

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
