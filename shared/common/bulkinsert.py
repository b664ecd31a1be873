"""Bulk ``INSERT`` of many rows through multi-row ``VALUES`` statements of a fixed size.

Why: ``executemany`` of a one-row ``INSERT ... VALUES (?, ?, ?)`` pays, for every row, the
sqlite3 module's step and reset of the statement, the GIL released and taken again around
``sqlite3_step``, and SQLite's start and halt of one statement. A statement of ``k`` rows
(``VALUES (?,?,?),(?,?,?),...``) pays them once per ``k`` rows. Measured under callgrind
(300,000 rows of three GUID-text columns into a WITHOUT ROWID table, ``INSERT OR REPLACE``):
about 13,000 instructions per row one row a statement, 10,200 at 50 rows a statement, and no
fewer at 200 (docs/performance.md, *Multi-row statements*).

How: the rows go as statements of ``ROWS_PER_STATEMENT`` rows each, the remainder (fewer than
``ROWS_PER_STATEMENT``) as the one-row statement, so every statement text is one of two fixed
strings and the module's statement cache keeps both prepared.

Why the result is that of the one-row ``executemany``: SQLite inserts a multi-row ``VALUES``
one row at a time, in the order written, each with the statement's conflict clause, so a later
row with the key of an earlier one (in the same statement or not) replaces it (``OR REPLACE``)
or is dropped (``OR IGNORE``) exactly as it would be one statement after the other; ``FOR EACH
ROW`` triggers (the change log's, shared/storage/changelog.py) fire once per row, in that
order. tests/test_bulk_insert.py compares the two over generated rows. One difference, on an
error only: a row that fails (a NOT NULL or CHECK constraint, a value that cannot be bound such
as a lone surrogate) also undoes or skips the rows of its own statement before it, where the
one-row form keeps them, and a row of the wrong number of values is refused before any row is
written; the error is raised either way, and every caller's run then ends without committing
its transaction, so no caller sees the difference.

SQL injection: the statements are built once, from table and column names that must be plain
identifiers and from constant values of a closed set (a short word of letters, digits, ``_``,
``-`` or ``?``, the empty string, an integer, or ``None``), each of the exact type ``str`` or
``int`` (a subclass could render as other text than the value checked); anything else raises
``ValueError`` when the ``BulkInsert`` is made. Row values are always bound."""

from __future__ import annotations

import re
import sqlite3
from collections.abc import Iterable, Mapping, Sequence
from itertools import chain
from typing import Any

ROWS_PER_STATEMENT = 50  # rows per multi-row statement
MAX_PARAMETERS = 999  # host parameters a statement may bind: SQLite's limit before 3.32 (32,766 since)
CONFLICTS = ("", "OR REPLACE", "OR IGNORE")  # the conflict clauses a BulkInsert may carry

_NAME = re.compile(r"[A-Za-z_][A-Za-z0-9_]*\Z")
_WORD = re.compile(r"[A-Za-z0-9_?-]{0,32}\Z")


def _literal(value: str | int | None) -> str:
    """A constant column's value as SQL text; ``ValueError`` outside the closed set."""
    if value is None:
        return "NULL"
    # Exactly str or int: a subclass (bool, an enum, any other) can render as other text than the
    # value checked here (its __str__ or __format__), which would then be what the statement holds.
    if type(value) not in (str, int):
        raise ValueError(f"a constant column value must be a short word, an integer or None, not {type(value).__name__}")
    if type(value) is int:
        return str(value)
    if not _WORD.match(value):
        raise ValueError(f"a constant column value must be a short word of letters, digits, '_', '-' or '?': {value!r}")
    return f"'{value}'"


class BulkInsert:
    """``INSERT [OR REPLACE|OR IGNORE] INTO table (columns) VALUES ...`` over many rows.

    ``table``, ``columns``: plain identifiers (``[A-Za-z_][A-Za-z0-9_]*``); ``conflict``: one of
    ``CONFLICTS``; ``constants``: columns (among ``columns``) written as the same literal in
    every row instead of being bound (``_literal``'s closed set); ``rows_per_statement``: the
    size of the multi-row statement (at least 2, at most ``MAX_PARAMETERS`` values bound). Each row given to ``run`` holds the values of
    the other columns, in ``columns`` order. Raises ``ValueError`` for a name, clause or
    constant outside these sets."""

    __slots__ = ("one", "many", "width", "rows_per_statement")

    def __init__(self, table: str, columns: Sequence[str], *, conflict: str = "", constants: Mapping[str, str | int | None] | None = None,
                 rows_per_statement: int = ROWS_PER_STATEMENT) -> None:
        consts = dict(constants or {})
        if type(conflict) is not str or conflict not in CONFLICTS:
            raise ValueError(f"conflict must be one of {CONFLICTS}: {conflict!r}")
        if not all(type(n) is str and _NAME.match(n) for n in (table, *columns)) or len(set(columns)) != len(columns) or not columns:
            raise ValueError(f"table and columns must be distinct plain identifiers: {table!r} {list(columns)!r}")
        if not set(consts) <= set(columns) or len(consts) == len(columns):
            raise ValueError(f"the constant columns must be some of the columns, and not all: {sorted(consts)!r}")
        if not 2 <= rows_per_statement <= MAX_PARAMETERS // max(1, len(columns) - len(consts)):
            raise ValueError(f"rows_per_statement must be at least 2 and bind at most {MAX_PARAMETERS} values: {rows_per_statement}")
        row = "(" + ",".join(_literal(consts[c]) if c in consts else "?" for c in columns) + ")"
        head = f"INSERT {conflict + ' ' if conflict else ''}INTO {table} ({', '.join(columns)}) VALUES "  # noqa: S608 - checked names
        self.one = head + row  # the statement of one row (the remainder)
        self.many = head + ",".join([row] * rows_per_statement)  # the statement of rows_per_statement rows
        self.width = len(columns) - len(consts)  # values bound per row
        self.rows_per_statement = rows_per_statement

    def run(self, conn: sqlite3.Connection, rows: Iterable[Sequence[Any]]) -> None:
        """Insert ``rows`` (each ``width`` values) in their order, in ``conn``'s transaction;
        the same rows as ``conn.executemany(self.one, rows)`` leave the same database. Raises
        ``sqlite3.Error`` as that would (``ProgrammingError`` for a row of the wrong width)."""
        rows = rows if isinstance(rows, list) else list(rows)
        k = self.rows_per_statement
        full = len(rows) - len(rows) % k
        if full:
            n = k * self.width
            head = rows if full == len(rows) else rows[:full]
            if set(map(len, head)) != {self.width}:  # a flat list would shift every later value silently
                raise sqlite3.ProgrammingError(f"a row whose values are not the {self.width} bound per row")
            flat = list(chain.from_iterable(head))
            conn.executemany(self.many, [flat[i : i + n] for i in range(0, len(flat), n)])
        if full < len(rows):
            conn.executemany(self.one, rows[full:])
