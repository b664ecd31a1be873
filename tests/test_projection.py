"""Every projection rule of the product, on nasty directory data."""

from __future__ import annotations

import logging

from shared.model.directory import project, project_entries
from shared.model.records import to_api_record

PROV = {"contoso.com", "fabrikam.com", "xn--bcher-kva.example"}
U = "#microsoft.graph.user"
G = "#microsoft.graph.group"


def addrs(p):
    return set(p.datasets["addresses"])


def test_mail_and_smtp_proxies_are_candidates_other_prefixes_are_not():
    p = project(
        {
            "users": [
                {
                    "id": "u1",
                    "mail": "Alice@Contoso.com",
                    "proxyAddresses": [
                        "SMTP:alice@contoso.com",
                        "smtp:a.smith@FABRIKAM.com",
                        "X500:/o=ExchangeLabs/ou=Exchange/cn=Recipients/cn=alice@contoso.com",
                        "SIP:alice.sip@contoso.com",
                        "EUM:123;phone-context=contoso.com",
                        "SPO:SPO_123@SPO_abc",
                        "x400:c=US;a= ;p=Contoso;o=Exchange;s=Smith;",
                        "sMtP:mixed.prefix@contoso.com",
                        "alice.noprefix@contoso.com",
                    ],
                }
            ]
        },
        PROV,
    )
    assert addrs(p) == {"alice@contoso.com", "a.smith@fabrikam.com", "mixed.prefix@contoso.com"}
    assert p.excluded("addresses") == 0


def test_normalization_strips_lowercases_and_converts_idn():
    p = project({"contacts": [{"id": "c1", "mail": "  Bob@BÜCHER.example\t", "proxyAddresses": ["smtp: Carol@Bücher.Example "]}]}, PROV)
    assert addrs(p) == {"bob@xn--bcher-kva.example", "carol@xn--bcher-kva.example"}


def test_invalid_values_are_skipped_with_a_warning_naming_the_object(caplog):
    caplog.set_level(logging.WARNING)
    bad = ["no-at-sign", "two@@contoso.com", "a@b@contoso.com", "dot.@contoso.com", ".dot@contoso.com", "a..b@contoso.com",
           '"quoted"@contoso.com', "ünï@contoso.com", "x@-contoso.com", "x@contoso.123", "x@contoso.com.", "x@xn--zz.example",
           ("l" * 65) + "@contoso.com", "sp ace@contoso.com", ""]
    p = project({"users": [{"id": "u-bad", "mail": None, "proxyAddresses": ["smtp:" + b for b in bad]}]}, PROV)
    assert addrs(p) == set()
    reasons = [e for e in p.exclusions if e.dataset == "addresses"]
    assert len(reasons) == len(bad)
    assert all(e.object_id == "u-bad" and e.reason.startswith("invalid address") for e in reasons)
    assert "u-bad" in caplog.text
    # the user has no primary address and is left out
    assert p.datasets["users"] == {}
    assert p.excluded("users") == 1


def test_unprovisioned_domains_onmicrosoft_and_guests_are_excluded():
    p = project(
        {
            "users": [
                {"id": "u1", "mail": "alice@contoso.com", "proxyAddresses": ["SMTP:alice@contoso.com", "smtp:alice@contoso.onmicrosoft.com"]},
                {"id": "g1", "mail": "guest@gmail.com", "proxyAddresses": ["SMTP:guest@gmail.com"], "userType": "Guest",
                 "userPrincipalName": "guest_gmail.com#EXT#@contoso.onmicrosoft.com"},
            ]
        },
        PROV,
    )
    assert addrs(p) == {"alice@contoso.com"}
    assert set(p.datasets["users"]) == {"u1"}
    excl = {(e.object_id, e.value) for e in p.exclusions if e.dataset == "addresses"}
    assert excl == {("u1", "alice@contoso.onmicrosoft.com"), ("g1", "guest@gmail.com")}
    assert p.excluded("users") == 1


def test_primary_is_mail_when_kept_else_uppercase_smtp():
    p = project(
        {
            "users": [
                {"id": "u1", "mail": "Mail@Contoso.com", "proxyAddresses": ["SMTP:other@contoso.com"]},
                {"id": "u2", "mail": "x@unprovisioned.org", "proxyAddresses": ["smtp:second@contoso.com", "SMTP:Prim@Fabrikam.com"]},
                {"id": "u3", "mail": None, "proxyAddresses": ["smtp:only.secondary@contoso.com"]},
                {"id": "u4", "mail": "not valid", "proxyAddresses": ["SMTP:fallback@contoso.com"]},
            ]
        },
        PROV,
    )
    users = p.datasets["users"]
    assert users["u1"][0] == "mail@contoso.com"
    assert users["u2"][0] == "prim@fabrikam.com"
    assert "u3" not in users  # only a lowercase smtp: value: no primary
    assert users["u4"][0] == "fallback@contoso.com"
    assert "only.secondary@contoso.com" in addrs(p)


def test_two_users_sharing_a_primary_address_smaller_id_wins(caplog):
    caplog.set_level(logging.WARNING)
    p = project(
        {"users": [
            {"id": "b-user", "mail": "Shared@Contoso.com"},
            {"id": "a-user", "mail": "shared@contoso.com"},
            {"id": "c-user", "proxyAddresses": ["SMTP:SHARED@contoso.com"]},
        ]},
        PROV,
    )
    assert list(p.datasets["users"]) == ["a-user"]
    left = [e for e in p.exclusions if e.dataset == "users"]
    assert {e.object_id for e in left} == {"b-user", "c-user"}
    assert "b-user" in caplog.text
    assert addrs(p) == {"shared@contoso.com"}


def test_duplicates_are_one_address_and_not_exclusions():
    p = project(
        {"users": [{"id": "u1", "mail": "a@contoso.com", "proxyAddresses": ["SMTP:A@contoso.com", "smtp:a@CONTOSO.com"]}],
         "groups": [{"id": "g1", "displayName": "G", "mail": "a@contoso.com", "members": []}],
         "contacts": [{"id": "c1", "mail": "A@Contoso.Com"}]},
        PROV,
    )
    assert addrs(p) == {"a@contoso.com"}
    assert p.exclusions == []


def test_group_names_fall_back_to_mail_then_id():
    p = project(
        {"groups": [
            {"id": "g1", "displayName": "Sales", "mail": "sales@contoso.com"},
            {"id": "g2", "displayName": "", "mail": "Ops@Contoso.com"},
            {"id": "g3", "displayName": None, "mail": None},
            {"id": "g4", "displayName": "   ", "mail": ""},
        ]},
        PROV,
    )
    names = {k: v[0] for k, v in p.datasets["groups"].items()}
    # Empty is absent, null or "": a name of blanks is a name (1 to 256 characters, docs/sync-api.md).
    assert names == {"g1": "Sales", "g2": "Ops@Contoso.com", "g3": "g3", "g4": "   "}


def test_nested_cyclic_groups_and_non_user_members():
    entries = []
    entries.append(("users", {"id": "u1", "mail": "u1@contoso.com"}))
    entries.append(("users", {"id": "u2", "mail": None}))  # no address: not a record, so no groupIds
    entries.append(("contacts", {"id": "c1", "mail": "c1@contoso.com"}))
    entries.append(("groups", {"id": "gA", "displayName": "A", "members@delta": [{"@odata.type": G, "id": "gB"}, {"@odata.type": U, "id": "u1"}]}))
    entries.append(("groups", {"id": "gB", "displayName": "B", "members@delta": [{"@odata.type": G, "id": "gA"}, {"@odata.type": "#microsoft.graph.orgContact", "id": "c1"},
                                                                   {"@odata.type": "#microsoft.graph.device", "id": "d1"},
                                                                   {"@odata.type": "#microsoft.graph.servicePrincipal", "id": "sp1"}]}))
    entries.append(("groups", {"id": "gC", "displayName": "C", "members@delta": [{"@odata.type": G, "id": "gC"}, {"@odata.type": U, "id": "u1"}, {"@odata.type": U, "id": "u2"}]}))
    # a later delta page for gA carrying more members
    entries.append(("groups", {"id": "gA", "members@delta": [{"@odata.type": G, "id": "gC"}]}))
    p = project_entries(entries, PROV)
    g = p.datasets["groups"]
    assert g["gA"] == ("A", ("gB",))
    assert g["gB"] == ("B", ("gA",))
    assert g["gC"] == ("C", ("gA", "gC"))
    assert p.datasets["users"]["u1"] == ("u1@contoso.com", ("gA", "gC"))
    assert "u2" not in p.datasets["users"]


def test_api_records_have_exactly_the_contract_fields():
    p = project({"users": [{"id": "u1", "mail": "a@contoso.com"}], "groups": [{"id": "g1", "displayName": "G", "members": ["u1"]}]}, PROV)
    assert to_api_record("users", "u1", p.datasets["users"]["u1"]) == {"id": "u1", "address": "a@contoso.com", "groupIds": ["g1"]}
    assert to_api_record("groups", "g1", p.datasets["groups"]["g1"]) == {"id": "g1", "name": "G", "parentIds": []}
    assert to_api_record("addresses", "a@contoso.com", ()) == {"address": "a@contoso.com"}


def test_address_domains_restricts_provisioned():
    p = project({"users": [{"id": "u1", "mail": "a@contoso.com", "proxyAddresses": ["smtp:a@fabrikam.com"]}]}, {"fabrikam.com"})
    assert addrs(p) == {"a@fabrikam.com"}
    assert p.datasets["users"] == {}  # mail not kept, no uppercase SMTP: proxy


def test_a_group_name_is_its_display_name_unless_empty_over_generated_values():
    """Every kind of displayName and mail (absent, null, "", blanks of any Unicode whitespace,
    text, a lone surrogate): the name is the displayName when it is a non-empty string UTF-8
    can carry, else the mail by the same test, else the id (docs/sync-rules.md)."""
    from hypothesis import given, settings
    from hypothesis import strategies as st

    missing = object()
    values = st.one_of(st.just(missing), st.none(), st.just(""), st.text(alphabet=" \t\n\u00a0\u2028\u3000", min_size=1, max_size=4),
                       st.text(min_size=1, max_size=8), st.just("Sales\ud800"))

    def usable(v):
        if not isinstance(v, str) or v == "":
            return False
        try:
            v.encode("utf-8")
        except UnicodeEncodeError:
            return False
        return True

    @settings(max_examples=300, deadline=None)
    @given(values, values)
    def check(display, mail):
        group = {"id": "g1", "proxyAddresses": []}
        if display is not missing:
            group["displayName"] = display
        if mail is not missing:
            group["mail"] = mail
        name = project({"groups": [group]}, PROV).datasets["groups"]["g1"][0]
        assert name == (display if usable(display) else mail if usable(mail) else "g1")

    check()
