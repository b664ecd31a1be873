"""The whole cached directory, projected: every record of a dataset (a full read), every
exclusion with its reason, and the whole-directory counts. A mixin of ``Cache``
(``shared/model/directory.py``), which supplies ``conn``, ``provisioned``, ``rules`` and
``verdict()``; the rules are those of docs/sync-rules.md ("The three datasets", "Scope and exclusions")."""

from __future__ import annotations

import json
import logging
import sqlite3
from collections.abc import Callable, Iterable, Mapping
from dataclasses import replace
from itertools import chain

from ..common import fastjson
from . import counts
from .fold import OTYPE
from .loading import chunks
from .projection import EXCHANGE_SOURCE, Exclusion, Projection, candidates, group_name
from .records import DATASETS, GroupRecord, Records, UserRecord
from .rules import EVERYTHING, Rules, Verdict, rule_of

NO_PRIMARY = "no primary address: neither mail nor an SMTP: proxy address is kept"

log = logging.getLogger("shared.directory")  # the name its log lines have always carried

# A record built without the NamedTuple's Python-level ``__new__`` (a frame per record): the
# same object, ``UserRecord(a, b) == _make(UserRecord, (a, b))``, for fewer instructions.
_make = tuple.__new__


class WholeDirectory:
    """Whole-directory queries over the cache tables."""

    conn: sqlite3.Connection
    provisioned: frozenset[str]
    rules: Rules
    verdict: Callable[[], Verdict]  # the rules' verdict over the cache (Cache.verdict)
    start: counts.Start | None  # the rows before the delta rounds applied since it was opened (Cache.apply_round); None: unknown
    end: counts.Start  # the same after them, for the objects whose rows they wrote (the others' are as they were)

    def rule_exclusions(self) -> list[Exclusion]:
        """What the scope and exclusion settings leave out of the whole cached directory, with
        the reason naming the setting (and the pattern), for the run report and ``status``."""
        return self.exclusions(only_rules=True)

    # --- whole-directory figures -----------------------------------------------------------
    def excluded(self) -> dict[str, int]:
        """Candidates and users left out across the whole directory, as a full read counts them."""
        return self.excluded_since(None)[0]

    def excluded_since(self, figures: counts.Figures | None) -> tuple[dict[str, int], counts.Figures | None]:
        """``(excluded, figures)``: the counts of ``excluded``, and the figures they are made of
        (``shared/model/counts.py``; ``None`` when the rules leave objects out). ``figures``:
        those of the cache before the delta rounds applied since it was opened (``self.start``),
        which are then counted from the objects they named; ``None``: counted over the cache."""
        verdict = self.verdict()
        if verdict is EVERYTHING:
            start = self.start
            now = counts.count_all(self.conn) if figures is None or start is None else counts.moved(self.conn, figures, start, self.end)
            return counts.summary(now), now
        q = self.conn.execute
        addresses = q("SELECT COALESCE(SUM(excluded), 0) FROM objects WHERE excluded > 0").fetchone()[0]  # objects_excluding
        # Everything an object the rules leave out would have kept is left out too; a left-out
        # user counts once, whatever else is true of it.
        left_users = 0
        left_groups = 0
        kept_primaries: list[str | None] = []
        users = dict(q("SELECT id, primary_address FROM users").fetchall())
        left = verdict.left_out
        addresses += sum(n for oid, n in q("SELECT object_id, COUNT(*) FROM kept GROUP BY object_id") if oid in left)
        groups = {g for (g,) in q("SELECT id FROM objects WHERE kind='g'")}
        left_groups = sum(1 for g in verdict.left_out if g in groups)
        for uid, primary in users.items():
            if verdict.keeps(uid):
                kept_primaries.append(primary)
            else:
                left_users += 1
        with_primary = [p for p in kept_primaries if p]
        no_primary = len(kept_primaries) - len(with_primary)
        shared = len(with_primary) - len(set(with_primary))
        return {"addresses": int(addresses), "groups": left_groups, "users": left_users + no_primary + shared}, None

    def counts(self) -> dict[str, int]:
        q = self.conn.execute
        return {
            kind: q("SELECT COUNT(*) FROM objects WHERE kind=?", (k,)).fetchone()[0]
            for kind, k in (("users", "u"), ("groups", "g"), ("contacts", "c"))
        }

    def claimants(self, primaries: Iterable[str]) -> set[str]:
        """Users whose primary address is one of these (an owner can change with any of them),
        read a chunk of addresses at a time."""
        out: set[str] = set()
        for part in chunks(sorted(set(primaries))):
            out.update(u for (u,) in self.conn.execute(f"SELECT id FROM users WHERE primary_address IN ({','.join('?' * len(part))})", part))  # noqa: S608
        return out

    # --- the whole directory, projected (a full read) ------------------------------------------
    def records(self, dataset: str) -> Records:
        """Every record of a dataset the cached directory implies, by the rules of
        docs/sync-rules.md ("The three datasets"); the same rules as
        ``desired``, over every key at once. Canonical values as in ``shared/model/projection.py``."""
        q = self.conn.execute
        verdict = self.verdict()  # the scope and exclusions: what is left out contributes nothing
        keeps = verdict.keeps
        if dataset == "addresses":
            if verdict is EVERYTHING:
                return dict.fromkeys(chain.from_iterable(q("SELECT DISTINCT address FROM kept ORDER BY address")), ())
            return dict.fromkeys(sorted({a for a, o in q("SELECT address, object_id FROM kept") if keeps(o)}), ())
        if dataset == "groups":
            return self._group_records(keeps)
        if dataset != "users":
            raise ValueError(f"unknown dataset {dataset!r}")
        return self._user_records(verdict.left_out)

    def _group_records(self, keeps: Callable[[str], bool]) -> Records:
        """Kept groups in id order, each with the sorted ids of the kept groups it is a direct member of."""
        q = self.conn.execute
        names = {gid: group_name(gid, fastjson.loads(data)) for gid, data in q("SELECT id, data FROM objects WHERE kind='g' ORDER BY id") if keeps(gid)}
        parents: dict[str, list[str]] = {}
        # Member rows exist only for cached groups (an add needs the group; a removed group's
        # rows go with it); scanned in primary-key order, so each list comes out sorted.
        for gid, mid in q("SELECT group_id, member_id FROM members WHERE kind IN ('g', '?') ORDER BY group_id, member_id"):
            if mid in names and gid in names:
                parents.setdefault(mid, []).append(gid)
        return {gid: _make(GroupRecord, (name, tuple(sorted(set(parents[gid]))) if gid in parents else ())) for gid, name in names.items()}

    def _user_records(self, left: Mapping[str, str]) -> Records:
        """Users in id order, merged with their memberships read through ``members_by_member``
        in (member, group) order: each record's group ids come out sorted, and each group id
        is one shared string (memory grows with the users, not with their memberships).
        (Measured with callgrind: gathering each user's memberships in SQLite, a correlated
        ``json_group_array`` or ``group_concat`` per user, or JSON arrays a chunk of users at a
        time, costs more instructions than these rows do; so do ``groupby`` over them and the
        objects it makes per user.) ``left``: what the rules leave out (``Verdict.left_out``),
        looked up without a call per user."""
        q = self.conn.execute
        groups = {gid: gid for (gid,) in q("SELECT id FROM objects WHERE kind='g'") if gid not in left}
        owner: dict[str, str] = {}  # primary address -> the user with the smallest id
        out: Records = {}
        rows = q("SELECT member_id, group_id FROM members WHERE kind IN ('u', '?') ORDER BY member_id, group_id")
        row = next(rows, None)
        for uid, primary in q("SELECT id, primary_address FROM users WHERE primary_address IS NOT NULL ORDER BY id"):
            if left and uid in left:
                continue
            first = owner.setdefault(primary, uid)
            if first != uid:
                _warn_left_out(uid, primary, first)
                continue
            while row is not None and row[0] < uid:
                row = next(rows, None)
            gids = []
            while row is not None and row[0] == uid:
                gid = groups.get(row[1])
                if gid is not None:
                    gids.append(gid)
                row = next(rows, None)
            out[uid] = _make(UserRecord, (primary, tuple(gids)))
        return out

    # --- the records of some keys (a delta round's affected keys), one chunk of keys at a time --
    def _kept_chunk(self, addresses: list[str]) -> dict[str, tuple | None]:
        """``()`` for an address some object the rules keep holds, else ``None``."""
        marks = ",".join("?" * len(addresses))
        verdict = self.verdict() if self.rules.judges_objects else EVERYTHING
        held = {a for a, o in self.conn.execute(f"SELECT address, object_id FROM kept WHERE address IN ({marks})", addresses) if verdict.keeps(o)}  # noqa: S608
        return {a: (() if a in held else None) for a in addresses}

    def _group_chunk(self, gids: list[str]) -> dict[str, tuple | None]:
        q = self.conn.execute
        marks = ",".join("?" * len(gids))
        keeps = self.verdict().keeps
        data = dict(q(f"SELECT id, data FROM objects WHERE kind='g' AND id IN ({marks})", gids).fetchall())  # noqa: S608
        parents: dict[str, set[str]] = {}
        sql = f"SELECT m.member_id, m.group_id FROM members m JOIN objects g ON g.id = m.group_id AND g.kind = 'g' WHERE m.member_id IN ({marks}) AND m.kind IN ('g', '?')"  # noqa: S608
        for mid, gid in q(sql, gids):
            if keeps(gid):
                parents.setdefault(mid, set()).add(gid)
        return {
            g: GroupRecord(group_name(g, json.loads(data[g])), tuple(sorted(parents.get(g, ())))) if g in data and keeps(g) else None
            for g in gids
        }

    def _user_chunk(self, uids: list[str]) -> dict[str, tuple | None]:
        """A user's record: it has a primary address, the rules keep it, and it has the smallest
        id among the kept users with that primary address."""
        q = self.conn.execute
        marks = ",".join("?" * len(uids))
        verdict = self.verdict()
        primary = {u: p for u, p in q(f"SELECT id, primary_address FROM users WHERE id IN ({marks})", uids) if p and verdict.keeps(u)}  # noqa: S608
        wanted = sorted(set(primary.values()))
        owner: dict[str, str] = {}
        for part in range(0, len(wanted), 500):
            chunk = wanted[part : part + 500]
            sql = f"SELECT id, primary_address FROM users WHERE primary_address IN ({','.join('?' * len(chunk))})"  # noqa: S608
            for u, p in q(sql, chunk):
                if verdict.keeps(u) and (p not in owner or u < owner[p]):
                    owner[p] = u
        groups: dict[str, set[str]] = {}
        sql = f"SELECT m.member_id, m.group_id FROM members m JOIN objects g ON g.id = m.group_id AND g.kind = 'g' WHERE m.member_id IN ({marks}) AND m.kind IN ('u', '?')"  # noqa: S608
        for mid, gid in q(sql, uids):
            if verdict.keeps(gid):
                groups.setdefault(mid, set()).add(gid)
        for u, p in primary.items():  # the same warning as a full read's (_user_records)
            if owner.get(p, u) != u:
                _warn_left_out(u, p, owner[p])
        return {u: UserRecord(primary[u], tuple(sorted(groups.get(u, ())))) if u in primary and owner.get(primary[u]) == u else None for u in uids}

    def exclusions(self, *, only_rules: bool = False) -> list[Exclusion]:
        """Every candidate address and user the rules leave out, with its reason, recomputed
        from the cached objects (``test-update`` reports them): addresses per object in id
        order, then users in id order. ``only_rules``: only what the scope and exclusion
        settings leave out (candidates are recomputed only when address patterns are set)."""
        q = self.conn.execute
        out, lost_primary = self._candidate_exclusions(only_rules)
        # What the scope and user types leave out: every address the object would keep, the
        # group, the user (docs/sync-rules.md, "Scope and exclusions").
        verdict = self.verdict()
        left = verdict.left_out
        if left:
            kept_by: dict[str, list[str]] = {}
            for a, oid in q("SELECT address, object_id FROM kept ORDER BY object_id, address"):
                if oid in left:
                    kept_by.setdefault(oid, []).append(a)
            for oid, kind, data in q("SELECT id, kind, data FROM objects ORDER BY id"):
                why = left.get(oid)
                if why is None:
                    continue
                # An object that gives only addresses (a contact, a recipient) and would keep none is
                # still an object the setting leaves out: reported once, with no value.
                held = (kept_by.get(oid) or (None,)) if kind in ("c", "x") else kept_by.get(oid, ())
                if kind == "x":  # an Exchange Online recipient: its Guid and RecipientTypeDetails
                    rtype = str(json.loads(data).get("type"))
                    out.extend(Exclusion("addresses", oid[4:], rtype, a, why, EXCHANGE_SOURCE) for a in held)
                    continue
                out.extend(Exclusion("addresses", oid, OTYPE[kind], a, why) for a in held)
                if kind == "g":
                    out.append(Exclusion("groups", oid, "group", group_name(oid, json.loads(data)), why))
        owner: dict[str, str] = {}
        if only_rules and not left and not lost_primary:
            return out
        for uid, primary in q("SELECT id, primary_address FROM users ORDER BY id"):
            why = verdict.reason(uid)
            if why is not None:
                out.append(Exclusion("users", uid, "user", primary, why))
                continue
            if primary is None:
                would = lost_primary.get(uid)
                why = NO_PRIMARY if would is None else (
                    f"no primary address: {would} {self.rules.address_reason(would)}, and no other candidate is kept")
                if not only_rules or rule_of(why) is not None:
                    out.append(Exclusion("users", uid, "user", None, why))
                continue
            if only_rules:
                continue
            first = owner.setdefault(primary, uid)
            if first != uid:
                out.append(Exclusion("users", uid, "user", primary, f"primary address already used by user {first}, which has the smaller id"))
        return out

    def _candidate_exclusions(self, only_rules: bool) -> tuple[list[Exclusion], dict[str, str]]:
        """The left-out candidates of every object that has some, and the users the patterns
        leave without a primary address, with the primary they would have had (only an object
        with a left-out candidate can be one: a pattern's match is left out)."""
        out: list[Exclusion] = []
        lost_primary: dict[str, str] = {}
        patterns = bool(self.rules.exclude_address_patterns)
        if only_rules and not patterns:
            return out, lost_primary
        unpatterned = replace(self.rules, exclude_address_patterns=())
        for oid, kind, data in self.conn.execute("SELECT id, kind, data FROM objects WHERE excluded > 0 ORDER BY id"):
            obj = json.loads(data)
            if kind == "x":  # an Exchange Online recipient
                cands = candidates(oid[4:], str(obj.get("type")), obj, self.provisioned, self.rules, warn=False, source=EXCHANGE_SOURCE)
            else:
                cands = candidates(oid, OTYPE[kind], obj, self.provisioned, self.rules, warn=False)
                if patterns and kind == "u" and cands.primary is None:
                    would = candidates(oid, "user", obj, self.provisioned, unpatterned, warn=False).primary
                    if would is not None:
                        lost_primary[oid] = would
            out.extend(e for e in cands.exclusions if not only_rules or rule_of(e.reason) is not None)
        return out, lost_primary

    def projection(self, datasets: Iterable[str] = DATASETS) -> Projection:
        """The whole projection of the cached directory: records of ``datasets``, every exclusion."""
        return Projection({d: self.records(d) for d in datasets}, self.exclusions())


def _warn_left_out(uid: str, primary: str, keeper: str) -> None:
    """A user left out because ``keeper`` (the smaller id) holds the same primary address
    (docs/sync-rules.md, the users dataset: "The other is left out with a warning")."""
    log.warning("user %s shares the primary address %s with user %s, which keeps the record", uid, primary, keeper)
