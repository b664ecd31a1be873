"""A dataset read whole from the state (``StateDB.records``) is the records that were written,
and each group id is one string however many records name it (a periodic full reconcile holds
the state's whole users dataset: 300,000 memberships of 10,000 groups are then 10,000 strings)."""

from __future__ import annotations

from hypothesis import given, settings
from hypothesis import strategies as st

from shared.storage.state import StateDB

GIDS = [f"g{i}" for i in range(6)]
users = st.dictionaries(st.text(min_size=1, max_size=8), st.tuples(st.text(min_size=1, max_size=12), st.lists(st.sampled_from(GIDS), unique=True).map(lambda ids: tuple(sorted(ids)))), max_size=30)


@settings(max_examples=60, deadline=None)
@given(users)
def test_records_read_back_as_written_with_one_string_per_group_id(tmp_path_factory, written) -> None:
    db = StateDB(tmp_path_factory.mktemp("state") / "state.db", "file: test")
    try:
        db.apply("users", written, ())
        db.apply("groups", {g: (f"Group {g}", tuple(x for x in GIDS if x < g)[:2]) for g in GIDS}, ())
        for dataset, expected in (("users", written), ("groups", None)):
            got = db.records(dataset)
            if expected is not None:
                assert got == expected
            seen: dict[str, str] = {}
            for _, ids in got.values():
                for gid in ids:
                    assert seen.setdefault(gid, gid) is gid  # the same object wherever it appears
    finally:
        db.close()
