"""Scope and exclusion rules: which directory objects and candidate addresses the operator syncs.

A stage of its own, with plain-data input and output (``docs/sync-rules.md``, "Scope and
exclusions"). It sits between the merged directory and the projection:

* ``Rules`` holds the three settings, already validated (``shared/config/settings.py``):
  ``SYNC_SCOPE_GROUPS`` (group object ids), ``EXCLUDE_USER_TYPES`` (``userType`` values,
  compared case-insensitively) and ``EXCLUDE_ADDRESS_PATTERNS`` (Python ``re`` expressions,
  each matched against the whole normalized address, case-insensitively).
* ``Shape`` is what the rules need to know about the directory: the group ids, the contact ids,
  each user's ``userType``, and each group's direct members as ``(member id, kind)`` pairs
  (kind ``u`` user, ``g`` group, ``o`` another type, ``?`` Graph did not say).
* ``judge(shape, rules)`` returns a ``Verdict``: which objects are left out, each with a reason
  that names the setting. A scope id that names no group of the directory raises
  ``ScopeError`` (naming the setting and the id) before anything is sent.

The scope is transitive: the scope groups, every group nested in them at any depth (cycles
included), and every user and contact that is a direct member of any of those groups. A group
that merely *contains* a scope group is not in scope, and neither are its other members.
Address patterns are judged per candidate (``Rules.address_reason``), like the provisioned
domains: a matching candidate is simply not kept.
"""

from __future__ import annotations

import logging
import re
import warnings
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from typing import Any

from ..common.errors import SettingsError

SCOPE_SETTING = "SYNC_SCOPE_GROUPS"
USER_TYPES_SETTING = "EXCLUDE_USER_TYPES"
PATTERNS_SETTING = "EXCLUDE_ADDRESS_PATTERNS"
log = logging.getLogger(__name__)

OUT_OF_SCOPE = f"not in the scope of {SCOPE_SETTING} (not a scope group, nor a member of one directly or through nested groups)"
RECIPIENT_OUT_OF_SCOPE = (f"not in the scope of {SCOPE_SETTING}: an Exchange Online recipient that is no Entra object in "
                          "scope (a dynamic distribution group or public folder is a member of no group)")


class ScopeError(SettingsError):
    """A ``SYNC_SCOPE_GROUPS`` id names no group of the directory (exit status 2, like any
    settings error; raised after the read and before anything is sent)."""


@dataclass(frozen=True)
class Rules:
    """The three rule settings. ``scope_groups`` ``None``: no scope (everything is in it)."""

    scope_groups: tuple[str, ...] | None = None
    exclude_user_types: frozenset[str] = frozenset()  # casefolded
    exclude_address_patterns: tuple[re.Pattern[str], ...] = ()

    @property
    def active(self) -> bool:
        return self.scope_groups is not None or bool(self.exclude_user_types) or bool(self.exclude_address_patterns)

    @property
    def judges_objects(self) -> bool:
        """True when whole objects can be left out (scope or user types), not only candidates."""
        return self.scope_groups is not None or bool(self.exclude_user_types)

    def fingerprint(self) -> dict[str, Any] | None:
        """What a change of the rules is recognised by (the read fingerprint); ``None`` when no
        rule is set, so a state written before the rules existed needs no full read."""
        if not self.active:
            return None
        return {
            "scopeGroups": sorted(self.scope_groups) if self.scope_groups is not None else None,
            "excludeUserTypes": sorted(self.exclude_user_types),
            "excludeAddressPatterns": [p.pattern for p in self.exclude_address_patterns],
        }

    def address_reason(self, address: str) -> str | None:
        """Why a normalized candidate address is not kept, or ``None`` (it matches no pattern)."""
        for p in self.exclude_address_patterns:
            if p.fullmatch(address):
                return f"matches {PATTERNS_SETTING} pattern '{p.pattern}'"
        return None

    def user_type_reason(self, user_type: Any) -> str | None:
        """Why a user of this ``userType`` is left out, or ``None``. A missing or null
        ``userType`` is never excluded."""
        if isinstance(user_type, str) and user_type.casefold() in self.exclude_user_types:
            return f"userType {user_type!r} is excluded by {USER_TYPES_SETTING}"
        return None


NO_RULES = Rules()


def parse_rules(scope: str | None, user_types: str | None, patterns: str | None) -> Rules:
    """The three settings' raw values (stripped, ``None`` when unset) → ``Rules``.

    Raises ``SettingsError`` naming the setting: a scope id with whitespace, ``/``, ``?`` or
    ``#`` in it (no object id has them; any other id that names no group fails the run after
    the read, before anything is sent: ``judge``), a setting that is set but names nothing, or
    a pattern that is not a valid Python regular expression (the error quotes it)."""
    scope_groups: tuple[str, ...] | None = None
    if scope is not None:
        ids: list[str] = []
        for part in _items(scope):
            if any(ch.isspace() for ch in part) or any(ch in part for ch in "/?#"):
                raise SettingsError(SCOPE_SETTING, f"{part!r} is not a group object id", "3f2c1d4e-0000-4000-8000-000000000001,3f2c1d4e-0000-4000-8000-000000000002")
            if part not in ids:
                ids.append(part)
        if not ids:
            raise SettingsError(SCOPE_SETTING, "is set but names no group; unset it to sync the whole directory", "3f2c1d4e-0000-4000-8000-000000000001")
        scope_groups = tuple(ids)
    types: set[str] = set()
    if user_types is not None:
        types = {t.casefold() for t in _items(user_types)}
        if not types:
            raise SettingsError(USER_TYPES_SETTING, "is set but names no userType; unset it to keep every user", "Guest")
    compiled: list[re.Pattern[str]] = []
    if patterns is not None:
        for part in _items(patterns):
            compiled.append(_compile(part))
        if not compiled:
            raise SettingsError(PATTERNS_SETTING, "is set but names no pattern; unset it to keep every address", r"noreply@.*")
    return Rules(scope_groups, frozenset(types), tuple(compiled))


def _compile(pattern: str) -> re.Pattern[str]:
    """``pattern`` compiled case-insensitively, or ``SettingsError`` quoting it. ``re.compile``
    refuses with ``re.error`` for bad syntax, but also with ``OverflowError`` (a repeat count
    past the C limit, ``x{99999999999}``), ``RecursionError`` (deep nesting), ``MemoryError`` and
    others: every failure to compile is the same settings error (docs/sync-rules.md, "Scope and
    exclusions"). A pattern that compiles with a warning (``FutureWarning: Possible nested
    set``) is kept, and the warning is logged once, naming the setting, instead of Python's
    own two lines of source on stderr."""
    try:
        with warnings.catch_warnings(record=True) as caught:  # re's FutureWarning: said once, naming the setting
            warnings.simplefilter("always")
            compiled = re.compile(pattern, re.IGNORECASE)
        for w in caught:
            log.warning("%s: the pattern '%s' compiles, but Python warns that a later version may read it otherwise (%s)",
                        PATTERNS_SETTING, pattern, w.message)
        return compiled
    except Exception as exc:  # noqa: BLE001 - any failure to compile is a malformed setting
        why = f"{type(exc).__name__}: {exc}" if not isinstance(exc, re.error) else str(exc)
    raise SettingsError(PATTERNS_SETTING, f"'{pattern}' is not a valid Python regular expression ({why[:200]})",
                        r"noreply@.*,.*\.test\.contoso\.com")


def _items(raw: str) -> list[str]:
    return [p.strip() for p in raw.split(",") if p.strip()]


@dataclass(frozen=True)
class Shape:
    """What the rules read of a directory (plain data)."""

    groups: frozenset[str]
    users: Mapping[str, Any]  # user id -> userType (str, None, or absent)
    contacts: frozenset[str]
    members: Mapping[str, Iterable[tuple[str, str]]]  # group id -> (member id, kind) pairs
    # Exchange Online recipients (EXO_MODE augment): cache id -> the Entra object id it is, or None.
    recipients: Mapping[str, str | None] = field(default_factory=dict)


@dataclass(frozen=True)
class Verdict:
    """Which objects the rules leave out. ``groups_in`` is ``None`` when there is no scope."""

    left_out: Mapping[str, str] = field(default_factory=dict)  # object id -> reason
    groups_in: frozenset[str] | None = None

    def keeps(self, oid: str) -> bool:
        return oid not in self.left_out

    def reason(self, oid: str) -> str | None:
        return self.left_out.get(oid)

    def changed(self, other: Verdict) -> set[str]:
        """Ids whose kept / left-out status differs between two verdicts."""
        return set(self.left_out).symmetric_difference(other.left_out)


EVERYTHING = Verdict()


def scope_groups(shape: Shape, roots: Iterable[str]) -> frozenset[str]:
    """The roots and every group nested in them at any depth (cycles are visited once)."""
    seen: set[str] = set()
    stack = [g for g in roots if g in shape.groups]
    while stack:
        gid = stack.pop()
        if gid in seen:
            continue
        seen.add(gid)
        for mid, kind in shape.members.get(gid, ()):
            if kind in ("g", "?") and mid in shape.groups and mid not in seen:
                stack.append(mid)
    return frozenset(seen)


def judge(shape: Shape, rules: Rules) -> Verdict:
    """Apply the object rules (scope, user types) to a whole directory.

    Raises ``ScopeError`` when a ``SYNC_SCOPE_GROUPS`` id names no group of ``shape``."""
    if not rules.judges_objects:
        return EVERYTHING
    left_out: dict[str, str] = {}
    groups_in: frozenset[str] | None = None
    if rules.scope_groups is not None:
        roots = []
        unknown: list[str] = []
        by_lower: dict[str, str] | None = None
        for gid in rules.scope_groups:
            if gid not in shape.groups:
                # Graph's object ids are lowercase GUIDs; an id pasted in capitals names the same group.
                by_lower = by_lower if by_lower is not None else {g.lower(): g for g in shape.groups}
                if gid.lower() not in by_lower:
                    unknown.append(gid)
                    continue
                gid = by_lower[gid.lower()]
            roots.append(gid)
        if unknown:  # every such id at once: each fix would otherwise cost another full read
            named = ", ".join(repr(g) for g in unknown)
            raise ScopeError(SCOPE_SETTING, f"{named} {'names' if len(unknown) == 1 else 'name'} no group of the directory; nothing was sent",
                             "the object id of a group, as Entra ID shows it")
        groups_in = scope_groups(shape, roots)
        members_in: set[str] = set()
        for gid in groups_in:
            members_in.update(mid for mid, _ in shape.members.get(gid, ()))
        for gid in shape.groups:
            if gid not in groups_in:
                left_out[gid] = OUT_OF_SCOPE
        for oid in (*shape.users, *shape.contacts):
            if oid not in members_in:
                left_out[oid] = OUT_OF_SCOPE
    if rules.exclude_user_types:
        for uid, user_type in shape.users.items():
            if uid not in left_out:
                why = rules.user_type_reason(user_type)
                if why:
                    left_out[uid] = why
    # An Exchange Online recipient follows the Entra object it is (ExternalDirectoryObjectId);
    # one that is no Entra object of the directory is in no group, so a scope leaves it out.
    for xid, entra in shape.recipients.items():
        if entra is not None and entra in left_out:
            left_out[xid] = left_out[entra]
        elif groups_in is not None and (entra is None or not (entra in shape.groups or entra in shape.users or entra in shape.contacts)):
            left_out[xid] = RECIPIENT_OUT_OF_SCOPE
    return Verdict(left_out, groups_in)


# (fingerprint key, setting) for each rule; a reason names its setting.
RULE_SETTINGS: tuple[tuple[str, str], ...] = (
    ("scopeGroups", SCOPE_SETTING),
    ("excludeUserTypes", USER_TYPES_SETTING),
    ("excludeAddressPatterns", PATTERNS_SETTING),
)
MAX_LISTED_RULE_EXCLUSIONS = 200


def changed_settings(was: Mapping[str, Any] | None, now: Mapping[str, Any] | None) -> list[str]:
    """The rule settings whose values differ between two read fingerprints' ``rules``
    (``Rules.fingerprint``; ``None``: no rule was set), in ``RULE_SETTINGS`` order. A setting
    that is unset is unset whatever the others are: ``None`` (no rule at all), an empty list
    and a missing key all mean it, so unsetting one setting names that setting alone
    (docs/sync-rules.md, "Scope and exclusions": a change of any of them reads in full)."""
    was, now = was or {}, now or {}
    return [setting for key, setting in RULE_SETTINGS if (was.get(key) or None) != (now.get(key) or None)]


def rule_of(reason: str) -> str | None:
    """The setting an exclusion's reason names, or ``None`` (another cause: invalid, domain...)."""
    for _, setting in RULE_SETTINGS:
        if setting in reason:
            return setting
    return None


def rule_exclusions_summary(exclusions: Iterable[Any], listed: int = MAX_LISTED_RULE_EXCLUSIONS) -> dict[str, Any]:
    """What the rules left out, for the run report and ``status``: per setting and dataset the
    count, and the first ``listed`` exclusions (object id, type, dataset, value, reason).
    ``test-update`` lists every exclusion under ``exclusions``. Input: ``projection.Exclusion``s.
    An ``addresses`` exclusion without a value (a contact or recipient left out that would keep
    no address) is listed, not counted: the counts are of addresses, groups and users."""
    counts: dict[str, dict[str, int]] = {}
    items: list[dict[str, Any]] = []
    total = 0
    for e in exclusions:
        setting = rule_of(e.reason)
        if setting is None:
            continue
        if e.counted:
            per = counts.setdefault(setting, {})
            per[e.dataset] = per.get(e.dataset, 0) + 1
        total += 1
        if len(items) < listed:
            items.append(e.as_dict())
    out: dict[str, Any] = {"counts": counts, "items": items}
    if total > len(items):
        out["itemsTruncated"] = total - len(items)
    return out


def rule_exclusion_lines(reports: Iterable[Any], shown: int = 10) -> list[str]:
    """The text ``status`` prints about the newest run report that carries ``ruleExclusions``:
    what each setting left out, per dataset, and the first ``shown`` exclusions."""
    for report in reports:
        rules = report.get("ruleExclusions") if isinstance(report, dict) else None
        if not isinstance(rules, dict):
            continue
        lines = [f"left out by the scope and exclusion settings (run finished {report.get('finishedAt') or '?'}):"]
        counts = rules.get("counts") if isinstance(rules.get("counts"), dict) else {}
        items = rules.get("items") if isinstance(rules.get("items"), list) else []
        if not counts and not items:  # listed, not counted: a contact or recipient with no address
            lines.append("  nothing")
        for setting, per in sorted(counts.items()):
            if isinstance(per, dict):
                lines.append(f"  {setting}: " + ", ".join(f"{n:,} {d}" for d, n in sorted(per.items()) if isinstance(n, int)))
        for item in items[:shown]:
            if isinstance(item, dict):
                lines.append(f"    {item.get('dataset')} {item.get('objectType')} {item.get('objectId')} {item.get('value') or ''}: {item.get('reason')}")
        # Listed, not only counted: a contact or recipient left out with no address to keep is
        # listed without being counted (rule_exclusions_summary), so the counts can be fewer.
        truncated = rules.get("itemsTruncated")
        more = len(items) + (truncated if isinstance(truncated, int) else 0) - min(len(items), shown)
        if more > 0:
            lines.append(f"    ... and {more:,} more (python -m shared test-update lists every exclusion)")
        return ["", *lines]
    return []
