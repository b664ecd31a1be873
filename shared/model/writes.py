"""The delta merge's writes, queued and sent to SQLite a statement kind at a time.

A delta round changes a few rows of each object it names (``shared/model/directory.py``
``Cache.apply_round``): one ``execute`` per row costs far more than the row (the statement's
round trip through the sqlite3 module), so the merge queues its writes here and ``flush``
runs each kind of statement once, as ``executemany`` over its queued rows.

Why the result is exactly that of the writes run one by one, in the order they were queued:

* every statement names the one object it is about (``objects.id``, ``kept.object_id``,
  ``users.id``, ``members.group_id``), so writes about different objects touch different rows
  and can be run in any order between them;
* an object's own writes are queued in ``PHASES`` order (its removal, then its new rows, then
  its member changes: ``Cache._apply_net``), and ``flush`` runs the phases in that order, each
  phase's rows in the order they were queued;
* any read of the cache flushes first (``Cache`` calls ``flush`` before each ``SELECT`` it
  makes during a round), so a read sees every write queued before it.

``tests/test_delta_writes.py`` checks this: over generated rounds, the queued merge leaves
the same tables and the same affected keys as the merge with one ``execute`` per write."""

from __future__ import annotations

import sqlite3
from typing import Any

# Each phase: one statement, in the order an object's writes are made.
PHASES: dict[str, str] = {
    "drop_members": "DELETE FROM members WHERE group_id=?",
    "drop_object": "DELETE FROM objects WHERE id=?",
    "drop_kept": "DELETE FROM kept WHERE object_id=?",
    "drop_user": "DELETE FROM users WHERE id=?",
    "put_object": "INSERT OR REPLACE INTO objects (id, kind, data, excluded) VALUES (?, ?, ?, ?)",
    # An object whose kind and excluded count stay: only its data column is written, so the
    # row's entry in objects_excluding is left alone (REPLACE deletes and inserts it again).
    "put_data": "UPDATE objects SET data=? WHERE id=?",
    # One address an object no longer keeps; the addresses it still keeps are not written.
    "drop_address": "DELETE FROM kept WHERE address=? AND object_id=?",
    "put_kept": "INSERT OR IGNORE INTO kept (address, object_id) VALUES (?, ?)",
    "put_user": "INSERT OR REPLACE INTO users (id, primary_address) VALUES (?, ?)",
    "member": "",  # a member removed or added: DELETE or INSERT, in the order they came (below)
}
FLUSH_ROWS = 20_000  # queued rows that make a flush: a large round (after an outage) is not held whole
DROP_MEMBER = "DELETE FROM members WHERE group_id=? AND member_id=?"
PUT_MEMBER = "INSERT OR REPLACE INTO members (group_id, member_id, kind) VALUES (?, ?, ?)"


class Writes:
    """Queued writes of one delta merge. ``add(phase, params)`` queues a row of a phase's
    statement (``member`` takes ``(sql, params)`` with ``DROP_MEMBER`` or ``PUT_MEMBER``);
    ``flush()`` runs everything queued, phase by phase, and so does the ``FLUSH_ROWS``-th queued
    row (an object's later writes then run in a later flush, after its earlier ones).
    ``immediate``: run each write at once (the reference the tests compare the queued merge with)."""

    def __init__(self, conn: sqlite3.Connection, *, immediate: bool = False) -> None:
        self.conn = conn
        self.immediate = immediate
        self._rows: dict[str, list[Any]] = {phase: [] for phase in PHASES}
        self.pending = 0
        self.limit = FLUSH_ROWS

    def add(self, phase: str, params: Any) -> None:
        if self.immediate:
            sql, args = params if phase == "member" else (PHASES[phase], params)
            self.conn.execute(sql, args)
            return
        self._rows[phase].append(params)
        self.pending += 1
        if self.pending >= self.limit:
            self.flush()

    def flush(self) -> None:
        """Run every queued write (nothing queued: nothing is run)."""
        if not self.pending:
            return
        em = self.conn.executemany
        for phase, rows in self._rows.items():
            if not rows:
                continue
            if phase == "member":
                _members(em, rows)
            else:
                em(PHASES[phase], rows)
            rows.clear()
        self.pending = 0


def _members(em: Any, ops: list[tuple[str, tuple]]) -> None:
    """Member removals and additions in their order, each run of one kind as one call."""
    start = 0
    for i in range(1, len(ops) + 1):
        if i == len(ops) or ops[i][0] != ops[start][0]:
            em(ops[start][0], [args for _, args in ops[start:i]])
            start = i
