"""One delta round's entries folded per object, in the order Graph sent them.

Graph documents that, within a round (a full read's first round as much as a later one), an
object comes back when it changed during the round (the later entry is the newer state), that
``@removed`` removes it (reason ``changed`` or ``deleted``), and that a big group comes in
slices that repeat its selected properties, with ``members@delta`` entries that add up and
member entries marked ``@removed`` that remove that member (docs/sync-rules.md, "Every round is a delta round, and entries are applied in arrival order"; Microsoft Graph: "Use delta query to track changes in Microsoft Graph data",
"group: delta", "user: delta").

Kinds: ``u`` user, ``g`` group, ``c`` contact, ``x`` an Exchange Online recipient; a member is
``u``, ``g``, ``o`` (another type: contact, device, service principal) or ``?`` (Graph did not
say)."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from .addresses import SMTP_PREFIXES
from .projection import GROUP_TYPE, USER_TYPE

PROPS: dict[str, tuple[str, ...]] = {
    "u": ("mail", "proxyAddresses", "userType"),
    "g": ("displayName", "mail", "proxyAddresses"),
    "c": ("mail", "proxyAddresses"),
    "x": ("mail", "proxyAddresses"),  # PrimarySmtpAddress, EmailAddresses (plus "type")
}
OTYPE = {"u": "user", "g": "group", "c": "contact"}
KIND_OF = {"users": "u", "groups": "g", "contacts": "c"}


def compact_value(prop: str, value: Any) -> Any:
    """A selected property as cached: ``proxyAddresses`` keeps only its ``smtp:`` values (the
    others are never candidates), any other property a string or ``None``."""
    if prop == "proxyAddresses":
        return [p for p in value if isinstance(p, str) and p[:5] in SMTP_PREFIXES] if isinstance(value, list) else []
    return value if isinstance(value, str) else None


def compact(kind: str, obj: dict[str, Any]) -> dict[str, Any]:
    """The selected properties the object carries, as cached (``compact_value``)."""
    return {prop: compact_value(prop, obj[prop]) for prop in PROPS[kind] if prop in obj}


def recipient_object(rec: dict[str, Any]) -> dict[str, Any]:
    """A recipient in the shape the candidate rules read (``mail`` and ``proxyAddresses``):
    ``PrimarySmtpAddress`` plays ``mail`` and ``EmailAddresses`` plays ``proxyAddresses``
    (docs/sync-rules.md: exactly the rules of Graph candidates)."""
    addresses = recipient_field(rec, "EmailAddresses")
    return {
        "mail": recipient_field(rec, "PrimarySmtpAddress"),
        "proxyAddresses": [a for a in addresses if isinstance(a, str)] if addresses is not None else [],
    }


# The recipient fields the rules read, and the JSON type each must have: a value of another type
# is read as absent (and warned about with the Guid: shared/sources/exchange.py).
RECIPIENT_FIELDS: dict[str, type] = {"RecipientTypeDetails": str, "PrimarySmtpAddress": str, "EmailAddresses": list, "ExternalDirectoryObjectId": str}


def recipient_field(rec: dict[str, Any], name: str) -> Any:
    """``rec[name]`` when it has its type in ``RECIPIENT_FIELDS``, else ``None``."""
    value = rec.get(name)
    return value if isinstance(value, RECIPIENT_FIELDS[name]) else None


def recipient_id(rec: dict[str, Any]) -> str:
    """The directory cache's key of a recipient: its Exchange Guid, marked as Exchange's so
    that it never meets a Graph object id."""
    return f"exo:{str(rec['Guid']).strip().lower()}"


def recipient_entry(rec: dict[str, Any]) -> tuple[str, str, dict[str, Any]]:
    """An Exchange Online recipient → (cache id ``exo:<guid>``, its Guid, the cached data:
    ``mail`` = PrimarySmtpAddress, ``proxyAddresses`` = the ``smtp:`` EmailAddresses, ``type``
    = RecipientTypeDetails)."""
    oid = recipient_id(rec)
    data = compact("x", recipient_object(rec))
    data["type"] = recipient_field(rec, "RecipientTypeDetails") or ""
    # The Entra object the recipient is (a mailbox's user, a synced group), if any: with scope
    # or user-type rules the recipient follows that object's verdict (shared/model/rules.py judge).
    entra = recipient_field(rec, "ExternalDirectoryObjectId")
    data["entraId"] = entra.strip().lower() if entra is not None and entra.strip() else None
    return oid, oid[4:], data


def merge(old: dict[str, Any] | None, kind: str, obj: dict[str, Any]) -> dict[str, Any]:
    """A partial object merged into the cached one: a property the change does not carry is
    unchanged, never cleared."""
    merged = dict(old or {})
    merged.update(compact(kind, obj))
    return merged


def member_kind(otype: Any) -> str:
    if not otype:
        return "?"
    if otype == USER_TYPE:
        return "u"
    if otype == GROUP_TYPE:
        return "g"
    return "o"


class Net:
    """What a round's entries about one object say, folded in arrival order.

    ``present``: the last entry was not ``@removed``. ``reset``: an ``@removed`` entry came, so
    whatever the cache held for the object before the round is gone (a later entry recreates
    it from nothing). ``props``: the selected properties carried since the last reset, a later
    value replacing an earlier one. ``members``: member id -> (added, member kind), the last
    ``members@delta`` entry for a member winning."""

    __slots__ = ("present", "reset", "props", "members")

    def __init__(self) -> None:
        self.present = True
        self.reset = False
        self.props: dict[str, Any] = {}
        self.members: dict[str, tuple[bool, str]] = {}


class Round:
    """One delta round's entries, folded per object in arrival order (see the module).

    Pages are fed with ``take(collection, entry)`` as they arrive; ``Cache.apply_round`` then
    applies the fold to the directory cache. Folding first and applying once equals applying
    every entry one after the other. A full read does not keep a whole round: it folds a few
    pages at a time into the cache (``shared.model.loading.StreamLoad``)."""

    def __init__(self) -> None:
        self.nets: dict[str, dict[str, Net]] = {c: {} for c in KIND_OF}
        self.entries: dict[str, int] = dict.fromkeys(KIND_OF, 0)

    def take(self, collection: str, obj: dict[str, Any]) -> None:
        """Fold one entry. Raises ``ValueError`` for an entry without an id."""
        oid = obj.get("id")
        if not isinstance(oid, str) or not oid:
            raise ValueError(f"a {collection} delta entry without an id")
        self.take_page(collection, (obj,))

    def take_page(self, collection: str, objs: Sequence[Any]) -> int:
        """Fold a page's entries in order, up to the first that is not an object with an id
        (a non-empty string); returns how many were folded (``len(objs)``: all of them). The
        same fold as ``take`` of each entry, without a call per entry."""
        kind = KIND_OF[collection]
        nets = self.nets[collection]
        group = kind == "g"
        user = kind == "u"
        new_net = Net.__new__
        taken = 0
        for obj in objs:
            try:
                oid = obj.get("id")
            except AttributeError:  # not an object (a page's entry may be anything)
                break
            if not isinstance(oid, str) or not oid:
                break
            taken += 1
            net = nets.get(oid)
            if net is None:  # Net(), without a call of its __init__
                net = nets[oid] = new_net(Net)
                net.present, net.reset, net.props, net.members = True, False, {}, {}
            if "@removed" in obj:
                net.present, net.reset = False, True
                net.props = {}
                net.members = {}
            else:
                net.present = True
                props = net.props
                # compact_value of each of PROPS[kind], written out in PROPS's order (the cached
                # data's key order): [displayName,] mail, proxyAddresses[, userType]
                # (tests/test_candidate_paths.py holds it equal to compact).
                if group and "displayName" in obj:
                    value = obj["displayName"]
                    props["displayName"] = value if isinstance(value, str) else None
                if "mail" in obj:
                    value = obj["mail"]
                    props["mail"] = value if isinstance(value, str) else None
                if "proxyAddresses" in obj:
                    value = obj["proxyAddresses"]
                    smtp = []
                    if isinstance(value, list):  # a loop: no comprehension's frame
                        for p in value:
                            if isinstance(p, str) and p[:5] in SMTP_PREFIXES:
                                smtp.append(p)
                    props["proxyAddresses"] = smtp
                if user and "userType" in obj:
                    value = obj["userType"]
                    props["userType"] = value if isinstance(value, str) else None
            if group:
                ops = obj.get("members@delta")
                if isinstance(ops, list):
                    _fold_members(net, ops)
        self.entries[collection] += taken
        return taken

    def distinct(self) -> dict[str, int]:
        """Distinct objects the round named, per collection (an object sent twice counts once)."""
        return {c: len(n) for c, n in self.nets.items()}

    def present(self) -> dict[str, int]:
        """Distinct objects that exist at the end of the round, per collection."""
        return {c: sum(1 for net in n.values() if net.present) for c, n in self.nets.items()}

    def size(self) -> int:
        return sum(self.entries.values())


# (added, member kind) of a member entry by its @odata.type (member_kind, by lookup): one shared
# tuple per case instead of one per member; a type not listed (or unhashable) takes member_kind.
_OTHER_TYPES = ("#microsoft.graph.orgContact", "#microsoft.graph.device", "#microsoft.graph.servicePrincipal")
_ADDED = {USER_TYPE: (True, "u"), GROUP_TYPE: (True, "g"), "": (True, "?"), None: (True, "?")}
_REMOVED = {USER_TYPE: (False, "u"), GROUP_TYPE: (False, "g"), "": (False, "?"), None: (False, "?")}
_ADDED_OTHER, _REMOVED_OTHER = (True, "o"), (False, "o")
_ADDED.update(dict.fromkeys(_OTHER_TYPES, _ADDED_OTHER))
_REMOVED.update(dict.fromkeys(_OTHER_TYPES, _REMOVED_OTHER))


def _fold_members(net: Net, ops: list[Any]) -> None:
    members = net.members
    present = net.present
    for m in ops:
        if not isinstance(m, dict):
            continue
        try:
            mid = m["id"]
        except KeyError:
            continue
        if not isinstance(mid, str) or not mid:
            continue
        try:
            otype = m["@odata.type"]
        except KeyError:
            otype = None
        if "@removed" in m:
            try:
                members[mid] = _REMOVED[otype]
            except (KeyError, TypeError):  # another type, or an unhashable value
                members[mid] = (False, member_kind(otype))
        elif present:
            try:
                members[mid] = _ADDED[otype]
            except (KeyError, TypeError):
                members[mid] = (True, member_kind(otype))
