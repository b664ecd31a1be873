"""The Graph emulator speaks Graph: paging, $select, members, delta rounds, faults, auth, the CLI."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest

from devstack.graph_emulator import GraphEmulator
from devstack.tenant import DEMO_DOMAINS, demo_tenant, generate_tenant

ROOT = Path(__file__).resolve().parents[1]
JSON = dict[str, Any]


def _uid(prefix: str, n: int) -> str:
    return f"{prefix}-{n:05d}"


def small_directory(users: int = 250) -> dict:
    """A hand-made directory whose ids sort in a known order."""
    return {
        "users": [
            {
                "id": _uid("u", i),
                "displayName": f"User {i}",
                "mail": f"user{i}@contoso.com",
                "proxyAddresses": [f"SMTP:user{i}@contoso.com", f"smtp:u{i}@contoso.onmicrosoft.com"],
                "userPrincipalName": f"user{i}@contoso.com",
                "userType": "Member",
                "accountEnabled": True,
            }
            for i in range(users)
        ],
        "groups": [
            {
                "id": "g-big",
                "displayName": "Big",
                "mail": "big@contoso.com",
                "proxyAddresses": ["SMTP:big@contoso.com"],
                "members": [_uid("u", i) for i in range(users)],
            },
            {
                "id": "g-mixed",
                "displayName": "Mixed",
                "mail": None,
                "proxyAddresses": [],
                "members": ["u-00001", "g-big", "c-1", "d-1", "sp-1"],
            },
            {"id": "g-empty", "displayName": None, "mail": "empty@contoso.com", "proxyAddresses": [], "members": []},
        ],
        "contacts": [
            {"id": "c-1", "displayName": "Contact", "mail": "ext@partner.example", "proxyAddresses": ["SMTP:ext@partner.example"]}
        ],
        "devices": [{"id": "d-1", "displayName": "DESKTOP-1"}],
        "servicePrincipals": [{"id": "sp-1", "displayName": "App"}],
    }


@pytest.fixture
def emulator() -> Iterator[GraphEmulator]:
    emu = GraphEmulator(small_directory(), max_members_per_page=100)
    emu.start()
    yield emu
    emu.stop()


@pytest.fixture(scope="module")
def client() -> Iterator[httpx.Client]:
    """One client for the module: building an httpx client (its TLS context) costs ~0.1 s."""
    with httpx.Client(timeout=10) as c:
        yield c


def read_all(client: httpx.Client, url: str, headers: dict[str, str] | None = None) -> tuple[list[JSON], list[JSON], str | None]:
    """Follow @odata.nextLink to the end: (values, pages, final deltaLink)."""
    values: list[JSON] = []
    pages: list[JSON] = []
    while True:
        resp = client.get(url, headers=headers)
        assert resp.status_code == 200, resp.text
        page = resp.json()
        pages.append(page)
        values += page["value"]
        if "@odata.nextLink" not in page:
            return values, pages, page.get("@odata.deltaLink")
        assert "@odata.deltaLink" not in page
        url = page["@odata.nextLink"]


# --- collections, paging, $select ---------------------------------------------------------------------------
def test_paging_follows_next_links_to_the_end(emulator: GraphEmulator, client: httpx.Client) -> None:
    values, pages, delta = read_all(client, f"{emulator.base_url}/users?$select=id,mail&$top=100")
    assert [len(p["value"]) for p in pages] == [100, 100, 50]
    assert [v["id"] for v in values] == [_uid("u", i) for i in range(250)]  # stable order, no repeats
    assert delta is None
    for page in pages[:-1]:
        assert page["@odata.nextLink"].startswith(emulator.base_url + "/users?")
        assert "$skiptoken=" in page["@odata.nextLink"]
    assert pages[0]["@odata.context"] == f"{emulator.base_url}/$metadata#users(id,mail)"
    assert emulator.request_count == 3


def test_default_page_size_and_headers(emulator: GraphEmulator, client: httpx.Client) -> None:
    resp = client.get(f"{emulator.base_url}/users", headers={"client-request-id": "abc"})
    assert len(resp.json()["value"]) == 100
    assert resp.headers["content-type"].startswith("application/json;odata.metadata=minimal")
    assert resp.headers["request-id"] and resp.headers["client-request-id"] == "abc"


def test_paging_survives_changes_between_pages(emulator: GraphEmulator, client: httpx.Client) -> None:
    first = client.get(f"{emulator.base_url}/users?$top=100").json()
    emulator.delete_user("u-00100")  # the first id of the next page
    emulator.upsert_user({"id": "u-00000a", "mail": "new@contoso.com"})  # sorts into the page already read
    rest, _, _ = read_all(client, first["@odata.nextLink"])
    ids = [v["id"] for v in first["value"] + rest]
    assert len(ids) == len(set(ids)) == 249
    assert "u-00100" not in ids


def test_select_omits_unselected_and_always_has_id(emulator: GraphEmulator, client: httpx.Client) -> None:
    plain = client.get(f"{emulator.base_url}/users?$top=1").json()["value"][0]
    assert "proxyAddresses" not in plain and plain["mail"] == "user0@contoso.com"
    picked = client.get(f"{emulator.base_url}/users?$select=mail,proxyAddresses&$top=1").json()["value"][0]
    assert picked == {
        "id": "u-00000",
        "mail": "user0@contoso.com",
        "proxyAddresses": ["SMTP:user0@contoso.com", "smtp:u0@contoso.onmicrosoft.com"],
    }
    # property names are case-insensitive; a known property the object lacks is null
    odd = client.get(f"{emulator.base_url}/users?$select=MAIL,department&$top=1").json()["value"][0]
    assert odd == {"id": "u-00000", "mail": "user0@contoso.com", "department": None}
    groups = client.get(f"{emulator.base_url}/groups?$select=displayName").json()["value"]
    assert all(set(g) == {"id", "displayName"} for g in groups)


def test_select_serves_extra_properties(emulator: GraphEmulator, client: httpx.Client) -> None:
    emulator.upsert_user({"id": "u-00000", "customFlag": "x"})
    got = client.get(f"{emulator.base_url}/users/u-00000?$select=customFlag").json()
    assert got["customFlag"] == "x" and got["id"] == "u-00000" and "@odata.context" in got


@pytest.mark.parametrize("query", ["$select=id,noSuchProperty", "$top=1000", "$top=0", "$filter=mail eq 'x'"])
def test_bad_queries_are_400_in_graph_shape(emulator: GraphEmulator, client: httpx.Client, query: str) -> None:
    resp = client.get(f"{emulator.base_url}/users?{query}")
    assert resp.status_code == 400
    error = resp.json()["error"]
    assert error["code"] == "Request_BadRequest" and error["message"]
    if "noSuchProperty" in query:
        assert error["message"] == "Could not find a property named 'noSuchProperty' on type 'microsoft.graph.user'."


def test_sdk_style_urls(emulator: GraphEmulator, client: httpx.Client) -> None:
    """msgraph-sdk percent-encodes ``$`` and spells delta as ``delta()``."""
    page = client.get(f"{emulator.base_url}/users?%24select=id%2Cmail&%24top=2").json()
    assert page["value"][0] == {"id": "u-00000", "mail": "user0@contoso.com"}
    values, _, delta = read_all(client, f"{emulator.base_url}/contacts/delta()?%24select=id,mail")
    assert values == [{"id": "c-1", "mail": "ext@partner.example"}] and "/contacts/delta()?" in delta


# --- members ---------------------------------------------------------------------------------------------------
def test_members_carry_odata_type(emulator: GraphEmulator, client: httpx.Client) -> None:
    values, _, _ = read_all(client, f"{emulator.base_url}/groups/g-mixed/members?$select=id,mail")
    assert {v["id"]: v["@odata.type"] for v in values} == {
        "u-00001": "#microsoft.graph.user",
        "g-big": "#microsoft.graph.group",
        "c-1": "#microsoft.graph.orgContact",
        "d-1": "#microsoft.graph.device",
        "sp-1": "#microsoft.graph.servicePrincipal",
    }
    assert next(v for v in values if v["id"] == "c-1")["mail"] == "ext@partner.example"
    assert "mail" not in next(v for v in values if v["id"] == "d-1")  # devices have no mail


def test_members_page_and_404(emulator: GraphEmulator, client: httpx.Client) -> None:
    values, pages, _ = read_all(client, f"{emulator.base_url}/groups/g-big/members?$select=id&$top=999")
    assert len(values) == 250 and len(pages) == 1
    values, pages, _ = read_all(client, f"{emulator.base_url}/groups/g-big/members?$top=100")
    assert len(pages) == 3 and len({v["id"] for v in values}) == 250
    resp = client.get(f"{emulator.base_url}/groups/nope/members")
    assert resp.status_code == 404 and resp.json()["error"]["code"] == "Request_ResourceNotFound"


# --- delta -------------------------------------------------------------------------------------------------------
def test_users_delta_first_round_then_partial_changes(emulator: GraphEmulator, client: httpx.Client) -> None:
    first, pages, delta_link = read_all(
        client, f"{emulator.base_url}/users/delta?$select=id,mail,proxyAddresses", headers={"Prefer": "odata.maxpagesize=100"}
    )
    assert len(first) == 250 and len(pages) == 3 and delta_link and "$deltatoken=" in delta_link
    assert set(first[0]) == {"id", "mail", "proxyAddresses"}
    again, _, same = read_all(client, delta_link)
    assert again == [] and same

    emulator.upsert_user({"id": "u-00003", "mail": "renamed@contoso.com"})  # selected property changes
    emulator.upsert_user({"id": "u-00004", "displayName": "Not selected"})  # unselected: not reported
    emulator.upsert_user({"id": "u-00005", "mail": "user5@contoso.com"})  # no actual change
    emulator.upsert_user({"id": "u-new", "displayName": "New", "mail": "new@contoso.com", "proxyAddresses": []})
    emulator.delete_user("u-00006")
    emulator.delete_user("u-00007", permanent=True)
    changes, _, next_link = read_all(client, delta_link, headers={"Prefer": "return=minimal"})
    assert {c["id"]: c for c in changes} == {
        "u-00003": {"id": "u-00003", "mail": "renamed@contoso.com"},  # return=minimal: id + what changed
        "u-new": {"id": "u-new", "mail": "new@contoso.com", "proxyAddresses": []},
        "u-00006": {"id": "u-00006", "@removed": {"reason": "changed"}},
        "u-00007": {"id": "u-00007", "@removed": {"reason": "deleted"}},
    }
    assert read_all(client, next_link)[0] == []
    assert read_all(client, delta_link, headers={"Prefer": "return=minimal"})[0] == changes  # an old link can be replayed
    # Graph's default shape: an updated object with every selected property it has, changed or not
    default = {c["id"]: c for c in read_all(client, delta_link)[0]}
    assert default["u-00003"] == {"id": "u-00003", "mail": "renamed@contoso.com",
                                  "proxyAddresses": ["SMTP:user3@contoso.com", "smtp:u3@contoso.onmicrosoft.com"]}
    assert {k: v for k, v in default.items() if k != "u-00003"} == {c["id"]: c for c in changes if c["id"] != "u-00003"}


def test_groups_delta_splits_big_groups_and_tracks_members(emulator: GraphEmulator, client: httpx.Client) -> None:
    url = f"{emulator.base_url}/groups/delta?$select=displayName,mail,members"
    values, pages, delta_link = read_all(client, url, headers={"Prefer": "odata.maxpagesize=999"})
    big = [v for v in values if v["id"] == "g-big"]
    assert len(big) == 3 and all(v["displayName"] == "Big" for v in big)  # same properties on each slice
    assert max(sum(len(v.get("members@delta", [])) for v in p["value"]) for p in pages) == 100
    members = [m for v in big for m in v["members@delta"]]
    assert len(members) == 250 and {m["@odata.type"] for m in members} == {"#microsoft.graph.user"}
    mixed = next(v for v in values if v["id"] == "g-mixed")
    assert len(mixed["members@delta"]) == 5
    empty = next(v for v in values if v["id"] == "g-empty")
    assert "members@delta" not in empty and empty["displayName"] is None

    emulator.add_member("g-mixed", "u-00009")
    emulator.remove_member("g-mixed", "c-1")
    emulator.delete_user("u-00001")  # also leaves g-big and g-mixed
    emulator.upsert_group({"id": "g-empty", "members": ["u-00002"], "mail": "empty@contoso.com"})
    changes, _, _ = read_all(client, delta_link, headers={"Prefer": "return=minimal"})
    by_id = {c["id"]: c for c in changes}
    # Graph's default shape adds each slice's selected properties; the members@delta are the same
    default = {c["id"]: c for c in read_all(client, delta_link)[0]}
    assert default.keys() == by_id.keys() and all(default[k]["members@delta"] == by_id[k]["members@delta"] for k in by_id)
    assert default["g-mixed"]["displayName"] == next(v for v in values if v["id"] == "g-mixed")["displayName"]
    assert by_id["g-mixed"] == {
        "id": "g-mixed",
        "members@delta": [
            {"@odata.type": "#microsoft.graph.orgContact", "id": "c-1", "@removed": {"reason": "deleted"}},
            {"@odata.type": "#microsoft.graph.user", "id": "u-00001", "@removed": {"reason": "deleted"}},
            {"@odata.type": "#microsoft.graph.user", "id": "u-00009"},
        ],
    }
    assert by_id["g-big"]["members@delta"] == [{"@odata.type": "#microsoft.graph.user", "id": "u-00001", "@removed": {"reason": "deleted"}}]
    assert by_id["g-empty"] == {"id": "g-empty", "members@delta": [{"@odata.type": "#microsoft.graph.user", "id": "u-00002"}]}


def test_incremental_member_changes_split_across_pages(client: httpx.Client) -> None:
    with GraphEmulator(small_directory(10), max_members_per_page=100) as emu:
        _, _, link = read_all(client, f"{emu.base_url}/groups/delta?$select=id,members")
        for i in range(250):
            emu.upsert_user({"id": f"new-{i:03d}", "mail": f"n{i}@contoso.com"})
            emu.add_member("g-mixed", f"new-{i:03d}")
        values, pages, _ = read_all(client, link)
        assert len(pages) == 3 and [v["id"] for v in values] == ["g-mixed"] * 3
        assert len({m["id"] for v in values for m in v["members@delta"]}) == 250


def test_changes_during_a_round_come_again_next_round(emulator: GraphEmulator, client: httpx.Client) -> None:
    page = client.get(f"{emulator.base_url}/users/delta?$select=mail", headers={"Prefer": "odata.maxpagesize=100"}).json()
    emulator.upsert_user({"id": "u-00001", "mail": "changed-mid-round@contoso.com"})  # already served
    rest, _, delta_link = read_all(client, page["@odata.nextLink"])
    assert len(page["value"]) + len(rest) == 250
    changes, _, _ = read_all(client, delta_link)
    assert changes == [{"id": "u-00001", "mail": "changed-mid-round@contoso.com"}]


def test_default_groups_delta_tracks_members_and_latest_token(emulator: GraphEmulator, client: httpx.Client) -> None:
    values, _, _ = read_all(client, f"{emulator.base_url}/groups/delta")
    assert any("members@delta" in v for v in values) and all("proxyAddresses" not in v for v in values)
    latest = client.get(f"{emulator.base_url}/users/delta?$deltatoken=latest&$select=mail").json()
    assert latest["value"] == [] and "@odata.deltaLink" in latest
    emulator.upsert_user({"id": "u-00002", "mail": "x@contoso.com"})
    assert read_all(client, latest["@odata.deltaLink"])[0] == [{"id": "u-00002", "mail": "x@contoso.com"}]


def test_expired_tokens_answer_410_with_location(emulator: GraphEmulator, client: httpx.Client) -> None:
    page = client.get(f"{emulator.base_url}/users/delta?$select=mail", headers={"Prefer": "odata.maxpagesize=100"}).json()
    _, _, delta_link = read_all(client, f"{emulator.base_url}/contacts/delta?$select=mail")
    emulator.expire_delta_tokens()
    for url in (page["@odata.nextLink"], delta_link):
        resp = client.get(url)
        assert resp.status_code == 410
        assert resp.json()["error"]["code"] == "syncStateNotFound"
        assert "$deltatoken" not in resp.headers["Location"] and "/delta?" in resp.headers["Location"]
    restart = client.get(resp.headers["Location"])  # the Location restarts a full round
    assert restart.status_code == 200 and restart.json()["value"][0]["id"] == "c-1"


def test_delta_token_ttl(client: httpx.Client) -> None:
    with GraphEmulator(small_directory(3), delta_token_ttl=0.2) as emu:
        _, _, link = read_all(client, f"{emu.base_url}/users/delta")
        assert client.get(link).status_code == 200
        time.sleep(0.3)
        assert client.get(link).status_code == 410


def test_foreign_or_garbage_tokens(emulator: GraphEmulator, client: httpx.Client) -> None:
    with GraphEmulator(small_directory(3)) as other:
        _, _, link = read_all(client, f"{other.base_url}/users/delta")
    foreign = link.replace(other.base_url, emulator.base_url)
    assert client.get(foreign).status_code == 410  # another instance's sync state is gone
    assert client.get(f"{emulator.base_url}/users/delta?$deltatoken=garbage").status_code == 400


def _merge(model: dict[str, JSON], values: list[JSON]) -> None:
    """A minimal delta client: merge partial objects, apply @removed and members@delta."""
    for value in values:
        if "@removed" in value:
            model.pop(value["id"], None)
            continue
        obj = model.setdefault(value["id"], {"members": set()})
        for key, val in value.items():
            if key == "members@delta":
                for ref in val:
                    (obj["members"].discard if "@removed" in ref else obj["members"].add)(ref["id"])
            elif key != "id":
                obj[key] = val


def _expected(emu: GraphEmulator, coll: str, props: tuple[str, ...]) -> dict[str, JSON]:
    snap = emu.snapshot()
    return {o["id"]: {**{p: o.get(p) for p in props}, "members": set(o.get("members", ()))} for o in snap[coll]}


def test_delta_rounds_reproduce_the_directory_under_random_changes(client: httpx.Client) -> None:
    """Small pages and member budgets stress the cursors; changes land between rounds and mid-round."""
    import random

    rng = random.Random(11)
    tenant = generate_tenant(1500, seed=2)
    with GraphEmulator(tenant, max_members_per_page=37) as emu:
        urls = {
            "groups": f"{emu.base_url}/groups/delta()?$select=displayName,mail,members",
            "users": f"{emu.base_url}/users/delta?$select=mail,proxyAddresses",
        }
        props = {"groups": ("displayName", "mail"), "users": ("mail", "proxyAddresses")}
        models: dict[str, dict[str, JSON]] = {"groups": {}, "users": {}}
        user_ids = [u["id"] for u in tenant["users"]]
        group_ids = [g["id"] for g in tenant["groups"]]

        def mutate(n: int) -> None:
            for _ in range(n):
                roll = rng.random()
                gid = rng.choice(group_ids)
                if roll < 0.3:
                    emu.add_member(gid, rng.choice(user_ids))
                elif roll < 0.5:
                    members = emu.snapshot()["groups"]
                    group = next(g for g in members if g["id"] == gid)
                    if group["members"]:
                        emu.remove_member(gid, rng.choice(group["members"]))
                elif roll < 0.65:
                    emu.upsert_user({"id": rng.choice(user_ids), "mail": f"m{rng.random()}@contoso.com"})
                elif roll < 0.75:
                    uid = user_ids.pop(rng.randrange(len(user_ids)))
                    emu.delete_user(uid, permanent=rng.random() < 0.5)
                elif roll < 0.85:
                    uid = f"new-{rng.random()}"
                    emu.upsert_user({"id": uid, "mail": f"{uid}@contoso.com", "proxyAddresses": [f"SMTP:{uid}@contoso.com"]})
                    user_ids.append(uid)
                    emu.add_member(gid, uid)
                elif roll < 0.9 and len(group_ids) > 10:
                    emu.delete_group(group_ids.pop(group_ids.index(gid)))
                else:
                    emu.upsert_group({"id": gid, "displayName": f"Renamed {rng.random()}"})

        links = {}
        for coll, url in urls.items():
            page = client.get(url, headers={"Prefer": "odata.maxpagesize=13"}).json()
            mutate(20)  # changes in the middle of the first round
            rest, _, links[coll] = read_all(client, page["@odata.nextLink"])
            _merge(models[coll], page["value"] + rest)
        for _ in range(3):
            mutate(60)
            for coll in urls:
                values, _, links[coll] = read_all(client, links[coll])
                _merge(models[coll], values)
                assert models[coll] == _expected(emu, coll, props[coll]), coll


# --- faults, latency, auth -------------------------------------------------------------------------------------
@pytest.mark.parametrize(
    ("kind", "status", "code"),
    [
        ("429", 429, "TooManyRequests"),
        ("429-unknown", 429, "UnknownError"),
        ("429-activity", 429, "activityLimitReached"),
        ("503", 503, "serviceNotAvailable"),
        ("504", 504, "UnknownError"),
        ("500", 500, "generalException"),
        ("410", 410, "syncStateNotFound"),
        ("410-resync", 410, "resyncRequired"),
        ("400-syncstate", 400, "syncStateNotFound"),
        ("400-expired-page-token", 400, "Directory_ExpiredPageToken"),
        ("400-resync-inner", 400, "invalidRequest"),
        ("401-expired-token", 401, "InvalidAuthenticationToken"),
    ],
)
def test_error_faults(emulator: GraphEmulator, client: httpx.Client, kind: str, status: int, code: str) -> None:
    emulator.inject_fault(kind, path_contains="/users/delta", times=2, retry_after=7)
    assert client.get(f"{emulator.base_url}/users?$top=1").status_code == 200  # does not match
    for _ in range(2):
        resp = client.get(f"{emulator.base_url}/users/delta")
        assert resp.status_code == status and resp.json()["error"]["code"] == code
        assert resp.headers["request-id"]
        if status in (429, 503):
            assert resp.headers["Retry-After"] == "7"
        if status == 410:
            assert resp.headers["Location"].endswith("/users/delta")
        if status == 401:
            assert resp.headers["WWW-Authenticate"].startswith("Bearer ")
        inner = resp.json()["error"]["innerError"]
        assert inner.get("code") == {"400-resync-inner": "resyncRequired", "429-activity": "throttledRequest"}.get(kind) and inner["request-id"]
        if status == 504:
            assert "Retry-After" not in resp.headers
    assert client.get(f"{emulator.base_url}/users/delta").status_code == 200


def test_a_throttling_answer_without_retry_after(emulator: GraphEmulator, client: httpx.Client) -> None:
    emulator.inject_fault("429", path_contains="/users/delta", retry_after=None)
    resp = client.get(f"{emulator.base_url}/users/delta")
    assert resp.status_code == 429 and "Retry-After" not in resp.headers


def test_a_failed_page_can_be_fetched_again(emulator: GraphEmulator, client: httpx.Client) -> None:
    first = client.get(f"{emulator.base_url}/users/delta", headers={"Prefer": "odata.maxpagesize=100"}).json()
    emulator.inject_fault("503", path_contains="$skiptoken")
    assert client.get(first["@odata.nextLink"]).status_code == 503
    rest, _, _ = read_all(client, first["@odata.nextLink"])  # tokens are stateless: the retry gets the same page
    assert len(first["value"]) + len(rest) == 250


def test_drop_and_malformed_faults(emulator: GraphEmulator, client: httpx.Client) -> None:
    emulator.inject_fault("drop", path_contains="/groups")
    emulator.inject_fault("malformed")
    with pytest.raises(httpx.TransportError):
        client.get(f"{emulator.base_url}/groups")
    resp = client.get(f"{emulator.base_url}/users")  # the queue's next matching fault
    assert resp.status_code == 200
    with pytest.raises(json.JSONDecodeError):
        json.loads(resp.content)
    assert client.get(f"{emulator.base_url}/groups").status_code == 200
    assert len(emulator.request_log) == 3 and emulator.request_log[0] == ("GET", "/v1.0/groups")


def test_http_date_retry_after_and_bad_kind(emulator: GraphEmulator, client: httpx.Client) -> None:
    emulator.inject_fault("429", retry_after="Wed, 21 Oct 2015 07:28:00 GMT")
    assert client.get(f"{emulator.base_url}/users").headers["Retry-After"] == "Wed, 21 Oct 2015 07:28:00 GMT"
    with pytest.raises(ValueError, match="unknown fault kind"):
        emulator.inject_fault("teapot")


def test_latency_per_request(client: httpx.Client) -> None:
    with GraphEmulator(small_directory(3), latency=0.15) as emu:
        start = time.perf_counter()
        client.get(f"{emu.base_url}/users")
        client.get(f"{emu.base_url}/groups")
        assert time.perf_counter() - start >= 0.3


def test_concurrent_requests_overlap_their_latency(client: httpx.Client) -> None:
    with GraphEmulator(small_directory(3), latency=0.3) as emu:
        start = time.perf_counter()
        threads = [threading.Thread(target=lambda: client.get(f"{emu.base_url}/users")) for _ in range(4)]
        for t in threads:
            t.start()
        for t in threads:
            t.join()
        assert time.perf_counter() - start < 1.0  # 4 x 0.3 s served in parallel
        assert emu.request_count == 4


def test_bearer_auth(client: httpx.Client) -> None:
    with GraphEmulator(small_directory(3), require_auth=True) as emu:
        resp = client.get(f"{emu.base_url}/users")
        assert resp.status_code == 401 and resp.json()["error"]["code"] == "InvalidAuthenticationToken"
        assert client.get(f"{emu.base_url}/users", headers={"Authorization": "Bearer abc"}).status_code == 200


# --- mutations, snapshot, admin API --------------------------------------------------------------------------------
def test_snapshot_is_a_deep_copy_in_the_team_model(emulator: GraphEmulator) -> None:
    snap = emulator.snapshot()
    assert set(snap) == {"users", "groups", "contacts", "devices", "servicePrincipals"}
    snap["users"][0]["proxyAddresses"].append("smtp:mutated@x")
    snap["groups"][0]["members"].clear()
    again = emulator.snapshot()
    assert again["users"][0]["proxyAddresses"] == ["SMTP:user0@contoso.com", "smtp:u0@contoso.onmicrosoft.com"]
    assert len(again["groups"][0]["members"]) == 250
    emulator.upsert_group({"id": "g-new", "displayName": "New", "mail": None, "proxyAddresses": [], "members": ["u-00001"]})
    emulator.delete_user("u-00001")
    after = emulator.snapshot()
    assert next(g for g in after["groups"] if g["id"] == "g-new")["members"] == []
    with pytest.raises(KeyError):
        emulator.delete_user("u-00001")
    with pytest.raises(ValueError):
        emulator.upsert_contact({"id": "u-00002"})  # an id belongs to one collection


def test_admin_endpoints(emulator: GraphEmulator, client: httpx.Client) -> None:
    admin = emulator.base_url.replace("/v1.0", "/_emulator")
    _, _, link = read_all(client, f"{emulator.base_url}/users/delta?$select=mail")
    ops = [
        {"op": "upsert_user", "args": {"obj": {"id": "u-00001", "mail": "admin@contoso.com"}}},
        {"op": "add_member", "args": {"group_id": "g-empty", "member_id": "u-00001"}},
        {"op": "delete_contact", "args": {"id": "c-1"}},
    ]
    assert client.post(f"{admin}/mutations", json=ops).json()["applied"] == 3
    assert read_all(client, link)[0] == [{"id": "u-00001", "mail": "admin@contoso.com"}]
    assert client.post(f"{admin}/mutations", json=[{"op": "explode"}]).status_code == 400
    client.post(f"{admin}/faults", json={"kind": "503", "path_contains": "/groups", "retry_after": 2})
    assert client.get(f"{emulator.base_url}/groups").status_code == 503
    client.post(f"{admin}/expire-delta-tokens")
    assert client.get(link).status_code == 410
    stats = client.get(f"{admin}/stats").json()
    assert stats["requestCount"] == emulator.request_count and stats["objects"]["contacts"] == 0
    assert client.post(f"{admin}/stats/reset").status_code == 200 and emulator.request_count == 0


# --- the tenant generator and the CLI -------------------------------------------------------------------------------
def test_generate_tenant_is_deterministic_and_realistic() -> None:
    tenant = generate_tenant(2000, seed=5)
    assert tenant == generate_tenant(2000, seed=5) and tenant != generate_tenant(2000, seed=6)
    users, groups = tenant["users"], tenant["groups"]
    assert len(users) == 2000 and len(groups) == 200 and len(tenant["contacts"]) == 100
    assert set(users[0]) == {"id", "displayName", "mail", "proxyAddresses", "userPrincipalName", "userType", "accountEnabled"}
    assert set(groups[0]) == {"id", "displayName", "mail", "proxyAddresses", "members"}
    proxies = [p for u in users for p in u["proxyAddresses"]]
    for prefix in ("SMTP:", "smtp:", "X500:", "SIP:"):
        assert any(p.startswith(prefix) for p in proxies), prefix
    assert any(p.endswith(".onmicrosoft.com") for p in proxies)
    guests = [u for u in users if u["userType"] == "Guest"]
    assert guests and all("#EXT#@" in u["userPrincipalName"] for u in guests)
    assert any(u["mail"] is None for u in users)
    memberships = sum(len(g["members"]) for g in groups)
    assert 5000 < memberships < 7000
    ids = {c: {o["id"] for o in tenant[c]} for c in tenant}
    members = {m for g in groups for m in g["members"]}
    for coll in ("groups", "contacts", "devices", "servicePrincipals"):
        assert members & ids[coll], f"no {coll} among members"
    assert len(set().union(*ids.values())) == sum(len(v) for v in tenant.values())  # ids are unique


def test_demo_tenant_has_the_nasty_cases(client: httpx.Client) -> None:
    demo = demo_tenant()
    assert demo == demo_tenant() and "bücher.example" in DEMO_DOMAINS
    users = {u["displayName"]: u for u in demo["users"]}
    assert users["Shared Primary A"]["mail"].lower() == users["Shared Primary B"]["mail"].lower()
    assert "@bücher.example" in users["Anna Bücher (IDN)"]["mail"]
    groups = {g["displayName"]: g for g in demo["groups"]}
    assert groups["Cycle A"]["id"] in groups["Cycle B"]["members"] and groups["Cycle B"]["id"] in groups["Cycle A"]["members"]
    assert 2500 < len(demo["users"]) < 3000
    with GraphEmulator(demo) as emu:  # it loads, and serves Unicode as UTF-8
        got = client.get(f"{emu.base_url}/users/{users['Anna Bücher (IDN)']['id']}?$select=mail").json()
        assert got["mail"] == "anna@bücher.example"


def test_cli_prints_ready_and_serves(client: httpx.Client) -> None:
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    proc = subprocess.Popen(
        [sys.executable, "-m", "devstack.graph_emulator", "--port", "0", "--users", "50", "--groups", "5", "--seed", "3"],
        cwd=ROOT,
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    try:
        line = proc.stdout.readline().strip()  # type: ignore[union-attr]
        assert line.startswith("READY http://127.0.0.1:") and line.endswith("/v1.0"), line
        base = line.split()[1]
        values, _, _ = read_all(client, f"{base}/users?$select=id,mail&$top=20")
        assert len(values) == 50
        admin = base.replace("/v1.0", "/_emulator")
        assert client.get(f"{admin}/stats").json()["requestCount"] == 3
    finally:
        proc.send_signal(signal.SIGTERM)
        assert proc.wait(timeout=10) == 0


# --- scripted delta rounds (the shapes Graph documents within one round) ------------------------------------------
def test_a_scripted_round_serves_its_pages_in_order_then_a_working_delta_link(emulator: GraphEmulator, client: httpx.Client) -> None:
    user = "#microsoft.graph.user"
    users = [[{"id": "u-00001", "mail": "old@contoso.com"}, {"id": "u-00002", "@removed": {"reason": "changed"}}],
             [{"id": "u-00001", "mail": "new@contoso.com"}]]  # repeated later with its newer state
    groups = [[{"id": "g-mixed", "displayName": "Before", "members@delta": [{"@odata.type": user, "id": "u-00003"}]}],
              [{"id": "u-x", "displayName": "other"}],  # another object between the slices
              [{"id": "g-mixed", "displayName": "After",
                "members@delta": [{"@odata.type": user, "id": "u-00003", "@removed": {"reason": "deleted"}}]}]]
    emulator.script_round("users", users)
    emulator.script_round("groups", groups)
    got, pages, link = read_all(client, f"{emulator.base_url}/users/delta?$select=id,mail,proxyAddresses")
    assert [p["value"] for p in pages] == users and got == users[0] + users[1]
    assert link and read_all(client, link)[0] == []  # the model did not change: nothing after the round
    gpages = read_all(client, f"{emulator.base_url}/groups/delta?$select=displayName,members")[1]
    assert [p["value"] for p in gpages] == groups
    assert len(read_all(client, f"{emulator.base_url}/users/delta?$select=mail")[0]) == 250  # the next round is the model's again

    emulator.script_round("contacts", [[{"id": "c-1", "@removed": {"reason": "deleted"}}]])
    emulator.expire_delta_tokens()
    assert client.get(link).status_code == 410  # a scripted round's link expires like any other
    assert read_all(client, f"{emulator.base_url}/contacts/delta")[0] == [{"id": "c-1", "@removed": {"reason": "deleted"}}]
    admin = emulator.base_url.replace("/v1.0", "/_emulator")
    body = {"collection": "users", "pages": [[{"id": "u-00009", "mail": "a@contoso.com"}]]}
    assert client.post(f"{admin}/script-round", json=body).status_code == 200
    assert read_all(client, f"{emulator.base_url}/users/delta")[0] == [{"id": "u-00009", "mail": "a@contoso.com"}]
    with pytest.raises(ValueError, match="string id"):
        emulator.script_round("users", [[{"mail": "no id"}]])
    with pytest.raises(ValueError, match="groups only"):
        emulator.script_round("users", [[{"id": "u-1", "members@delta": []}]])
    assert client.post(f"{admin}/script-round", json={"collection": "nope", "pages": []}).status_code == 400
