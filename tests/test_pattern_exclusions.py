"""A user that ``EXCLUDE_ADDRESS_PATTERNS`` leaves without a primary address is left out by that
setting, and its exclusion says so (docs/sync-rules.md, "Scope and exclusions"): over generated
users (mail and proxy addresses of either case, in and out of the provisioned domains, invalid
values, guests with and without EXCLUDE_USER_TYPES=Guest) and generated patterns, a user without a record is reported with a reason naming the
setting exactly when the same directory without the patterns gives it a primary address, and
the address named is that one."""

from __future__ import annotations

from hypothesis import given, settings
from hypothesis import strategies as st

from shared.model.directory import project
from shared.model.projection import candidates
from shared.model.rules import PATTERNS_SETTING, parse_rules

PROV = {"contoso.com", "fabrikam.com"}
LOCALS = ["ann", "bob", "info-desk", "info.desk", "x"]
DOMAINS = ["contoso.com", "fabrikam.com", "elsewhere.example"]

addresses = st.builds(lambda local, domain: f"{local}@{domain}", st.sampled_from(LOCALS), st.sampled_from(DOMAINS))
values = st.one_of(addresses, st.sampled_from(["not an address", "", "  ", "@contoso.com"]))
proxies = st.lists(st.tuples(st.sampled_from(["SMTP:", "smtp:", "X500:", "sip:"]), values).map("".join), max_size=3)
users = st.lists(st.fixed_dictionaries({"mail": st.one_of(st.none(), values), "proxyAddresses": proxies,
                                        "userType": st.sampled_from(["Member", "Guest", None])}), min_size=1, max_size=6)
patterns = st.lists(st.sampled_from([r"info.desk@contoso\.com", r"ann@.*", r".*@fabrikam\.com", r"bob@contoso\.com", r"nomatch@.*"]),
                    min_size=1, max_size=3, unique=True)


@settings(max_examples=150, deadline=None)
@given(users, patterns, st.booleans())
def test_a_user_the_patterns_leave_without_a_primary_is_reported_naming_them(raw_users, chosen, no_guests) -> None:
    directory = {"users": [{"id": f"u{i:02d}", **u} for i, u in enumerate(raw_users)]}
    rules = parse_rules(None, "Guest" if no_guests else None, ",".join(chosen))
    with_rules = project(directory, PROV, rules)
    without = project(directory, PROV)
    # the primary address each user has without the patterns
    unpatterned = {u["id"]: candidates(u["id"], "user", u, frozenset(PROV), warn=False).primary for u in directory["users"]}
    reasons = {e.object_id: e.reason for e in with_rules.exclusions if e.dataset == "users"}
    for u in directory["users"]:
        uid = u["id"]
        if uid in with_rules.datasets["users"] or uid not in reasons:
            continue
        why = reasons[uid]
        if no_guests and u["userType"] == "Guest":  # the user type's rule comes first, and says so
            assert "EXCLUDE_USER_TYPES" in why
            continue
        if why.startswith("primary address already used"):
            continue
        named = PATTERNS_SETTING in why
        assert named is (unpatterned[uid] is not None), (u, chosen, why)
        if named:
            assert unpatterned[uid] in why and any(f"pattern '{p}'" in why for p in chosen)
            assert uid in without.datasets["users"] or any(
                other < uid and rec[0] == unpatterned[uid] for other, rec in without.datasets["users"].items()
            )  # without the patterns it has a record, or loses it only to a smaller id with the same address
        else:
            assert why.startswith("no primary address")
