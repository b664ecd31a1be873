"""The delta path reads its keys in chunks of 500 (``shared/model/loading.py`` ``CHUNK``):
the records of keys that span several chunks, with duplicates and unknown keys, are exactly
those of the whole-directory projection, and ``StateDB.values`` returns every stored key."""

from __future__ import annotations

from shared.model.directory import Affected, Round, scratch_cache
from shared.model.loading import CHUNK
from shared.storage.state import StateDB

PROVISIONED = ["contoso.com"]


def _cache(changed: bool = False):
    """1,300 users (every seventh shares a primary address with the user before it, every
    eleventh has none), 120 groups with nested groups and users as members."""
    users = []
    for i in range(1300):
        user = {"id": f"u{i:05d}", "userPrincipalName": f"u{i}@contoso.onmicrosoft.com"}
        if i % 11:
            user["mail"] = f"user{i - 1 if i % 7 == 0 else i}@contoso.com"
        if changed and i % 2 == 0:  # the change of the delta round below
            user["mail"] = f"new{i}@contoso.com"
        if not (changed and i == 1):
            users.append(user)
    groups = [
        {"id": f"g{j:04d}", "displayName": f"Group {j}", "mail": f"group{j}@contoso.com",
         "members@delta": [{"@odata.type": "#microsoft.graph.user", "id": f"u{k:05d}"} for k in range(j, 1300, 97)]
         + ([{"@odata.type": "#microsoft.graph.group", "id": f"g{j // 2:04d}"}] if j else [])}
        for j in range(120)
    ]
    rnd = Round()
    for u in users:
        rnd.take("users", u)
    for g in groups:
        rnd.take("groups", g)
    cache = scratch_cache(PROVISIONED)
    cache.apply_round(rnd, Affected())
    return cache


def test_desired_over_many_chunks_is_the_whole_projection():
    cache = _cache()
    try:
        for dataset in ("addresses", "groups", "users"):
            whole = cache.records(dataset)
            assert len(whole) > CHUNK or dataset == "groups"
            keys = sorted(whole) + ["missing@contoso.com", "g9999", "u99999"] + sorted(whole)[:3]
            got = cache.desired(dataset, keys)
            assert list(got) == list(dict.fromkeys(keys))
            assert {k: v for k, v in got.items() if v is not None} == whole
    finally:
        cache.conn.close()


def test_a_delta_round_over_many_chunks_leaves_the_cache_a_full_read_builds():
    cache = _cache()
    try:
        rnd = Round()
        for i in range(0, 1300, 2):  # 650 users change, over two chunks of the prefetch
            rnd.take("users", {"id": f"u{i:05d}", "mail": f"new{i}@contoso.com"})
        rnd.take("users", {"id": "u00001", "@removed": {"reason": "deleted"}})
        affected = Affected()
        cache.apply_round(rnd, affected)
        full = _cache(changed=True)
        try:
            for dataset in ("addresses", "groups", "users"):
                assert cache.records(dataset) == full.records(dataset)
            assert cache.excluded() == full.excluded()
        finally:
            full.conn.close()
        assert cache.records("users")["u00002"].address == "new2@contoso.com"
        assert "u00001" in affected.users
        assert {f"user{i}@contoso.com" for i in range(0, 1300, 2) if i % 11 and i % 7} <= affected.addresses
    finally:
        cache.conn.close()


def test_values_returns_every_stored_key_across_chunks(tmp_path):
    db = StateDB(tmp_path / "state.db", "file: test")
    try:
        records = {f"a{i:05d}@contoso.com": () for i in range(1234)}
        db.apply("addresses", records, ())
        keys = [*records, "absent@contoso.com", *list(records)[:5]]
        assert db.values("addresses", keys) == records
        assert db.values("addresses", []) == {}
    finally:
        db.conn.close()
