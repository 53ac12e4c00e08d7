"""The node's analytics hooks: one cheap call per join, leave or interaction.

Hooks only append a Record to an in-process list (no I/O, no await on the hot path); a
background task flushes the list to the store every `flush_interval` seconds and hands
each flushed batch to listeners (webhooks). The clock is injected so tests script exact
join/leave times.
"""

from __future__ import annotations

import asyncio
import contextlib
import itertools
import logging
import math
import secrets
import time
from collections import Counter
from collections.abc import Callable, Hashable, Sequence
from typing import TYPE_CHECKING, Any

from server.analytics import aggregate
from server.analytics import metrics as analytics_metrics
from server.analytics.records import (
    ANSWER,
    DANMAKU,
    DM,
    FIRST_FRAME,
    JOIN,
    LEAVE,
    LIKE,
    QUESTION,
    Record,
    day_of,
)
from server.analytics.store import AnalyticsStore, MemoryStore
from server.deadline import within

if TYPE_CHECKING:
    from server.analytics.redis_store import Pipeline

log = logging.getLogger("liveroom.analytics")

HOST_JOIN, HOST_LEAVE = "host_join", "host_leave"  # kept for webhooks; not viewer figures
STATS_CACHE = 1.0  # seconds a room's computed stats are served again
FAILURE_LOG_EVERY = 10.0  # seconds between logged store failures
MAX_BUFFER = 100_000  # records waiting for a flush; beyond this new ones are dropped (store down)
MAX_UNSTORED = 100_000  # records kept through a store outage, retried each flush (oldest dropped first)
FLUSH_TIMEOUT = 5.0  # seconds a flush may wait on the store (a hung Redis must not hang shutdown)

Listener = Callable[[list[Record]], None]


class Analytics:
    def __init__(
        self,
        store: AnalyticsStore,
        node_id: str,
        clock: Callable[[], float] = time.time,
        flush_interval: float = 1.0,
        funnel: Sequence[str] = aggregate.DEFAULT_FUNNEL,
    ) -> None:
        aggregate.check_funnel(funnel)
        self.store = store
        self.clock = clock
        self.flush_interval = flush_interval
        self.funnel = tuple(funnel)
        self.listeners: list[Listener] = []
        self.dropped = 0
        self._buffer: list[Record] = []
        self._unstored: list[Record] = []  # flushed to listeners, not yet in the store (outage)
        self._open: dict[Hashable, tuple[str, str, str, str]] = {}  # key -> room, uid, session, kind
        self._reported: set[str] = set()  # sessions that sent their first-frame time
        self._prefix = f"{node_id}.{secrets.token_hex(3)}"  # unique across nodes and restarts
        self._ids = itertools.count(1)
        self._task: asyncio.Task[None] | None = None
        self._flushing = asyncio.Lock()
        self._cache: dict[str, tuple[float, dict[str, Any]]] = {}  # room -> (computed at, stats)
        self._failure_logged = -math.inf

    # -- hooks (hot path: append only) -------------------------------------------------

    def joined(self, key: Hashable, room: str, uid: str, role: str) -> None:
        """A connection joined; `key` (the client) identifies it again at leave."""
        kind = HOST_JOIN if role == "host" else JOIN
        session = f"{self._prefix}.{next(self._ids)}"
        self._open[key] = (room, uid, session, kind)
        self._add(Record(kind, room, uid, self.clock(), session))

    def left(self, key: Hashable) -> None:
        found = self._open.pop(key, None)
        if found is not None:
            self._reported.discard(found[2])
            room, uid, session, kind = found
            self._add(Record(HOST_LEAVE if kind == HOST_JOIN else LEAVE, room, uid, self.clock(), session))

    def danmaku(self, room: str, uid: str) -> None:
        self._add(Record(DANMAKU, room, uid, self.clock()))

    def like(self, room: str, uid: str, count: int) -> None:
        self._add(Record(LIKE, room, uid, self.clock(), value=count))

    def direct_message(self, room: str, uid: str, to_host: bool) -> None:
        self._add(Record(DM, room, uid, self.clock(), value=int(to_host)))

    def question(self, room: str, asker: str, label: str, seq: int) -> None:
        """A danmaku the assistant read as a question (tagged within ms of its arrival)."""
        self._add(Record(QUESTION, room, asker, self.clock(), label, seq))

    def answered(self, room: str, by: str, seq: int) -> None:
        self._add(Record(ANSWER, room, by, self.clock(), "", seq))

    def first_frame(self, key: Hashable, ms: int) -> None:
        """A viewer's time to first video frame; one per connection, so a client cannot skew it."""
        found = self._open.get(key)
        if found is not None and found[3] == JOIN and found[2] not in self._reported:  # viewers only
            self._reported.add(found[2])
            self._add(Record(FIRST_FRAME, found[0], found[1], self.clock(), found[2], ms))

    def stats_message(self, key: Hashable, message: Any) -> None:
        """A client's `stats` message (`protocol.Stats`): its time to first frame."""
        self.first_frame(key, message.first_frame_ms)

    def _add(self, record: Record) -> None:
        if len(self._buffer) >= MAX_BUFFER:
            self.dropped += 1
            analytics_metrics.dropped.inc()
            return
        self._buffer.append(record)

    @property
    def open_sessions(self) -> int:
        return len(self._open)

    @property
    def pending(self) -> int:
        """Records buffered since the last flush (tests wait on this instead of sleeping)."""
        return len(self._buffer)

    # -- flushing ---------------------------------------------------------------------------

    def start(self) -> None:
        self._task = asyncio.get_running_loop().create_task(self._flush_forever())

    async def stop(self) -> None:
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task
        for key in list(self._open):  # connections still open at shutdown end here
            self.left(key)
        await self.flush()
        await self.store.close()

    async def _flush_forever(self) -> None:
        while True:
            await asyncio.sleep(self.flush_interval)
            await self.flush()

    async def flush(self) -> None:
        """Write what was buffered. Through a store outage the records are kept (up to
        MAX_UNSTORED) and retried on every flush; listeners get each record once, at once."""
        async with self._flushing:
            fresh, self._buffer = self._buffer, []
            batch = self._unstored + fresh
            if batch:
                await self._store(batch)
            for listener in self.listeners if fresh else ():
                try:
                    listener(fresh)
                except Exception:
                    log.exception("analytics listener failed")

    async def _store(self, batch: list[Record]) -> None:
        try:
            await within(self.store.append(batch), FLUSH_TIMEOUT)
        except Exception as exc:  # the store is down (Redis outage): keep, retry next flush
            self._unstored = batch[-MAX_UNSTORED:]
            lost = len(batch) - len(self._unstored)
            analytics_metrics.flushes.labels(result="failed").inc()
            if lost:
                self.dropped += lost
                analytics_metrics.dropped.inc(lost)
            now = time.monotonic()
            if now - self._failure_logged >= FAILURE_LOG_EVERY:  # an outage: not one line a second
                self._failure_logged = now
                log.warning(
                    "analytics store unavailable (%s): %d records kept for retry, %d dropped so far",
                    type(exc).__name__,
                    len(self._unstored),
                    self.dropped,
                )
            return
        if self._unstored:
            log.warning(
                "analytics store back: %d records kept through the outage written", len(self._unstored)
            )
            self._unstored = []
            self._failure_logged = -math.inf
        analytics_metrics.flushes.labels(result="ok").inc()
        for kind, n in Counter(r.kind for r in batch).items():
            analytics_metrics.records.labels(kind=kind).inc(n)

    @property
    def unstored(self) -> int:
        """Records waiting for the store to come back."""
        return len(self._unstored)

    # -- reading ------------------------------------------------------------------------------

    async def stats(self, room: str) -> dict[str, Any]:
        """The room's figures now: this node's buffer first, so its own facts are included.

        Reading a busy room's two days of records is the expensive part: dashboards polling
        the same room within STATS_CACHE seconds (of the injected clock) share one answer."""
        now = self.clock()
        cached = self._cache.get(room)
        if cached is not None and 0 <= now - cached[0] < STATS_CACHE:
            return cached[1]
        await self.flush()
        today = day_of(now)
        records = await self.store.records(room, [today - 1, today])
        uids = sorted({r.uid for r in records if r.kind == JOIN})
        first_seen = await self.store.first_seen(room, uids)
        out = aggregate.room_stats(records, now, first_seen, self.funnel)
        out["room"] = room
        out["day"]["unique_viewers_store"] = await self.store.unique_viewers(room, today)
        self._cache = {r: v for r, v in self._cache.items() if now - v[0] < STATS_CACHE}
        self._cache[room] = (now, out)
        return out


def make_analytics(
    redis: Any,
    node_id: str,
    flush: float,
    funnel: str,
    pipeline: Pipeline | None = None,
) -> Analytics:
    """Memory store on one node, Redis store (shared) when the node uses a Redis broker (whose
    pipelines it may write through)."""
    store: AnalyticsStore
    if redis is not None:
        from server.analytics.redis_store import RedisStore

        store = RedisStore(redis, pipeline)
    else:
        store = MemoryStore()
    steps = [s.strip() for s in funnel.split(",") if s.strip()]
    return Analytics(store, node_id, flush_interval=flush, funnel=steps or aggregate.DEFAULT_FUNNEL)
