"""Read the directory from Microsoft Graph: raw pages over HTTP (``graph_transport.GraphHttp``).

Every read is a delta round over ``users/delta``, ``groups/delta`` (with ``members``) and
``contacts/delta``, run concurrently. A round without tokens lists everything (a full read)
and ends with a delta link per collection; a round from saved links lists only what changed
since. The links are read from each raw page's ``@odata.deltaLink``.

Each first request is the documented one (``GET /users/delta?$select=...``: Graph's "delta"
and "paging" pages); every later one is a link exactly as Graph wrote it. ``_fetch`` is the one
retry policy (429 and 5xx with Retry-After, dropped connections, malformed pages). The pages are
parsed with orjson into plain dicts: msgraph-sdk's typed models cost ~6-10 ms per object against
~10 µs here.

Memberships come from ``groups/delta`` with ``members`` selected: one paged enumeration returns
every group with its direct members (a big group's members spread over several pages), so the
request count grows with the number of objects / 999, not with the number of groups. The
per-group ``/groups/{id}/members`` read costs one request per group (10,000 groups → 10,000+
requests); it is kept only as a fallback for a Graph endpoint that does not serve delta.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Awaitable, Callable, Coroutine, Mapping
from dataclasses import dataclass, field
from functools import partial
from typing import Any, Protocol
from urllib.parse import quote, urlsplit

from ..common.aio import NoAnswer, wire_url
from ..common.errors import DeltaExpiredError, GraphError, IncompleteReadError
from ..common.netutil import jittered_backoff, no_answer_hint, same_origin
from ..config.credentials import TokenGetter
from .base import SourceRead
from .graph_transport import MAX_PAGE_BYTES, GraphHttp, GraphHttpError, _MalformedPage, _RefusedAnswer  # noqa: F401 - MAX_PAGE_BYTES: this module's API

log = logging.getLogger("shared.graph")  # the name its log lines have always carried

PAGE_SIZE = 999
USER_SELECT = ["id", "mail", "proxyAddresses", "userType"]
CONTACT_SELECT = ["id", "mail", "proxyAddresses"]
GROUP_SELECT = ["id", "displayName", "mail", "proxyAddresses"]
MEMBER_SELECT = ["id"]
COLLECTIONS = ("users", "groups", "contacts")
# What each collection's first delta request selects. Graph encodes the $select of a round's first
# request into its nextLinks and deltaLink ("user: delta": "you must specify it in the initial
# delta request ... encoded into the token portion"), so a saved link keeps tracking the
# properties it was made with: a change here must read in full (shared/reading.py, why_full).
SELECTS = {"users": USER_SELECT, "groups": [*GROUP_SELECT, "members"], "contacts": CONTACT_SELECT}
PREFER = f"odata.maxpagesize={PAGE_SIZE}"  # every page of a delta round asks for it
DEFAULT_SCOPE = "https://graph.microsoft.com/.default"
# Graph's answers to a link (a saved deltaLink, a nextLink) it no longer honours, at any level
# of the error body (GraphHttpError.codes): a "synchronization reset" (Microsoft Graph, "Use delta
# query to track changes", "Synchronization reset" and "Token duration"; "Error responses") or
# Entra's 400 Directory_ExpiredPageToken, a page token it no longer keeps, which asking again
# cannot mend: only a new round can.
SYNC_RESET_CODES = frozenset({"syncStateNotFound", "resyncRequired", "syncStateInvalid", "Directory_ExpiredPageToken"})


class RoundSink(Protocol):
    """Where a round's entries go as they arrive, in order (``shared.model.directory.Round``)."""

    def take(self, collection: str, obj: dict[str, Any]) -> None: ...


@dataclass
class ReadStats:
    requests: int = 0
    retries: int = 0
    # Entries received per collection so far, repeats and ``@removed`` included (progress lines;
    # the run summary counts distinct objects from the merge: ``shared.reading.Read.objects``).
    entries: dict[str, int] = field(default_factory=lambda: dict.fromkeys(COLLECTIONS, 0))
    membership_read: str = "groups/delta"
    links: dict[str, str | None] = field(default_factory=dict)  # collection -> the round's delta link


class _Unsupported(Exception):
    """The endpoint does not serve this request (used to fall back from groups/delta)."""


class GraphSource:
    """One complete enumeration of users, groups with direct members, and contacts."""

    def __init__(
        self,
        base_url: str,
        token: TokenGetter | None = None,
        *,
        scope: str = DEFAULT_SCOPE,
        max_attempts: int = 5,
        backoff_seconds: float = 1.0,
        timeout_seconds: float = 120.0,
        member_concurrency: int = 8,
        concurrent: bool = True,
    ) -> None:
        self.base_url = wire_url(base_url.rstrip("/"))  # an IDN host in A-labels: every URL is sent as it is
        self.max_attempts = max_attempts
        self.backoff_seconds = backoff_seconds
        self.member_concurrency = member_concurrency
        self.concurrent = concurrent  # False only to measure what concurrency buys (bench/)
        self.stats = ReadStats()
        self.resume: dict[str, dict[str, Any]] = {}  # a checkpointed round's links (read_directory)
        # One retry policy per request: _fetch owns retries (429/5xx with Retry-After, dropped
        # connections, malformed pages; max_attempts in all).
        self._http = GraphHttp(self.base_url, token, scope, timeout_seconds)

    async def aclose(self) -> None:
        await self._http.aclose()

    name = "Microsoft Graph"  # the source interface (shared/sources/base.py): a delta source
    collections = COLLECTIONS
    delta = True

    async def read(self, sink: RoundSink, links: Mapping[str, str] | None = None) -> SourceRead:
        """A first delta round (``links`` None) or a delta round from saved links."""
        stats = await (self.read_directory(sink) if links is None else self.read_changes(dict(links), sink))
        return SourceRead(self.name, True, dict(stats.links), stats.requests, stats.retries, {"membershipRead": stats.membership_read})

    # --- the enumeration -----------------------------------------------------------------
    async def read_directory(self, sink: RoundSink, resume: Mapping[str, dict[str, Any]] | None = None) -> ReadStats:
        """A first delta round over users, groups (with members) and contacts, concurrently,
        every page to the end; every entry goes to ``sink`` in arrival order, ``@removed`` and
        repeated objects included (the sink merges them: ``shared.model.directory.Round``).
        After each page, ``sink.page_done(collection, nextLink, deltaLink)`` (when the sink has
        it) learns where the round stands; ``resume`` continues a round an earlier invocation
        checkpointed: per collection ``{"next": nextLink}`` (the rest of its round) or
        ``{"delta": deltaLink}`` (its round was complete), absent: from the start.

        Any page that still fails after retries raises ``IncompleteReadError``: the caller
        must send nothing, because deletions computed from a partial read are wrong. A saved
        link or a nextLink Graph no longer honours (410, a ``SYNC_RESET_CODES`` code at any level
        of the error) raises ``DeltaExpiredError`` (start the round again)."""
        self.resume = dict(resume or {})
        await self._all(self._read_users(sink), self._read_groups(sink), self._read_contacts(sink))
        return self.stats

    def _url(self, path: str, select: list[str], *, top: bool = False) -> str:
        """A first request as Graph documents it: ``{base}/{path}?$select=a,b[&$top=999]``."""
        query = f"$select={','.join(select)}" + (f"&$top={PAGE_SIZE}" if top else "")
        return f"{self.base_url}/{path}?{query}"

    async def _delta_round(self, collection: str, first: str, sink: RoundSink) -> str | None:
        """One collection's first delta round, from the start or from its checkpoint; returns
        its deltaLink. Raises ``_Unsupported`` when the endpoint does not serve delta."""
        saved = self.resume.get(collection) or {}
        if "delta" in saved:  # complete in an earlier invocation: its entries are in the cache
            return saved["delta"]
        page_done = getattr(sink, "page_done", None)
        hook = None if page_done is None else lambda nxt, link: page_done(collection, nxt, link)

        take = partial(sink.take, collection)
        pages = _page_taker(sink, collection)
        what = f"{collection}/delta"
        if "next" in saved:
            return await self._each_page(self._follow(saved["next"], what), what, take, prefer=PREFER, count=collection, delta=True, on_page=hook,
                                         take_page=pages)
        return await self._each_page(first, what, take, prefer=PREFER, count=collection, unsupported_ok=True, on_page=hook, take_page=pages)

    async def _all(self, *aws: Coroutine[Any, Any, Any]) -> None:
        if self.concurrent:
            await gather_or_cancel(*aws)
            return
        for n, aw in enumerate(aws):
            try:
                await aw
            except BaseException:
                for rest in aws[n + 1:]:  # never started: closed, not left to warn
                    rest.close()
                raise

    async def _read_users(self, sink: RoundSink) -> None:
        await self._full_collection("users", SELECTS["users"], sink)

    async def _read_contacts(self, sink: RoundSink) -> None:
        await self._full_collection("contacts", SELECTS["contacts"], sink)

    async def _full_collection(self, collection: str, select: list[str], sink: RoundSink) -> None:
        """A first delta round (it ends with the link for the next one); the plain collection
        when the endpoint does not serve delta (then every run reads in full)."""
        try:
            self.stats.links[collection] = await self._delta_round(collection, self._url(f"{collection}/delta", select), sink)
        except _Unsupported as exc:
            log.warning("%s/delta is not served by %s (%s); reading /%s in full", collection, self.base_url, exc, collection)
            self.stats.links[collection] = None
            _unresumable(sink)
            await self._each_page(self._url(collection, select, top=True), collection, partial(sink.take, collection), count=collection)

    async def _read_groups(self, sink: RoundSink) -> None:
        first = self._url("groups/delta", SELECTS["groups"])
        try:
            self.stats.links["groups"] = await self._delta_round("groups", first, sink)
        except _Unsupported as exc:
            log.warning("groups/delta is not served by %s (%s); reading /groups and each group's /members", self.base_url, exc)
            self.stats.membership_read = "groups + members per group"
            self.stats.links["groups"] = None
            _unresumable(sink)
            await self._read_groups_per_group(sink)

    async def read_changes(self, links: dict[str, str], sink: RoundSink) -> ReadStats:
        """One incremental round from saved delta links, every page to the end, the three
        collections concurrently; every entry goes to ``sink`` in arrival order. Raises
        ``DeltaExpiredError`` when Graph no longer honours a link (the caller reads in full)
        and ``IncompleteReadError`` when a page fails."""

        async def one(collection: str) -> None:
            first = self._follow(links[collection], f"{collection}/delta")
            take = partial(sink.take, collection)
            self.stats.links[collection] = await self._each_page(first, f"{collection}/delta", take, prefer=PREFER, count=collection, delta=True,
                                                                 take_page=_page_taker(sink, collection))

        await self._all(*(one(c) for c in COLLECTIONS))
        return self.stats

    async def _read_groups_per_group(self, sink: RoundSink) -> None:
        ids: list[str] = []

        def take(obj: dict[str, Any]) -> None:
            ids.append(obj["id"])
            sink.take("groups", obj)

        await self._each_page(self._url("groups", GROUP_SELECT, top=True), "groups", take, count="groups")
        gate = asyncio.Semaphore(self.member_concurrency)

        async def members_of(gid: str) -> None:
            url = self._url(f"groups/{quote(gid, safe='')}/members", MEMBER_SELECT, top=True)
            async with gate:
                # Each member as a members@delta entry of the group: the same merge as a delta round.
                await self._each_page(url, f"groups/{gid}/members", lambda m: sink.take("groups", {"id": gid, "members@delta": [m]}))

        await asyncio.gather(*(members_of(gid) for gid in ids))

    # --- paging --------------------------------------------------------------------------
    async def _each_page(
        self,
        first: str,
        what: str,
        take: Callable[[dict[str, Any]], None],
        *,
        prefer: str | None = None,
        count: str | None = None,
        unsupported_ok: bool = False,
        delta: bool = False,
        on_page: Callable[[str | None, str | None], None] | None = None,
        take_page: Callable[[list[Any]], int] | None = None,
    ) -> str | None:
        """Follow ``@odata.nextLink`` from the URL ``first`` to the end; returns the final
        ``@odata.deltaLink``. Each entry goes to ``take``; ``prefer``: every request's Prefer
        header; ``count`` names the collection whose ``stats.entries`` the page adds to;
        ``on_page(nextLink, deltaLink)`` after each page's entries were taken. ``take_page``:
        takes a page's entries in order up to the first without an id and returns how many it
        took (the sink's ``take_page``); ``take`` then gets the rest, with the same errors."""
        url: str | None = first
        page_no = 0
        followed: set[str] = set()  # the round's nextLinks so far: one that comes back would loop forever
        while url is not None:
            # A link Graph gave (a nextLink, a saved deltaLink) may be refused with a sync reset:
            # the round cannot go on, and the caller starts one anew (DeltaExpiredError).
            page = await self._fetch(url, f"{what} page {page_no + 1}", prefer=prefer, unsupported_ok=unsupported_ok and page_no == 0,
                                     delta=delta or page_no > 0)
            values = page["value"]
            taken = 0 if take_page is None else take_page(values)
            for obj in values[taken:] if taken else values:
                if not isinstance(obj, dict) or not isinstance(obj.get("id"), str):
                    raise IncompleteReadError(f"Graph {what} page {page_no + 1} holds an object without an id")
                take(obj)
            if count is not None:
                self.stats.entries[count] += len(values)
            page_no += 1
            next_link = page.get("@odata.nextLink")
            if next_link is None:
                link = page.get("@odata.deltaLink")
                if link is not None and not isinstance(link, str):
                    raise IncompleteReadError(f"Graph {what}: @odata.deltaLink is not a URL")
                if link is None and (unsupported_ok or delta):  # a delta round ends with its deltaLink (plain listings pass neither flag)
                    raise IncompleteReadError(f"Graph {what} page {page_no}: neither @odata.nextLink nor @odata.deltaLink, so the round may not be complete; nothing was sent")
                if on_page is not None:
                    on_page(None, link)
                return link
            url = self._follow(next_link, what)
            if next_link in followed:
                raise IncompleteReadError(f"Graph {what} page {page_no}: @odata.nextLink repeats an earlier page's link, so the round would never end; nothing was sent")
            followed.add(next_link)
            if on_page is not None:
                on_page(next_link, None)
        return None

    def _follow(self, link: Any, what: str) -> str:
        """A nextLink or a saved deltaLink, checked: absolute, and on GRAPH_BASE_URL's origin
        (the token goes with the request). It is then sent exactly as Graph wrote it (Graph:
        "use the entire URL in the @odata.nextLink property as is")."""
        if not isinstance(link, str) or not link.startswith(("http://", "https://")):
            raise IncompleteReadError(f"Graph {what}: @odata.nextLink is not an absolute URL")
        if not same_origin(link, self.base_url):
            raise IncompleteReadError(f"Graph {what}: @odata.nextLink points to another host ({urlsplit(link).netloc})")
        return link

    async def _fetch(self, url: str, what: str, *, prefer: str | None = None, unsupported_ok: bool = False, delta: bool = False) -> dict[str, Any]:
        """One page, with retries: 429 and 5xx (Retry-After honoured), dropped connections,
        and a body that is not a Graph page."""
        last = "no attempt"
        last_fault: Exception | None = None
        for attempt in range(1, self.max_attempts + 1):
            self.stats.requests += 1
            try:
                return await self._http.page(url, prefer)
            except GraphHttpError as exc:
                self._refuse(exc, what, unsupported_ok=unsupported_ok, delta=delta)
                last, last_fault = f"HTTP {exc.status}", exc
                delay = exc.retry_after or jittered_backoff(self.backoff_seconds, attempt)
            except (NoAnswer, _MalformedPage) as exc:
                if isinstance(exc, _RefusedAnswer):  # hostile, not transient: no retry
                    raise IncompleteReadError(f"Graph {what} could not be read ({exc}); nothing was sent") from None
                last = exc.fault if isinstance(exc, NoAnswer) else f"{type(exc).__name__}: {exc}"
                last_fault = exc
                delay = jittered_backoff(self.backoff_seconds, attempt)
            if attempt < self.max_attempts:
                if delay > 300:
                    raise IncompleteReadError(f"Graph asked to wait {delay:.0f} s before reading {what}; giving up")
                self.stats.retries += 1
                log.info("Graph %s failed (%s); retry %d in %.1f s", what, last, attempt, delay)
                await asyncio.sleep(delay)
        hint = ""
        if isinstance(last_fault, NoAnswer):  # never an answer: the setting or the network, not Graph's load
            hint = f"; {no_answer_hint(self.base_url, 'GRAPH_BASE_URL')}"
        raise IncompleteReadError(f"Graph {what} could not be read after {self.max_attempts} attempts ({last}); nothing was sent{hint}")

    @staticmethod
    def _refuse(exc: GraphHttpError, what: str, *, unsupported_ok: bool, delta: bool) -> None:
        """Raise for an HTTP error that no retry mends; return for 429 and 5xx (retried)."""
        status = exc.status
        if delta and (status == 410 or not SYNC_RESET_CODES.isdisjoint(exc.codes)):
            named = next((c for c in exc.codes if c in SYNC_RESET_CODES), exc.code) or ""
            raise DeltaExpiredError(
                f"Graph no longer honours the link of {what} "
                f"(HTTP {status} {named}".rstrip() + ")"
            ) from None
        if unsupported_ok and status in (400, 404, 405, 501):
            raise _Unsupported(f"HTTP {status}") from None
        if status in (401, 403):
            raise GraphError(
                f"Graph refused {what} with HTTP {status} ({exc.text()}): check GRAPH_TENANT_ID, GRAPH_CLIENT_ID, the client "
                "secret and the app's admin-consented permissions (User.Read.All, GroupMember.Read.All, "
                "OrgContact.Read.All; README, 'Graph permissions')"
            ) from None
        if status != 429 and status < 500:
            # 404 for a whole collection: most often GRAPH_BASE_URL without its version (/v1.0).
            hint = "; check GRAPH_BASE_URL: Graph's root with its version, e.g. https://graph.microsoft.com/v1.0" if status == 404 else ""
            raise IncompleteReadError(f"Graph answered {what} with HTTP {status}: {exc.text()}{hint}") from None


def _page_taker(sink: RoundSink, collection: str) -> Callable[[list[Any]], int] | None:
    """The sink's ``take_page`` for ``collection`` (a page's entries at once), if it has one."""
    take_page = getattr(sink, "take_page", None)
    return None if take_page is None else partial(take_page, collection)


def _unresumable(sink: RoundSink) -> None:
    """A collection read without delta (the plain fallback) has no link a later invocation
    could resume from: the sink stops checkpointing this round."""
    stop = getattr(sink, "stop_checkpoints", None)
    if stop is not None:
        stop()


async def gather_or_cancel(*aws: Awaitable[Any]) -> list[Any]:
    """``asyncio.gather`` that cancels the siblings when one fails (no orphan reads)."""
    tasks = [asyncio.ensure_future(a) for a in aws]
    try:
        return await asyncio.gather(*tasks)
    except BaseException:
        for t in tasks:
            t.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)
        raise
