"""Delta-round shapes as real Graph serves them, through the emulator and the product, end to end.

* An updated object: by default Graph serves every selected property the object ever had set,
  changed or not (one never set is left out, one set to null is ``null``); under ``Prefer:
  return=minimal`` only the changed ones ("user: delta", "group: delta", "Default: return the
  same properties as initial delta request"). The product must be right under both shapes: it
  merges, and never reads a missing property as cleared.
* Pages: a round may hold empty pages that still carry a nextLink ("Use delta query", "a
  nextLink ... is true even if the current response may contain an empty result"); a round with
  no change is one empty page with the deltaLink ("Get incremental changes for groups").
* Replication lag ("Processing delays"): a just-created object can be missing from a round and
  show up in a later one; the product sends it when it shows up and deletes nothing meanwhile."""

from __future__ import annotations

import random
from pathlib import Path
from typing import Any

import httpx
import pytest

from devstack.graph_emulator import GraphEmulator
from devstack.sync_receiver import SyncReceiver
from tests.stack import C, EngineStack, G, U, nasty_directory, service_view

USER = "#microsoft.graph.user"


Stack = EngineStack


def _stack(receiver: SyncReceiver, tmp_path: Path, directory: dict[str, Any] | None = None, **kw: Any) -> Stack:
    graph = GraphEmulator(directory if directory is not None else nasty_directory(), **kw)
    graph.start()
    return Stack(graph, receiver, tmp_path / "state")


def _round(client: httpx.Client, url: str, headers: dict[str, str] | None = None) -> tuple[list[dict[str, Any]], str]:
    values: list[dict[str, Any]] = []
    while True:
        page = client.get(url, headers=headers).json()
        values += page["value"]
        if "@odata.nextLink" not in page:
            return values, page["@odata.deltaLink"]
        url = page["@odata.nextLink"]


# --- the emulator serves both shapes ------------------------------------------------------------
def test_an_updated_object_carries_every_selected_property_by_default_and_only_changes_under_return_minimal() -> None:
    directory = {"users": [{"id": "u-1", "mail": "a@contoso.com", "proxyAddresses": ["SMTP:a@contoso.com"]},
                           {"id": "u-2", "proxyAddresses": []}]}  # u-2: mail never set
    with GraphEmulator(directory, delta_properties="selected") as emu, httpx.Client(timeout=10) as client:
        _, link = _round(client, f"{emu.base_url}/users/delta?$select=mail,proxyAddresses,userType")
        emu.upsert_user({"id": "u-1", "mail": None})  # set to null
        emu.upsert_user({"id": "u-2", "proxyAddresses": ["SMTP:b@contoso.com"]})
        full, _ = _round(client, link)
        assert sorted(full, key=lambda o: o["id"]) == [
            {"id": "u-1", "mail": None, "proxyAddresses": ["SMTP:a@contoso.com"]},  # unchanged proxyAddresses too
            {"id": "u-2", "proxyAddresses": ["SMTP:b@contoso.com"]},  # never-set mail and userType: left out
        ]
        minimal, _ = _round(client, link, {"Prefer": "return=minimal, odata.maxpagesize=999"})
        assert sorted(minimal, key=lambda o: o["id"]) == [
            {"id": "u-1", "mail": None},
            {"id": "u-2", "proxyAddresses": ["SMTP:b@contoso.com"]},
        ]
    with pytest.raises(ValueError, match="delta_properties"):
        GraphEmulator(delta_properties="all")


# --- the product under Graph's default shape -----------------------------------------------------
@pytest.mark.parametrize("mode", ["selected", "changed"])
def test_random_churn_under_either_update_shape_leaves_the_service_equal_to_the_directory(receiver, tmp_path, mode: str) -> None:
    rng = random.Random(20261130)
    stack = _stack(receiver, tmp_path, delta_properties=mode, max_page_size=3, max_members_per_page=4)
    graph = stack.graph
    try:
        stack.update()
        assert service_view(receiver) == stack.expected()
        users = [u["id"] for u in graph.snapshot()["users"]]
        groups = [g["id"] for g in graph.snapshot()["groups"]]
        for n in range(10):
            for _ in range(rng.randint(1, 5)):
                op = rng.choice(["mail", "proxy", "member+", "member-", "rename", "new", "delete"])
                if op == "mail":
                    graph.upsert_user({"id": rng.choice(users), "mail": rng.choice([None, f"m{n}@contoso.com", f"x{n}@other.org"])})
                elif op == "proxy":
                    graph.upsert_user({"id": rng.choice(users), "proxyAddresses": rng.choice([[], [f"SMTP:p{n}@fabrikam.com"]])})
                elif op == "member+":
                    graph.add_member(rng.choice(groups), rng.choice(users))
                elif op == "member-":
                    gid = rng.choice(groups)
                    members = next(g["members"] for g in graph.snapshot()["groups"] if g["id"] == gid)
                    if members:
                        graph.remove_member(gid, rng.choice(members))
                elif op == "rename":
                    graph.upsert_group({"id": rng.choice(groups), "displayName": rng.choice([None, "", f"G{n}"])})
                elif op == "new":
                    uid = f"1f000000-0000-0000-0000-{n:06d}{len(users):06d}"
                    graph.upsert_user({"id": uid, "proxyAddresses": [f"SMTP:n{n}@contoso.com"]})  # mail never set
                    users.append(uid)
                elif len(users) > 3:
                    graph.delete_user(users.pop(rng.randrange(len(users))))
            summary = stack.update()
            assert summary["read"]["kind"] == "delta"
            assert service_view(receiver) == stack.expected(), (mode, n)
    finally:
        graph.stop()


# --- pages ----------------------------------------------------------------------------------------
def test_empty_pages_with_next_links_are_followed_to_the_delta_link(receiver, tmp_path) -> None:
    stack = _stack(receiver, tmp_path)
    try:
        stack.update()
        stack.graph.upsert_user({"id": U(7), "mail": "seven@contoso.com"})
        stack.graph.script_round("users", [[], [], [{"id": U(7), "mail": "seven@contoso.com"}], []])
        stack.graph.reset_stats()
        summary = stack.update()
        assert summary["read"]["kind"] == "delta" and summary["read"]["objects"]["users"] == 1
        assert service_view(receiver) == stack.expected() and "seven@contoso.com" in service_view(receiver)["addresses"]
        assert sum(1 for _, t in stack.graph.request_log if t.startswith("/v1.0/users/delta")) == 4  # every scripted page
        quiet = stack.update()  # a round with no change: one empty page with the deltaLink
        assert quiet["read"]["kind"] == "delta" and all(c["added"] == c["removed"] == 0 for c in quiet["datasets"].values())
    finally:
        stack.graph.stop()


# --- replication lag ------------------------------------------------------------------------------
def test_a_just_created_user_missing_from_a_round_is_sent_when_a_later_round_shows_it(receiver, tmp_path) -> None:
    stack = _stack(receiver, tmp_path)
    try:
        stack.update()
        before = service_view(receiver)
        new = "1f000000-0000-0000-0000-00000000abcd"
        stack.graph.upsert_user({"id": new, "mail": "late@contoso.com", "proxyAddresses": []})
        stack.graph.add_member(G(1), new)
        # Not replicated yet: the round that follows shows neither the user nor the membership.
        stack.graph.script_round("users", [[]])
        stack.graph.script_round("groups", [[]])
        lagging = stack.update()
        assert lagging["read"]["kind"] == "delta" and service_view(receiver) == before  # nothing deleted meanwhile
        # Replicated: the next round brings both, a group slice repeating the group's properties.
        stack.graph.script_round("users", [[{"id": new, "mail": "late@contoso.com", "proxyAddresses": []}]])
        stack.graph.script_round("groups", [[{"id": G(1), "displayName": "Sales", "mail": "sales@contoso.com",
                                              "proxyAddresses": ["SMTP:sales@contoso.com"], "members@delta": [{"@odata.type": USER, "id": new}]}]])
        stack.update()
        held = service_view(receiver)
        assert held == stack.expected() and held["users"][new] == {"id": new, "address": "late@contoso.com", "groupIds": [G(1)]}
    finally:
        stack.graph.stop()


# --- members of other types ---------------------------------------------------------------------
def test_members_of_other_types_come_and_go_without_touching_records_and_a_contact_leaves_the_scope(receiver, tmp_path) -> None:
    """members@delta entries typed #microsoft.graph.device, #microsoft.graph.servicePrincipal and
    #microsoft.graph.orgContact ("group: delta": members of any directoryObject type): a device or
    service principal adds nothing to any record (docs/sync-rules.md); an orgContact member
    brings its addresses into SYNC_SCOPE_GROUPS' scope and takes them out when it leaves. The
    delta round and a full read of the same directory agree."""
    stack = _stack(receiver, tmp_path)
    stack.env["SYNC_SCOPE_GROUPS"] = G(1)
    try:
        stack.update()
        before = service_view(receiver)
        assert "ext@fabrikam.com" in before["addresses"]  # C(1), a direct member of G(1)
        device, sp = "41000000-0000-0000-0000-000000000002", "51000000-0000-0000-0000-000000000002"
        stack.graph.upsert_device({"id": device, "displayName": "kiosk"})
        stack.graph.upsert_service_principal({"id": sp, "displayName": "mailer"})
        stack.graph.add_member(G(1), device)
        stack.graph.add_member(G(2), sp)
        summary = stack.update()
        assert summary["read"]["kind"] == "delta" and service_view(receiver) == before  # nothing to send
        stack.graph.remove_member(G(1), C(1))
        stack.graph.remove_member(G(1), "40000000-0000-0000-0000-000000000001")  # the directory's first device
        summary = stack.update()
        after = service_view(receiver)
        assert summary["read"]["kind"] == "delta"
        assert after["addresses"] == before["addresses"] - {"ext@fabrikam.com"}
        assert after["groups"] == before["groups"] and after["users"] == before["users"]
        preview = stack.update("test-update")  # a full read with the same scope: nothing left to change
        assert all(c["added"] == c["removed"] == 0 for c in preview["datasets"].values())
    finally:
        stack.graph.stop()


# --- null, missing and empty ----------------------------------------------------------------------
def test_null_missing_and_empty_mail_and_proxy_addresses_in_first_and_later_rounds(receiver, tmp_path) -> None:
    """``null`` clears a property (Graph: "This includes properties being set to null value"), a
    missing one is kept ("If the property has never been set before it will not be included"; under
    return=minimal: unchanged), and ``[]`` empties proxyAddresses, in the streamed first round and
    in later rounds alike."""
    a, b, c = U(1), U(2), U(3)
    stack = _stack(receiver, tmp_path, {"users": [{"id": a, "mail": None}, {"id": b}, {"id": c, "mail": "c@contoso.com"}]})
    try:
        stack.graph.script_round("users", [[{"id": a, "mail": None, "proxyAddresses": None}, {"id": b}],
                                           [{"id": c, "mail": "c@contoso.com"}]])
        stack.update()
        assert service_view(receiver)["addresses"] == {"c@contoso.com"}
        stack.graph.script_round("users", [[{"id": c, "proxyAddresses": None}, {"id": a, "proxyAddresses": ["SMTP:a@contoso.com"]},
                                            {"id": b, "proxyAddresses": []}]])
        stack.update()
        held = service_view(receiver)
        assert held["addresses"] == {"a@contoso.com", "c@contoso.com"}  # c kept its mail: not in the entry
        assert held["users"][a]["address"] == "a@contoso.com" and held["users"][c]["address"] == "c@contoso.com"
        stack.graph.script_round("users", [[{"id": c, "mail": None}, {"id": a, "proxyAddresses": []}]])
        stack.update()
        assert service_view(receiver) == {"addresses": set(), "groups": {}, "users": {}}
    finally:
        stack.graph.stop()
