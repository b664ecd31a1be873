"""The sending stage's fast paths write exactly what their references write, over generated
records (hypothesis): keys and names in any Unicode (non-ASCII, lone surrogates, quotes,
control characters), any number of ids, the marker of an unknown record.

- ``api_records`` (shared/target/syncapi.py) writes the JSON of ``to_api_record`` per record (shared/model/records.py);
- ``request_body``'s bytes == ``json.dumps(..., ensure_ascii=False, separators=(",", ":"))``,
  gzip-compressed above ``GZIP_ABOVE_BYTES`` (docs/sync-api.md, "1. Transport"), and the
  Idempotency-Key of a document == the key of those bytes;
- ``_upsert_rows`` (shared/storage/codec.py) stores the rows ``_encode`` writes per record,
  and they read back;
- a confirmed batch's journal line (``StateDB.journal_entry``) == the line of the entry as it
  was built before (values copied into lists), through both writers (``fastjson`` for
  ``file:``, ``json`` for ``blob:``), and it replays to the same records."""

from __future__ import annotations

import gzip
import json
import sqlite3
from pathlib import Path
from typing import Any

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from shared.common import fastjson
from shared.model.records import AddressRecord, GroupRecord, UserRecord, to_api_record
from shared.send import idempotency_key
from shared.storage.codec import UNKNOWN, UNKNOWN_TEXT, _decode, _encode, _upsert_rows
from shared.storage.state import SCHEMA, StateDB
from shared.target.syncapi import GZIP_ABOVE_BYTES, api_records, changes_body, request_body

text = st.text(st.characters(codec=None, categories=None), max_size=10) | st.sampled_from(
    ["\ud800", "a\udfffb", '"\\\x00\x1f\x7f\u2028', "", "Zürich – 東京", "\U0001f600"])
ids = st.lists(text, max_size=4).map(tuple)
VALUES = {
    "addresses": st.builds(AddressRecord),
    "groups": st.builds(GroupRecord, text, ids),
    "users": st.builds(UserRecord, text, ids),
}


@st.composite
def batches(draw: Any, unknown: bool = False) -> tuple[str, dict[str, tuple], list[str]]:
    dataset = draw(st.sampled_from(sorted(VALUES)))
    value = VALUES[dataset] | st.just(UNKNOWN) if unknown else VALUES[dataset]
    upsert = draw(st.dictionaries(text, value, max_size=6))
    return dataset, upsert, draw(st.lists(text, max_size=3))


def _outcome(encode: Any, *args: Any) -> Any:
    """The result, or the type of the error (a lone surrogate cannot be UTF-8 either way)."""
    try:
        return encode(*args)
    except (UnicodeEncodeError, TypeError) as exc:
        return type(exc)


@settings(max_examples=800, deadline=None)
@given(batches())
def test_api_records_are_to_api_record(batch: tuple[str, dict[str, tuple], list[str]]) -> None:
    dataset, upsert, _ = batch
    items = list(upsert.items())
    # Key order too: the body's bytes, and so its Idempotency-Key, follow it. An id list is the
    # record's tuple there, the same JSON array as to_api_record's list (through both writers).
    fast, reference = api_records(dataset, items), [to_api_record(dataset, k, v) for k, v in items]
    assert [list(r) for r in fast] == [list(r) for r in reference]
    assert json.dumps(fast) == json.dumps(reference)
    assert _outcome(fastjson.dumps_bytes, fast) == _outcome(fastjson.dumps_bytes, reference)


def test_api_records_refuse_an_unknown_dataset_as_to_api_record_does() -> None:
    with pytest.raises(ValueError, match="unknown dataset"):
        api_records("contacts", [("k", ())])


@settings(max_examples=800, deadline=None)
@given(batches())
def test_request_body_is_the_json_of_the_body_and_its_key_is_the_key_of_its_bytes(batch: tuple[str, dict[str, tuple], list[str]]) -> None:
    dataset, upsert, deletes = batch
    doc = changes_body(dataset, list(upsert.items()), deletes)
    reference = _outcome(lambda: json.dumps(doc, ensure_ascii=False, separators=(",", ":")).encode("utf-8"))
    encoded = _outcome(request_body, doc)
    if isinstance(reference, type):  # a lone surrogate: neither way has a body to send
        assert encoded is reference
        return
    assert encoded.raw == reference
    assert gzip.decompress(encoded.content) == reference if len(reference) > GZIP_ABOVE_BYTES else encoded.content == reference
    assert idempotency_key("lineage:3:7", dataset, doc) == idempotency_key("lineage:3:7", dataset, encoded.raw)


def test_a_large_body_is_gzipped_and_its_key_hashes_the_uncompressed_bytes() -> None:
    doc = changes_body("users", [(f"u{i}", UserRecord(f"user{i}@contoso.com", ("g1", "g2"))) for i in range(1000)], ["gone"])
    encoded = request_body(doc)
    assert len(encoded.raw) > GZIP_ABOVE_BYTES and encoded.headers["Content-Encoding"] == "gzip"
    assert gzip.decompress(encoded.content) == encoded.raw == json.dumps(doc, ensure_ascii=False, separators=(",", ":")).encode()
    same, other = request_body(json.loads(encoded.raw)), request_body({**doc, "delete": []})
    assert idempotency_key("p:1:2", "users", same.raw) == idempotency_key("p:1:2", "users", encoded.raw)
    assert len({idempotency_key(p, "users", b.raw) for p in ("p:1:2", "p:1:3") for b in (encoded, other)}) == 4


@pytest.fixture(scope="module")
def records_table() -> sqlite3.Connection:
    conn = sqlite3.connect(":memory:", isolation_level=None)
    conn.executescript(SCHEMA)
    yield conn
    conn.close()


@settings(max_examples=800, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(batches(unknown=True))
def test_upsert_rows_store_what_encode_writes(records_table: sqlite3.Connection, batch: tuple[str, dict[str, tuple], list[str]]) -> None:
    dataset, upsert, _ = batch
    reference = _outcome(lambda: [(dataset, k, _encode(dataset, v)) for k, v in upsert.items()])
    statement = _outcome(_upsert_rows, dataset, upsert)
    if isinstance(reference, type):
        assert statement is reference
        return
    bulk, rows = statement
    records_table.execute("DELETE FROM records")
    try:
        bulk.run(records_table, rows)  # multi-row statements (shared/common/bulkinsert.py)
    except UnicodeEncodeError:  # a lone surrogate: SQLite cannot hold it either way
        with pytest.raises(UnicodeEncodeError):
            records_table.executemany("INSERT OR REPLACE INTO records (dataset, key, value) VALUES (?, ?, ?)", reference)
        return
    stored = sorted(records_table.execute("SELECT dataset, key, value FROM records"))
    assert stored == sorted(reference)
    for _, key, text in stored:
        v = upsert[key]
        assert _decode(dataset, text) == (UNKNOWN if v is UNKNOWN else tuple(v) if dataset != "addresses" else ())
        assert (text == UNKNOWN_TEXT) == (v is UNKNOWN)


def _reference_entry(db: StateDB, dataset: str, upsert: dict[str, tuple], delete: list[str]) -> dict[str, Any]:
    """The entry as StateDB.journal_entry built it before it passed ``upsert`` through."""
    return {"lineage": db.lineage, "generation": db.generation, "seq": db.seq + 1, "run": db.run_id, "dataset": dataset,
            "upsert": {k: [v[0], list(v[1])] if v else [] for k, v in upsert.items()}, "delete": list(delete)}


@pytest.fixture(scope="module")
def state(tmp_path_factory: pytest.TempPathFactory) -> StateDB:
    db = StateDB(Path(tmp_path_factory.mktemp("journal")) / "state.db", "test")
    yield db
    db.close()


@settings(max_examples=800, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(batches())
def test_journal_lines_are_what_they_were(state: StateDB, batch: tuple[str, dict[str, tuple], list[str]]) -> None:
    dataset, upsert, delete = batch
    entry, reference = state.journal_entry(dataset, upsert, delete), _reference_entry(state, dataset, upsert, delete)
    line = _outcome(fastjson.dumps_bytes, entry)  # file: (shared/storage/stores.py)
    assert line == _outcome(lambda: fastjson.dumps(reference).encode("utf-8"))
    blob_line = _outcome(lambda: json.dumps(entry, separators=(",", ":"), ensure_ascii=False).encode("utf-8"))  # blob:
    assert blob_line == _outcome(lambda: json.dumps(reference, separators=(",", ":"), ensure_ascii=False).encode("utf-8"))
    if not isinstance(line, type):
        assert blob_line == line and json.loads(line) == json.loads(json.dumps(reference))


def test_a_journaled_confirmation_replays_to_the_records_it_names(tmp_path: Path) -> None:
    from shared.storage.stores import FileStateStore

    store = FileStateStore(tmp_path)
    db = store.open()
    upsert = {"g1": GroupRecord("Zürich – 東京", ("g0",)), "g2": GroupRecord("plain", ())}
    db.confirm(store, "groups", upsert, ["g9"])
    db.confirm(store, "addresses", {"a@contoso.com": AddressRecord()}, [])
    db.close()  # killed before the commit: the journal holds both confirmations
    again = store.open()
    assert again.records("groups") == upsert and again.records("addresses") == {"a@contoso.com": ()}
    assert again.seq == 2 and set(again.recheck_keys("groups")) == {"g1", "g2", "g9"}
    again.close()
