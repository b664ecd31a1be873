"""Synthetic Entra ID tenants in the team's directory model, for the Graph emulator.

``generate_tenant`` makes large, realistic tenants for benchmarks (100,000 users in about a
second); ``demo_tenant`` makes a few thousand objects salted with every nasty case the sync
rules talk about, for the local demo and for end-to-end tests.

Both are deterministic: the same arguments always give the same directory, ids included, so
a benchmark or a demo run can be repeated and compared.

The directory model (plain data, shared with the rest of the team)::

    {"users":    [{"id", "displayName", "mail", "proxyAddresses", "userPrincipalName",
                   "userType", "accountEnabled"}],
     "groups":   [{"id", "displayName", "mail", "proxyAddresses", "members": [member ids]}],
     "contacts": [{"id", "displayName", "mail", "proxyAddresses"}],
     "devices":  [{"id", "displayName"}],
     "servicePrincipals": [{"id", "displayName"}]}
"""

from __future__ import annotations

import math
import random
import uuid
from collections.abc import Callable
from typing import Any

DEFAULT_DOMAINS: tuple[str, ...] = ("contoso.com", "fabrikam.com")
# The demo's verified domains: the sync API receiver of the demo should provision these
# (in A-label form for the IDN: ``xn--bcher-kva.example``).
DEMO_DOMAINS: tuple[str, ...] = ("contoso.com", "fabrikam.com", "bücher.example")

# (display form, ASCII form used in mail local parts)
_FIRST = (
    ("Anna", "anna"),
    ("Ben", "ben"),
    ("Chloé", "chloe"),
    ("David", "david"),
    ("Émile", "emile"),
    ("Fatima", "fatima"),
    ("Gustav", "gustav"),
    ("Hana", "hana"),
    ("Igor", "igor"),
    ("Jürgen", "juergen"),
    ("Kenji", "kenji"),
    ("Lena", "lena"),
    ("Miguel", "miguel"),
    ("Nora", "nora"),
    ("Oskar", "oskar"),
    ("Priya", "priya"),
    ("Quentin", "quentin"),
    ("Rosa", "rosa"),
    ("Søren", "soeren"),
    ("Tomás", "tomas"),
    ("Uma", "uma"),
    ("Viktor", "viktor"),
    ("Wei", "wei"),
    ("Xenia", "xenia"),
    ("Yusuf", "yusuf"),
    ("Zoë", "zoe"),
    ("Aisha", "aisha"),
    ("Bjørn", "bjoern"),
    ("Carla", "carla"),
    ("Dmitri", "dmitri"),
)
_LAST = (
    ("Andersen", "andersen"),
    ("Bauer", "bauer"),
    ("Costa", "costa"),
    ("Dubois", "dubois"),
    ("Eriksson", "eriksson"),
    ("Fischer", "fischer"),
    ("García", "garcia"),
    ("Hoffmann", "hoffmann"),
    ("Ivanova", "ivanova"),
    ("Jensen", "jensen"),
    ("Kowalski", "kowalski"),
    ("Lindqvist", "lindqvist"),
    ("Müller", "mueller"),
    ("Nakamura", "nakamura"),
    ("O'Brien", "obrien"),
    ("Petrov", "petrov"),
    ("Quinn", "quinn"),
    ("Rossi", "rossi"),
    ("Schmidt", "schmidt"),
    ("Tanaka", "tanaka"),
    ("Ueda", "ueda"),
    ("Varga", "varga"),
    ("Weber", "weber"),
    ("Xu", "xu"),
    ("Yılmaz", "yilmaz"),
    ("Zimmermann", "zimmermann"),
)
_DEPTS = ("Sales", "Marketing", "Engineering", "Finance", "HR", "Legal", "Support", "Operations", "Research", "IT")
_GUEST_DOMAINS = ("gmail.com", "outlook.com", "partner.example", "supplier.example", "yahoo.co.jp")
_CONTACT_DOMAINS = ("partner.example", "supplier.example", "lawfirm.example", "agency.example", "gmail.com")
_X500 = "X500:/o=ExchangeLabs/ou=Exchange Administrative Group (FYDIBOHF23SPDLT)/cn=Recipients/cn="

# Shares of the user population (cumulative thresholds on one random roll).
_GUEST_SHARE = 0.02
_NO_MAIL_SHARE = 0.05
_ONMICROSOFT_MAIL_SHARE = 0.06


def initial_domain(domains: tuple[str, ...]) -> str:
    """The tenant's ``*.onmicrosoft.com`` domain, named after its first verified domain."""
    label = domains[0].split(".")[0].encode("idna").decode("ascii") if domains else "tenant"
    return f"{label}.onmicrosoft.com"


def _id_factory(rng: random.Random) -> Callable[[], str]:
    """Random-looking but seed-determined object ids (GUIDs, like Entra's)."""
    return lambda: str(uuid.UUID(int=rng.getrandbits(128), version=4))


def _poisson(rng: random.Random, mean: float) -> int:
    """Knuth's method: memberships per user vary around the mean, as in real tenants."""
    if mean <= 0:
        return 0
    limit, k, p = math.exp(-mean), 0, 1.0
    while True:
        p *= rng.random()
        if p <= limit:
            return k
        k += 1


def _pick_domain(rng: random.Random, domains: tuple[str, ...]) -> str:
    """Most mailboxes live in the first domain; the others share the rest."""
    if len(domains) == 1 or rng.random() < 0.8:
        return domains[0]
    return rng.choice(domains[1:])


def _make_user(rng: random.Random, i: int, uid: str, domains: tuple[str, ...], initial: str) -> dict[str, Any]:
    """One user: a member with a mailbox, a guest, a user without mail, or an onmicrosoft-only one."""
    first, first_a = rng.choice(_FIRST)
    last, last_a = rng.choice(_LAST)
    local = f"{first_a}.{last_a}{i}"
    roll = rng.random()
    if roll < _GUEST_SHARE:
        ext = rng.choice(_GUEST_DOMAINS)
        mail = f"{local}@{ext}"
        return {
            "id": uid,
            "displayName": f"{first} {last} (Guest)",
            "mail": mail,
            "proxyAddresses": [f"SMTP:{mail}"],
            "userPrincipalName": f"{local}_{ext}#EXT#@{initial}",
            "userType": "Guest",
            "accountEnabled": True,
        }
    domain = _pick_domain(rng, domains)
    if roll < _NO_MAIL_SHARE:
        return {
            "id": uid,
            "displayName": f"{first} {last}",
            "mail": None,
            "proxyAddresses": [],
            "userPrincipalName": f"{local}@{domain}",
            "userType": "Member",
            "accountEnabled": rng.random() < 0.7,
        }
    if roll < _ONMICROSOFT_MAIL_SHARE:
        domain = initial
    shown = f"{first_a.capitalize()}.{last_a.capitalize()}{i}" if rng.random() < 0.25 else local
    mail = f"{shown}@{domain}"
    proxies = [f"SMTP:{mail}"]
    if domain != initial and rng.random() < 0.7:
        proxies.append(f"smtp:{local}@{initial}")
    if len(domains) > 1 and rng.random() < 0.3:
        proxies.append(f"smtp:{first_a[0]}{last_a}{i}@{rng.choice(domains)}")
    if rng.random() < 0.2:
        proxies.append(f"{_X500}{rng.getrandbits(128):032x}-{last_a[:8]}")
    if rng.random() < 0.3:
        proxies.append(f"SIP:{mail.lower()}")
    return {
        "id": uid,
        "displayName": f"{first} {last}",
        "mail": mail,
        "proxyAddresses": proxies,
        "userPrincipalName": mail if rng.random() < 0.9 else f"{local}@{initial}",
        "userType": "Member",
        "accountEnabled": rng.random() < 0.97,
    }


def _make_contact(rng: random.Random, j: int, cid: str, domains: tuple[str, ...]) -> dict[str, Any]:
    """An organizational contact: mostly external mail, a few in a verified domain (hybrid)."""
    first, first_a = rng.choice(_FIRST)
    last, last_a = rng.choice(_LAST)
    roll = rng.random()
    if roll < 0.05:
        return {"id": cid, "displayName": f"{first} {last} (no mail)", "mail": None, "proxyAddresses": []}
    ext = domains[-1] if roll < 0.10 else rng.choice(_CONTACT_DOMAINS)
    mail = f"{first_a}.{last_a}.c{j}@{ext}"
    proxies = [f"SMTP:{mail}"]
    if rng.random() < 0.2:
        proxies.append(f"smtp:{first_a[0]}{last_a}.c{j}@{ext}")
    if rng.random() < 0.2:
        proxies.append(f"{_X500}{rng.getrandbits(128):032x}-contact")
    return {"id": cid, "displayName": f"{first} {last} (External)", "mail": mail, "proxyAddresses": proxies}


def _make_group(rng: random.Random, g: int, gid: str, domains: tuple[str, ...], initial: str) -> dict[str, Any]:
    """A security group (no mail), a Microsoft 365 group or a distribution list."""
    dept = _DEPTS[g % len(_DEPTS)]
    roll = rng.random()
    if roll < 0.4:
        return {"id": gid, "displayName": f"SG-{dept}-{g}", "mail": None, "proxyAddresses": [], "members": []}
    if roll < 0.8:
        nick = f"{dept.lower()}-team-{g}"
        mail = f"{nick}@{_pick_domain(rng, domains)}"
        proxies = [f"SMTP:{mail}", f"smtp:{nick}@{initial}"]
        if rng.random() < 0.3:
            proxies.append(f"SPO:SPO_{rng.getrandbits(128):032x}@SPO_{rng.getrandbits(64):016x}")
        return {"id": gid, "displayName": f"{dept} Team {g}", "mail": mail, "proxyAddresses": proxies, "members": []}
    nick = f"dl-{dept.lower()}-{g}"
    mail = f"{nick}@{_pick_domain(rng, domains)}"
    proxies = [f"SMTP:{mail}"]
    if rng.random() < 0.3:
        proxies.append(f"{_X500}{rng.getrandbits(128):032x}-dl")
    return {"id": gid, "displayName": f"DL {dept} {g}", "mail": mail, "proxyAddresses": proxies, "members": []}


def _assign_memberships(rng: random.Random, users: list[dict], groups: list[dict], per_user: float) -> None:
    """Each user joins ~per_user groups, skewed so a few groups are large (thousands of members)."""
    n = len(groups)
    if n == 0:
        return
    members = [g["members"] for g in groups]
    rand = rng.random
    for user in users:
        uid = user["id"]
        picked: set[int] = set()
        for _ in range(_poisson(rng, per_user)):
            idx = int(n * rand() ** 2)  # P(idx < x) = sqrt(x / n): low indices are popular
            if idx not in picked:
                picked.add(idx)
                members[idx].append(uid)


def _nest_groups(rng: random.Random, groups: list[dict]) -> None:
    """About 5% of groups are members of a lower-numbered group, so nesting never cycles here."""
    for g in range(1, len(groups)):
        if rng.random() < 0.05:
            groups[rng.randrange(g)]["members"].append(groups[g]["id"])
            if rng.random() < 0.2:
                parent = rng.randrange(g)
                if groups[g]["id"] not in groups[parent]["members"]:
                    groups[parent]["members"].append(groups[g]["id"])


def _add_other_members(rng: random.Random, groups: list[dict], contacts: list[dict], others: list[dict]) -> None:
    """Contacts join mail-enabled groups; devices and service principals join security groups."""
    mail_groups = [g for g in groups if g["mail"]]
    security_groups = [g for g in groups if not g["mail"]]
    if mail_groups:
        for contact in contacts:
            if rng.random() < 0.3:
                rng.choice(mail_groups)["members"].append(contact["id"])
    if security_groups:
        for obj in others:
            if rng.random() < 0.4:
                rng.choice(security_groups)["members"].append(obj["id"])


def generate_tenant(
    users: int,
    groups: int | None = None,
    memberships_per_user: float = 3.0,
    seed: int = 1,
    domains: tuple[str, ...] = DEFAULT_DOMAINS,
) -> dict[str, list[dict[str, Any]]]:
    """A deterministic synthetic tenant: ``users`` users, ``groups`` groups (default users // 10),
    about ``memberships_per_user`` direct memberships per user, contacts (users // 20), devices
    (users // 100) and service principals (users // 200), some of them group members."""
    if users < 0 or (groups is not None and groups < 0):
        raise ValueError("users and groups must be >= 0")
    if not domains:
        raise ValueError("domains must name at least one verified domain")
    domains = tuple(domains)
    rng = random.Random(seed)
    new_id = _id_factory(rng)
    initial = initial_domain(domains)
    user_list = [_make_user(rng, i, new_id(), domains, initial) for i in range(users)]
    contacts = [_make_contact(rng, j, new_id(), domains) for j in range(users // 20)]
    devices = [{"id": new_id(), "displayName": f"DESKTOP-{rng.getrandbits(28):07X}"} for _ in range(users // 100)]
    sps = [{"id": new_id(), "displayName": f"{rng.choice(_DEPTS)} Automation App {k}"} for k in range(users // 200)]
    n_groups = users // 10 if groups is None else groups
    group_list = [_make_group(rng, g, new_id(), domains, initial) for g in range(n_groups)]
    _assign_memberships(rng, user_list, group_list, memberships_per_user)
    _nest_groups(rng, group_list)
    _add_other_members(rng, group_list, contacts, devices + sps)
    return {"users": user_list, "groups": group_list, "contacts": contacts, "devices": devices, "servicePrincipals": sps}


# --- the demo tenant: every nasty case, visibly -------------------------------------------------

_NASTY_USERS: tuple[tuple[str, str | None, tuple[str, ...], str, str, bool], ...] = (
    # (displayName, mail, proxyAddresses, userPrincipalName, userType, accountEnabled)
    (
        "Mixed Case",
        "Mixed.Case@CONTOSO.com",
        ("SMTP:MIXED.CASE@contoso.com", "smtp:Mixed.Alias@Fabrikam.COM", "sMtP:odd.prefix.case@contoso.com"),
        "mixed.case@contoso.com",
        "Member",
        True,
    ),
    (
        "Padded Mail",
        "  padded.mail@contoso.com ",
        ("SMTP: padded.mail@contoso.com ", "smtp:\tpadded.alias@contoso.com"),
        "padded.mail@contoso.com",
        "Member",
        True,
    ),
    (
        "Anna Bücher (IDN)",
        "anna@bücher.example",
        ("SMTP:anna@bücher.example", "smtp:anna.alias@BÜCHER.example"),
        "anna@contoso.com",
        "Member",
        True,
    ),
    (
        "Jürgen Non-ASCII Local",
        "jürgen@bücher.example",
        ("SMTP:jürgen@bücher.example", "smtp:juergen@bücher.example"),
        "juergen@contoso.com",
        "Member",
        True,
    ),
    ("Already A-label", "bob@xn--bcher-kva.example", ("SMTP:bob@xn--bcher-kva.example",), "bob@contoso.com", "Member", True),
    (
        "Primary From Proxy",
        None,
        ("SMTP:proxy.primary@contoso.com", "smtp:proxy.alias@contoso.com"),
        "proxy.primary@contoso.com",
        "Member",
        True,
    ),
    (
        "Foreign Mail, Verified Proxy",
        "someone.else@gmail.com",
        ("smtp:foreign.alias@fabrikam.com", "SMTP:foreign.primary@fabrikam.com"),
        "foreign.primary@fabrikam.com",
        "Member",
        True,
    ),
    (
        "Invalid Values",
        "not-an-address",
        (
            "SMTP:also not an address",
            "smtp:two@@contoso.com",
            "smtp:dot..dot@contoso.com",
            "smtp:.leading.dot@contoso.com",
            "smtp:trailing.dot.@contoso.com",
            "smtp:",
            "smtp:user@-bad-.contoso.com",
            "smtp:user@contoso",
            "smtp:user@123.456",
            "smtp:" + "a" * 65 + "@contoso.com",
            "smtp:user@" + "b" * 64 + ".contoso.com",
            'smtp:"quoted"@contoso.com',
            "smtp:trailing.dot@contoso.com.",
            "smtp:invalid.values.ok@contoso.com",
        ),
        "invalid.values@contoso.com",
        "Member",
        True,
    ),
    (
        "Other Prefixes",
        "prefixes@contoso.com",
        (
            "SMTP:prefixes@contoso.com",
            _X500 + "prefixes",
            "SIP:prefixes.sip@contoso.com",
            "EUM:1234;phone-context=contoso.com",
            "SPO:SPO_0f0e@SPO_1a2b",
            "x400:c=US;a= ;p=Contoso;o=Exchange;s=Prefixes;",
            "sip:lower.sip@contoso.com",
            "smtp:prefixes.alias@contoso.com",
        ),
        "prefixes@contoso.com",
        "Member",
        True,
    ),
    (
        "Duplicate Values",
        "dupe@contoso.com",
        (
            "SMTP:dupe@contoso.com",
            "smtp:DUPE@contoso.com",
            "smtp:dupe@contoso.com",
            "smtp:dupe.alias@contoso.com",
            "smtp:dupe.alias@contoso.com",
        ),
        "dupe@contoso.com",
        "Member",
        True,
    ),
    ("Shared Primary A", "shared.primary@contoso.com", ("SMTP:shared.primary@contoso.com",), "shared.a@contoso.com", "Member", True),
    (
        "Shared Primary B",
        "Shared.Primary@Contoso.com",
        ("SMTP:shared.primary@contoso.com", "smtp:shared.b@contoso.com"),
        "shared.b@contoso.com",
        "Member",
        True,
    ),
    (
        "Onmicrosoft Only",
        "svc.mailbox@contoso.onmicrosoft.com",
        ("SMTP:svc.mailbox@contoso.onmicrosoft.com",),
        "svc.mailbox@contoso.onmicrosoft.com",
        "Member",
        True,
    ),
    (
        "Guest From Partner",
        "guest.person@partner.example",
        ("SMTP:guest.person@partner.example",),
        "guest.person_partner.example#EXT#@contoso.onmicrosoft.com",
        "Guest",
        True,
    ),
    (
        "Guest With Verified-Domain Mail",
        "guest.alias@fabrikam.com",
        ("SMTP:guest.alias@fabrikam.com",),
        "guest.alias_fabrikam.com#EXT#@contoso.onmicrosoft.com",
        "Guest",
        True,
    ),
    ("Disabled Mailbox", "disabled.user@contoso.com", ("SMTP:disabled.user@contoso.com",), "disabled.user@contoso.com", "Member", False),
    ("No Mail At All", None, (), "no.mail@contoso.com", "Member", True),
    (
        "Only Invalid Candidates",
        "Ünïcode.Local@contoso.com",
        ("SMTP:Ünïcode.Local@contoso.com",),
        "unicode.local@contoso.com",
        "Member",
        True,
    ),
)

_NASTY_CONTACTS: tuple[tuple[str, str | None, tuple[str, ...]], ...] = (
    ("Contact Duplicating A User", "dupe@contoso.com", ("SMTP:dupe@contoso.com",)),
    ("Contact In IDN Domain", "kontakt@bücher.example", ("SMTP:kontakt@bücher.example", _X500 + "kontakt")),
    ("Contact Invalid Mail", "contact at example", ("SMTP:contact at example",)),
    ("Contact Without Mail", None, ()),
)


def _nasty_users(new_id: Callable[[], str]) -> list[dict[str, Any]]:
    return [
        {
            "id": new_id(),
            "displayName": name,
            "mail": mail,
            "proxyAddresses": list(proxies),
            "userPrincipalName": upn,
            "userType": utype,
            "accountEnabled": enabled,
        }
        for name, mail, proxies, upn, utype, enabled in _NASTY_USERS
    ]


def _nasty_groups(
    new_id: Callable[[], str], users: list[dict], nasty: list[dict], contacts: list[dict], others: list[dict]
) -> list[dict[str, Any]]:
    """Cycles, a self-loop, nameless groups, odd members and one big group that spans delta pages."""

    def group(name: str | None, mail: str | None = None, proxies: tuple[str, ...] = ()) -> dict[str, Any]:
        return {"id": new_id(), "displayName": name, "mail": mail, "proxyAddresses": list(proxies), "members": []}

    cycle_a, cycle_b = group("Cycle A"), group("Cycle B")
    ring = [group("Ring X"), group("Ring Y"), group("Ring Z")]
    self_loop = group("Self Loop")
    nameless = group(None, "nameless.group@contoso.com", ("SMTP:nameless.group@contoso.com",))
    empty_name = group("")
    idn = group("Bücher Team", "Bücher-Team@BÜCHER.example", ("SMTP:Bücher-Team@BÜCHER.example", "smtp:buecher@contoso.com"))
    dupes = group(
        "Duplicate Alias Group",
        "dupe.group@contoso.com",
        ("SMTP:dupe.group@contoso.com", "smtp:dupe@contoso.com", "smtp:DUPE.GROUP@contoso.com"),
    )
    odd = group("Odd Members", "odd.members@fabrikam.com", ("SMTP:odd.members@fabrikam.com",))
    everyone = group("All Demo Users", "all.users@contoso.com", ("SMTP:all.users@contoso.com", _X500 + "all-users"))
    cycle_a["members"] += [cycle_b["id"], nasty[0]["id"]]
    cycle_b["members"] += [cycle_a["id"], nasty[1]["id"]]
    for i, g in enumerate(ring):
        g["members"] += [ring[(i + 1) % 3]["id"], nasty[2 + i]["id"]]
    self_loop["members"] += [self_loop["id"], nasty[9]["id"]]
    nameless["members"] += [u["id"] for u in nasty[10:13]]
    empty_name["members"] += [nameless["id"]]
    idn["members"] += [nasty[2]["id"], nasty[3]["id"], contacts[1]["id"]]
    dupes["members"] += [nasty[9]["id"], idn["id"]]
    odd["members"] += [c["id"] for c in contacts] + [o["id"] for o in others] + [nasty[13]["id"], nasty[14]["id"], cycle_a["id"]]
    everyone["members"] += [u["id"] for u in users + nasty]
    return [cycle_a, cycle_b, *ring, self_loop, nameless, empty_name, idn, dupes, odd, everyone]


def demo_tenant(seed: int = 7) -> dict[str, list[dict[str, Any]]]:
    """About 3,000 objects over ``DEMO_DOMAINS``, with the nasty cases of the sync rules mixed in:
    mixed case, Unicode IDN domains, whitespace, invalid values, X500/SIP/EUM/SPO/x400 prefixes,
    duplicates, two users sharing a primary address, guests (``#EXT#``), onmicrosoft-only
    mail, users without mail, cyclic nesting, nameless groups, and contacts, devices and service
    principals as members. Nasty objects are findable by their displayName."""
    directory = generate_tenant(2500, seed=seed, domains=DEMO_DOMAINS)
    new_id = _id_factory(random.Random(seed * 7919 + 1))
    nasty = _nasty_users(new_id)
    contacts = [{"id": new_id(), "displayName": n, "mail": m, "proxyAddresses": list(p)} for n, m, p in _NASTY_CONTACTS]
    others = [{"id": new_id(), "displayName": "KIOSK-DEMO-01"}]
    apps = [{"id": new_id(), "displayName": "Demo Mail Relay App"}]
    groups = _nasty_groups(new_id, directory["users"], nasty, contacts, others + apps)
    directory["users"] += nasty
    directory["contacts"] += contacts
    directory["devices"] += others
    directory["servicePrincipals"] += apps
    directory["groups"] += groups
    return directory


DEMO_EXO_TENANT = "contoso.onmicrosoft.com"


def demo_exchange_recipients() -> list[dict[str, Any]]:
    """The recipients that only Exchange Online knows, for the demo's Exchange emulator:
    dynamic distribution groups and mail-enabled public folders (Graph never returns them),
    salted with the nasty ``EmailAddresses`` values (X500:, SIP:, uppercase SMTP:, mixed case,
    an IDN domain, an invalid value, an unprovisioned domain). Shape: ``Get-Recipient``'s
    (``Guid``, ``RecipientTypeDetails``, ``PrimarySmtpAddress``, ``EmailAddresses``, ...)."""
    from devstack.exchange_emulator import recipient

    def guid(n: int) -> str:
        return f"e0c5e0c5-0000-4000-8000-{n:012d}"

    return [
        recipient(guid(1), "DynamicDistributionGroup", "All-Sales@contoso.com", name="All Sales (dynamic)",
                  emails=["SMTP:All-Sales@contoso.com", "smtp:sales-team@fabrikam.com", "X500:/o=ExchangeLabs/ou=Exchange/cn=Recipients/cn=allsales"]),
        recipient(guid(2), "DynamicDistributionGroup", "all-managers@contoso.com", name="All Managers (dynamic)",
                  emails=["SMTP:all-managers@contoso.com", "smtp:managers@bücher.example", "SIP:all-managers@contoso.com"]),
        recipient(guid(3), "PublicFolder", "support@contoso.com", name="Support (public folder)",
                  emails=["SMTP:support@contoso.com", "smtp: Help@Contoso.com ", "smtp:support@elsewhere.org"]),
        recipient(guid(4), "PublicFolder", "invoices@fabrikam.com", name="Invoices (public folder)",
                  emails=["SMTP:invoices@fabrikam.com", "smtp:bad..invoices@fabrikam.com"]),
    ]
