"""Scripted delta rounds: a test queues the exact pages of the next round of a collection."""

from __future__ import annotations

import copy
import time
import uuid
from collections.abc import Mapping, Sequence
from typing import Any

from devstack.graph.model import COLLECTIONS, DEFAULT_PAGE_SIZE, GraphError, _dumps
from devstack.graph.wire import _page


class ScriptedRounds:
    """Mixin of :class:`GraphEmulator`: ``script_round`` and the serving of a queued round."""

    # --- scripted delta rounds ---------------------------------------------------------------------
    def script_round(self, collection: str, pages: Sequence[Sequence[Mapping[str, Any]]]) -> None:
        """Serve the next delta round of ``collection`` (a first round, or one from a delta link)
        as exactly these pages of entries, in this order, then the usual ``@odata.deltaLink``
        (its watermark: the model's at the round's first page). The model is not changed: set it
        to the round's final state with the mutation methods, before or after.

        This is how the emulator serves the shapes Graph documents for any delta round, the
        first one included (Microsoft Graph, "Use delta query to track changes in Microsoft Graph
        data" learn.microsoft.com/graph/delta-query-overview; "Get incremental changes for
        groups" learn.microsoft.com/graph/delta-query-groups; "group: delta"
        learn.microsoft.com/graph/api/group-delta; "user: delta"
        learn.microsoft.com/graph/api/user-delta):

        * an object repeated within a round with changed properties: the same id on a later page
          (or later on the same page) with the newer values; the later entry is the newer state;
        * ``@removed`` in the first round: ``{"id": ..., "@removed": {"reason": "changed"}}``
          (soft-deleted; ``"deleted"``: permanently) for an object deleted during the round;
        * a group's properties changed between its slices: a big group comes in several entries
          (slices), each repeating its selected properties, and a later slice may carry newer
          values;
        * a member removed in a later slice: a ``members@delta`` entry
          ``{"@odata.type": ..., "id": ..., "@removed": {"reason": "deleted"}}`` in a later slice
          removes a member an earlier slice added.

        Entries are served as given, so a test can also interleave a group's slices with other
        objects. Raises ``ValueError`` for an entry without a string id, or ``members@delta``
        outside groups or not a list."""
        if collection not in COLLECTIONS:
            raise ValueError(f"unknown collection {collection!r}")
        checked: list[list[dict[str, Any]]] = []
        for n, page in enumerate(pages):
            out = []
            for entry in page:
                if not isinstance(entry, Mapping) or not isinstance(entry.get("id"), str) or not entry["id"]:
                    raise ValueError(f"page {n + 1}: every entry needs a string id")
                if "members@delta" in entry and (collection != "groups" or not isinstance(entry["members@delta"], list)):
                    raise ValueError(f"page {n + 1}: members@delta is a list, on groups only")
                out.append(copy.deepcopy(dict(entry)))
            checked.append(out)
        if not checked:
            checked = [[]]
        with self._lock:
            self._scripts[collection].append(checked)

    def _start_script(self, coll: str, segment: str, select: list[str] | None) -> tuple[int, bytes, dict[str, str]]:
        pages = self._scripts[coll].pop(0)
        sid = uuid.uuid4().hex
        self._script_runs[sid] = ([[_dumps(e) for e in page] for page in pages], self._seq, select)
        return self._script_page(coll, segment, sid, 0)

    def _script_page(self, coll: str, segment: str, sid: str, index: int) -> tuple[int, bytes, dict[str, str]]:
        run = self._script_runs.get(sid)
        if run is None or not 0 <= index < len(run[0]):
            raise GraphError(400, "Request_BadRequest", "Invalid $skiptoken.")
        pages, watermark, select = run
        props, members = self._selection(coll, select)
        if index + 1 < len(pages):
            token = self._seal({"k": "ds", "c": coll, "script": sid, "page": index + 1, "e": self._epoch, "t": time.time()})
            next_link, delta_link = f"{self.base_url}/{coll}/{segment}?$skiptoken={token}", None
        else:
            next_link, delta_link = None, self._delta_link(coll, segment, select, watermark, DEFAULT_PAGE_SIZE)
            del self._script_runs[sid]
        shown = props if select is not None else None
        return 200, _page(self._context(coll, shown, members), pages[index], next_link=next_link, delta_link=delta_link), {}
