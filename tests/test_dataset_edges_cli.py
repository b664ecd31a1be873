"""Edge cases of "From directory objects to the three datasets" (docs/sync-rules.md) and of the
sync API's address grammar (docs/sync-api.md, "4.2 Address syntax (`address` in `addresses` and `users`)"), through the real CLI
(``python -m shared test-update|update --json``) against the Graph emulator and the strict
receiver. Every expected value below is derived by hand from the two pages, not from the
product's code; each comment names the sentence it follows.

What the generated tenants of tests/test_conformance_oracle.py do not produce is here: exact
length limits (254-octet address, 64-octet local part), IDNA 2008 conversions where IDNA 2003
differs (``ß``), NFD input, full-width and zero-width characters, labels that are invalid only
after IDNA, a bare ``SMTP:`` prefix, object ids in mixed case, service principals as members,
and the summary's ``excluded`` counts and ``test-update``'s exclusions for all of them.

Readings where the pages leave room (see the hunt report):
- "the smaller id (by string order)": ordinal (code point) order, so ``"Ub" < "ua"``;
- "converted to its A-label": IDNA 2008 (RFC 5890 defines the A-label), with the UTS #46
  mapping (case, width, NFC) before it: ``straße`` is ``xn--strae-oqa``, not IDNA 2003's
  ``strasse``; a label IDNA 2008 disallows (``☃``) is not a valid A-label;
- a group's fallback ``name`` is its ``mail`` as Graph holds it (not normalized).
"""

from __future__ import annotations

from typing import Any

import pytest

from devstack.graph_emulator import GraphEmulator
from devstack.sync_receiver import SyncReceiver
from tests.spec_oracle import view
from tests.stack import CREDENTIAL, base_env, run_cli

# A 189-character domain: a 64-octet local part, "@" and it make exactly 254 octets; one more
# character makes 255 (an address has at most 254 octets in all: docs/sync-api.md, "4.2 Address syntax (`address` in `addresses` and `users`)").
D189 = "b" * 63 + "." + "c" * 63 + "." + "d" * 57 + ".com"
D190 = "b" * 63 + "." + "c" * 63 + "." + "d" * 58 + ".com"
L64 = "a" * 64
DOMAINS = ["contoso.com", "fabrikam.com", "xn--bcher-kva.example", "xn--strae-oqa.example", D189, D190]


def directory() -> dict[str, Any]:
    users = [
        # mail with surrounding whitespace and capitals; "Smtp:" is an smtp: prefix (compared
        # case-insensitively) but not the primary's "SMTP:"; a bare "SMTP:" is the candidate "",
        # invalid; X500:, SIP:, x400: are not addresses.
        {"id": "u01", "mail": " Alice@Contoso.com\t",
         "proxyAddresses": ["Smtp: a2@contoso.com ", "SMTP:", "X500:/o=x/cn=alice", "SIP:alice@contoso.com", "x400:c=US;a= ;p=Contoso"]},
        # a quoted local part is not accepted; the only kept candidate is a lowercase smtp: one
        {"id": "u02", "mail": '"quoted"@contoso.com', "proxyAddresses": ["smtp:q2@contoso.com"]},
        # mail not kept (domain not provisioned): the kept SMTP: value is the primary address
        {"id": "u03", "mail": "x@notprov.org", "proxyAddresses": ["SMTP:fallback@contoso.com"]},
        # a full-width domain maps to ASCII under IDNA
        {"id": "u04", "mail": "full@\uff43\uff4f\uff4e\uff54\uff4f\uff53\uff4f.com", "proxyAddresses": []},
        # a full-width local part is not ASCII
        {"id": "u05", "mail": "\uff46\uff55\uff4c\uff4c@contoso.com", "proxyAddresses": ["smtp:lower@contoso.com"]},
        # NFD input: u + combining diaeresis is the same label as ü
        {"id": "u06", "mail": "nfd@bu\u0308cher.example", "proxyAddresses": []},
        # IDNA 2008 keeps ß (its A-label is xn--strae-oqa)
        {"id": "u07", "mail": "ss@stra\u00dfe.example", "proxyAddresses": []},
        # a label that starts with a hyphen is invalid after IDNA too; a 64-octet local part is
        # valid, a 65-octet one is not
        {"id": "u08", "mail": "hy@-b\u00fccher.example", "proxyAddresses": [f"smtp:{L64}@contoso.com", f"smtp:{'b' * 65}@contoso.com"]},
        # a zero-width space is not whitespace: it stays in the local part, which is then not ASCII;
        # an uppercase IDN in the primary proxy
        {"id": "u09", "mail": "z\u200b@contoso.com", "proxyAddresses": ["SMTP:UP@B\u00dcCHER.EXAMPLE"]},
        # labels IDNA 2008 does not allow (a symbol; a digit of a right-to-left script)
        {"id": "u10", "mail": None, "proxyAddresses": ["SMTP:snow@\u2603.example", "smtp:bidi@\u0663.com"]},
        # exactly 254 octets is valid, 255 is not
        {"id": "u11", "mail": f"{L64}@{D189}", "proxyAddresses": [f"smtp:{L64}@{D190}"]},
        # two users share a primary address: "Ub" < "ua" in string (code point) order
        {"id": "ua", "mail": "shared@contoso.com", "proxyAddresses": []},
        {"id": "Ub", "mail": "SHARED@contoso.com", "proxyAddresses": []},
    ]
    groups = [
        # a group that is its own member; contacts, devices and service principals add nothing
        {"id": "g1", "displayName": "Sales", "mail": "sales@contoso.com", "proxyAddresses": ["SMTP:sales@contoso.com"],
         "members": ["g1", "u01", "c1", "dev1", "sp1"]},
        # displayName null: the name is the mail; g2 and g3 are members of each other
        {"id": "g2", "displayName": None, "mail": "Team@Contoso.com", "proxyAddresses": [], "members": ["g3", "u06"]},
        # displayName "" and no mail: the name is the id
        {"id": "g3", "displayName": "", "mail": None, "proxyAddresses": [], "members": ["g2", "Ub", "ua"]},
        {"id": "g4", "displayName": None, "mail": "", "proxyAddresses": [], "members": []},
    ]
    contacts = [
        # the same addresses as a user and a group: one address each in the union
        {"id": "c1", "mail": "Alice@contoso.com", "proxyAddresses": ["SMTP:sales@contoso.com"]},
        {"id": "c2", "mail": "ext@fabrikam.com", "proxyAddresses": ["smtp:ext@elsewhere.org"]},
    ]
    return {"users": users, "groups": groups, "contacts": contacts,
            "devices": [{"id": "dev1", "displayName": "laptop"}], "servicePrincipals": [{"id": "sp1", "displayName": "app"}]}


EXPECTED = {
    "addresses": {
        "alice@contoso.com", "a2@contoso.com", "q2@contoso.com", "fallback@contoso.com", "full@contoso.com", "lower@contoso.com",
        "nfd@xn--bcher-kva.example", "ss@xn--strae-oqa.example", f"{L64}@contoso.com", "up@xn--bcher-kva.example",
        f"{L64}@{D189}", "shared@contoso.com", "sales@contoso.com", "team@contoso.com", "ext@fabrikam.com",
    },
    "groups": {
        "g1": {"id": "g1", "name": "Sales", "parentIds": ["g1"]},
        "g2": {"id": "g2", "name": "Team@Contoso.com", "parentIds": ["g3"]},
        "g3": {"id": "g3", "name": "g3", "parentIds": ["g2"]},
        "g4": {"id": "g4", "name": "g4", "parentIds": []},
    },
    "users": {
        "u01": {"id": "u01", "address": "alice@contoso.com", "groupIds": ["g1"]},
        "u03": {"id": "u03", "address": "fallback@contoso.com", "groupIds": []},
        "u04": {"id": "u04", "address": "full@contoso.com", "groupIds": []},
        "u06": {"id": "u06", "address": "nfd@xn--bcher-kva.example", "groupIds": ["g2"]},
        "u07": {"id": "u07", "address": "ss@xn--strae-oqa.example", "groupIds": []},
        "u09": {"id": "u09", "address": "up@xn--bcher-kva.example", "groupIds": []},
        "u11": {"id": "u11", "address": f"{L64}@{D189}", "groupIds": []},
        "Ub": {"id": "Ub", "address": "shared@contoso.com", "groupIds": ["g3"]},
    },
}
# Candidates left out, per object (each is a distinct value): u01 "", u02 the quoted one, u03 the
# unprovisioned mail, u05 the full-width local part, u08 two, u09 one, u10 two, u11 the 255-octet
# one, c2 the unprovisioned proxy. Users left out: u02, u05, u08, u10 (no primary address) and ua.
LEFT_OUT_ADDRESSES = {"u01": 1, "u02": 1, "u03": 1, "u05": 1, "u08": 2, "u09": 1, "u10": 2, "u11": 1, "c2": 1}
LEFT_OUT_USERS = {"u02", "u05", "u08", "u10", "ua"}
INVALID = {"u01", "u02", "u05", "u08", "u09", "u10", "u11"}  # each has a value the API's grammar rejects


@pytest.fixture
def stack(tmp_path):
    graph = GraphEmulator(directory(), max_page_size=3, max_members_per_page=2)
    receiver = SyncReceiver(domains=DOMAINS, credential=CREDENTIAL)
    env = base_env(graph.start(), receiver.start(), f"file:{tmp_path / 'state'}")
    try:
        yield graph, receiver, env
    finally:
        graph.stop()
        receiver.stop()


def _ok(action: str, env: dict[str, str]):
    r = run_cli(action, {**env, "PYTHONIOENCODING": "utf-8"}, "--json")
    assert r.code == 0, r.stderr
    return r


def test_nasty_candidates_groups_and_users_give_the_datasets_the_rules_imply(stack):
    graph, receiver, env = stack
    dry = _ok("test-update", env)
    run = _ok("update", env)
    assert view(receiver) == EXPECTED
    want = {"addresses": (len(EXPECTED["addresses"]), sum(LEFT_OUT_ADDRESSES.values())), "groups": (4, 0),
            "users": (len(EXPECTED["users"]), len(LEFT_OUT_USERS))}
    for summary in (dry.summary, run.summary):
        got = {d: (c["added"], c["excluded"]) for d, c in summary["datasets"].items()}
        assert got == want
        assert all(c["removed"] == 0 and c["rejected"] == 0 for c in summary["datasets"].values())
    # test-update lists each exclusion with its reason (docs/sync-rules.md, "Actions").
    listed: dict[str, int] = {}
    for e in dry.summary["exclusions"]:
        if e["dataset"] == "addresses":
            listed[e["objectId"]] = listed.get(e["objectId"], 0) + 1
    assert listed == LEFT_OUT_ADDRESSES
    users = {e["objectId"]: e["reason"] for e in dry.summary["exclusions"] if e["dataset"] == "users"}
    assert set(users) == LEFT_OUT_USERS
    assert "Ub" in users["ua"]  # the smaller id keeps the record
    # "An invalid value is skipped with a warning that names the object id"; "The other is left
    # out with a warning."
    for oid in INVALID:
        assert f"user {oid}: skipped invalid address" in run.stderr, oid
    assert "user ua shares the primary address shared@contoso.com with user Ub" in run.stderr


def test_a_delta_round_moves_the_shared_primary_and_memberships(stack):
    graph, receiver, env = stack
    _ok("update", env)
    graph.upsert_user({"id": "Ub", "mail": "other@contoso.com", "proxyAddresses": []})  # ua now keeps shared@contoso.com
    graph.remove_member("g1", "u01")
    graph.delete_contact("c1")  # alice@ and sales@ are still held by u01 and g1
    graph.upsert_group({"id": "g4", "displayName": None, "mail": " G4@Contoso.com ", "proxyAddresses": []})
    dry = _ok("test-update", env)
    run = _ok("update", env)
    expected = {**EXPECTED, "addresses": EXPECTED["addresses"] | {"other@contoso.com", "g4@contoso.com"}}
    expected["users"] = {**EXPECTED["users"], "Ub": {"id": "Ub", "address": "other@contoso.com", "groupIds": ["g3"]},
                         "ua": {"id": "ua", "address": "shared@contoso.com", "groupIds": ["g3"]},
                         "u01": {"id": "u01", "address": "alice@contoso.com", "groupIds": []}}
    # the name falls back to the mail as Graph holds it
    expected["groups"] = {**EXPECTED["groups"], "g4": {"id": "g4", "name": " G4@Contoso.com ", "parentIds": []}}
    assert view(receiver) == expected
    # u01, Ub and ua upserted; two new addresses; g4 renamed; c2's left-out proxy is still counted,
    # and ua is no longer left out.
    want = {"addresses": (2, 0, sum(LEFT_OUT_ADDRESSES.values())), "groups": (1, 0, 0), "users": (3, 0, len(LEFT_OUT_USERS) - 1)}
    for summary in (dry.summary, run.summary):
        assert {d: (c["added"], c["removed"], c["excluded"]) for d, c in summary["datasets"].items()} == want
    assert run.summary["read"]["kind"] == "delta"


@pytest.mark.parametrize("setting, kept", [
    ("B\u00dcCHER.example, CONTOSO.COM", {"x@xn--bcher-kva.example", "y@contoso.com"}),  # uppercase IDN, capitals
    ("xn--BCHER-kva.example", {"x@xn--bcher-kva.example"}),  # an A-label in capitals
    ("bu\u0308cher.example", {"x@xn--bcher-kva.example"}),  # NFD
    ("\uff43\uff4f\uff4e\uff54\uff4f\uff53\uff4f.com", {"y@contoso.com"}),  # full-width
    (" , contoso.com , sub.contoso.com", {"y@contoso.com"}),  # empty items; a domain GET /domains lacks
])
def test_address_domains_in_any_case_and_idn_form_intersect_the_provisioned_domains(tmp_path, setting, kept):
    # docs/sync-rules.md, "Candidate addresses": the provisioned domains are GET /domains intersected with ADDRESS_DOMAINS.
    users = [{"id": "u1", "mail": "x@b\u00fccher.example"}, {"id": "u2", "mail": "y@contoso.com"},
             {"id": "u3", "mail": "z@fabrikam.com"}, {"id": "u4", "mail": "w@sub.contoso.com"}]
    graph = GraphEmulator({"users": users})
    receiver = SyncReceiver(domains=["contoso.com", "fabrikam.com", "xn--bcher-kva.example"], credential=CREDENTIAL)
    env = {**base_env(graph.start(), receiver.start(), f"file:{tmp_path / 'state'}"), "ADDRESS_DOMAINS": setting}
    try:
        r = _ok("update", env)
        assert view(receiver)["addresses"] == kept
        assert r.summary["datasets"]["addresses"]["excluded"] == 4 - len(kept)
    finally:
        graph.stop()
        receiver.stop()


SCOPE = "SYNC_SCOPE_GROUPS"


def test_test_update_reports_every_object_the_scope_leaves_out_even_one_with_no_kept_candidate(tmp_path):
    # docs/sync-rules.md, "Scope and exclusions": "Each object, address or user that a setting
    # leaves out is reported by test-update among the exclusions, with a reason that names the
    # setting." Contacts are external by nature, so an out-of-scope contact often has only
    # addresses of unprovisioned domains, or none: it is still an object the scope leaves out,
    # as an out-of-scope user without an address is. The same holds for an Exchange Online
    # recipient that is no Entra object. The counts stay those of candidates and users.
    from devstack.exchange_emulator import ExchangeEmulator, recipient

    directory = {"users": [{"id": "u1", "mail": "a@contoso.com"}, {"id": "u2", "mail": None}],
                 "groups": [{"id": "g1", "displayName": "S", "members": ["u1", "c1"]},
                            {"id": "g2", "displayName": "T", "members": ["u2", "c2", "c3", "c4"]}],
                 "contacts": [{"id": "c1", "mail": "in@partner.org"}, {"id": "c2", "mail": "out@partner.org"},
                              {"id": "c3", "mail": None}, {"id": "c4", "mail": "ok@contoso.com"}]}
    tenant = "contoso.onmicrosoft.com"
    exo = ExchangeEmulator([recipient("e1", "DynamicDistributionGroup", "dyn@partner.org"),
                            recipient("e2", "PublicFolder", "pf@contoso.com")], tenant=tenant)
    graph = GraphEmulator(directory)
    receiver = SyncReceiver(domains=["contoso.com"], credential=CREDENTIAL)
    env = {**base_env(graph.start(), receiver.start(), f"file:{tmp_path / 'state'}"), SCOPE: "g1",
           "EXO_MODE": "augment", "GRAPH_TENANT_ID": tenant, "EXO_BASE_URL": exo.start()}
    try:
        s = _ok("test-update", env).summary
    finally:
        graph.stop()
        receiver.stop()
        exo.stop()
    by_scope = {e["objectId"] for e in s["exclusions"] if SCOPE in e["reason"]}
    assert by_scope == {"u2", "g2", "c2", "c3", "c4", "e1", "e2"}
    assert "c1" not in by_scope  # in scope; its address is left out only for its domain
    # excluded: the candidates in@, out@ and dyn@ (domain), ok@ and pf@ (scope); u2; g2
    assert {d: c["excluded"] for d, c in s["datasets"].items()} == {"addresses": 5, "groups": 1, "users": 1}
