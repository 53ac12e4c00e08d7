"""Signed webhook delivery: a bounded queue and one sender task, so the room never waits.

Analytics hands every flushed batch of records to `on_records` (already off the hot path);
the sender task turns them into events (room started/ended, host online/offline, viewers
joined/left batched per flush), claims each event id, and POSTs it as JSON with
`X-Liveroom-Signature: sha256=<hex HMAC-SHA256 of the body>`; a failure (network, 5xx, 408,
425, 429) is retried with exponential backoff up to `retries` times, then dropped and logged;
another 4xx drops the event at once.
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import hmac
import json
import logging
import secrets
import time
from collections import defaultdict
from collections.abc import Awaitable, Callable
from typing import Any, TypeVar

import aiohttp
from redis.exceptions import RedisError

from server.analytics.recorder import HOST_JOIN, HOST_LEAVE
from server.analytics.records import JOIN, LEAVE, Record
from server.deadline import within
from server.webhooks import metrics as webhook_metrics
from server.webhooks.claim import LocalClaims

log = logging.getLogger("liveroom.webhooks")

SIGNATURE_HEADER = "X-Liveroom-Signature"
MAX_QUEUE = 1000  # pending jobs; beyond this new events are dropped (and counted)
TIMEOUT = aiohttp.ClientTimeout(total=10)
RETRY_STATUS = frozenset({408, 425, 429})  # besides 5xx and network errors: worth another try
STORE_RETRY_MAX = 5.0  # seconds between tries of the shared store (claims, counts) while it is down
STORE_WARN_EVERY = 10.0  # seconds between warnings of one store outage
T = TypeVar("T")


def _fresh_id(kind: str) -> str:
    return f"{kind}:{secrets.token_hex(8)}"


def sign(secret: str, body: bytes) -> str:
    return "sha256=" + hmac.new(secret.encode(), body, hashlib.sha256).hexdigest()


class Webhooks:
    def __init__(
        self,
        url: str,
        secret: str,
        node_id: str,
        claims: LocalClaims,
        clock: Callable[[], float] = time.time,
        retries: int = 5,
        backoff: float = 1.0,
    ) -> None:
        self.url = url
        self.secret = secret
        self.node_id = node_id
        self.claims = claims
        self.clock = clock
        self.retries = retries
        self.backoff = backoff  # seconds before the first retry, doubled each time
        self.dropped = 0
        self.delivered = 0
        self._queue: asyncio.Queue[list[Record] | dict[str, Any]] = asyncio.Queue(MAX_QUEUE)
        self._task: asyncio.Task[None] | None = None
        self._session: aiohttp.ClientSession | None = None
        self._store_warned = -float("inf")

    # -- producers (never block) -----------------------------------------------------------

    def on_records(self, records: list[Record]) -> None:
        self._put(records)

    def emit(self, kind: str, data: dict[str, Any], event_id: str | None = None) -> None:
        """Queue one event (e.g. a moderation action) with a fresh id, or `event_id`: the same
        for every retry of one thing (a gift's `gift.sent`), so the receiver can drop repeats
        and the claim lets one node send it."""
        self._put(self._event(kind, data, event_id or _fresh_id(kind)))

    def _put(self, job: list[Record] | dict[str, Any]) -> None:
        try:
            self._queue.put_nowait(job)
        except asyncio.QueueFull:
            self.dropped += 1
            webhook_metrics.deliveries.labels(result="queue_full").inc()

    # -- the sender task ----------------------------------------------------------------------

    def start(self) -> None:
        self._session = aiohttp.ClientSession(timeout=TIMEOUT)
        self._task = asyncio.get_running_loop().create_task(self._run())

    async def stop(self, grace: float = 5.0) -> None:
        """Send what is queued for up to `grace` seconds, then stop."""
        if self._task is not None:
            with contextlib.suppress(TimeoutError):
                await within(self._queue.join(), grace)
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task
        if self._session is not None:
            await self._session.close()
        await self.claims.close()

    async def _run(self) -> None:
        while True:
            job = await self._queue.get()
            try:
                events = await self._events(job) if isinstance(job, list) else [job]
                for event in events:
                    if await self._shared(lambda e=event: self.claims.claim(e["id"])):
                        await self._deliver(event)
            except Exception:
                log.exception("webhook job failed")
            finally:
                self._queue.task_done()

    async def _events(self, records: list[Record]) -> list[dict[str, Any]]:
        """One flush's records as events: per room, started/ended from the shared connection
        count, host online/offline, and one `viewers` event with who joined and left."""
        hosts: list[dict[str, Any]] = []
        joined: defaultdict[str, list[str]] = defaultdict(list)
        left: defaultdict[str, list[str]] = defaultdict(list)
        delta: defaultdict[str, int] = defaultdict(int)
        for r in records:
            if r.kind in (JOIN, HOST_JOIN):
                delta[r.room] += 1
            elif r.kind in (LEAVE, HOST_LEAVE):
                delta[r.room] -= 1
            if r.kind == JOIN:
                joined[r.room].append(r.uid)
            elif r.kind == LEAVE:
                left[r.room].append(r.uid)
            elif r.kind in (HOST_JOIN, HOST_LEAVE):
                kind = "host.online" if r.kind == HOST_JOIN else "host.offline"
                hosts.append(self._event(kind, {"room": r.room, "uid": r.uid}, f"{kind}:{r.session}"))
        started: list[dict[str, Any]] = []
        ended: list[dict[str, Any]] = []
        for room, change in delta.items():
            if not change:
                continue
            count = await self._shared(lambda r=room, c=change: self.claims.add_connections(r, c))
            if count - change <= 0 < count:
                started.append(self._event("room.started", {"room": room}, _fresh_id("room.started")))
            elif count <= 0 < count - change:
                ended.append(self._event("room.ended", {"room": room}, _fresh_id("room.ended")))
        viewers = [
            self._event(
                "viewers", {"room": room, "joined": joined[room], "left": left[room]}, _fresh_id("viewers")
            )
            for room in sorted(set(joined) | set(left))
        ]
        return started + hosts + viewers + ended

    async def _shared(self, call: Callable[[], Awaitable[T]]) -> T:
        """A call to the shared store, retried through an outage: the queue (bounded) waits."""
        failures = 0
        while True:
            try:
                result = await call()
            except (RedisError, OSError, TimeoutError) as exc:
                failures += 1
                now = time.monotonic()
                if now - self._store_warned >= STORE_WARN_EVERY:
                    self._store_warned = now
                    log.warning(
                        "webhooks: shared store unavailable (%s): %d jobs waiting, retrying",
                        type(exc).__name__,
                        self._queue.qsize() + 1,
                    )
                await asyncio.sleep(min(STORE_RETRY_MAX, 0.1 * 2**failures))
                continue
            if failures:
                log.warning("webhooks: shared store back after %d failed tries", failures)
                self._store_warned = -float("inf")
            return result

    def _event(self, kind: str, data: dict[str, Any], event_id: str) -> dict[str, Any]:
        return {"id": event_id, "type": kind, "ts": self.clock(), "node": self.node_id, "data": data}

    async def _deliver(self, event: dict[str, Any]) -> None:
        assert self._session is not None
        body = json.dumps(event, separators=(",", ":")).encode()
        headers = {
            "Content-Type": "application/json",
            SIGNATURE_HEADER: sign(self.secret, body),
            "X-Liveroom-Event": event["type"],
            "X-Liveroom-Delivery": event["id"],
        }
        attempts = 0
        for attempt in range(self.retries + 1):
            attempts += 1
            try:
                async with self._session.post(self.url, data=body, headers=headers) as response:
                    if 200 <= response.status < 300:
                        self.delivered += 1
                        webhook_metrics.deliveries.labels(result="ok").inc()
                        return
                    reason = f"HTTP {response.status}"
                    if response.status not in RETRY_STATUS and response.status < 500:
                        break  # the receiver refuses this event (bad signature?): retrying won't help
            except (aiohttp.ClientError, TimeoutError) as exc:
                reason = repr(exc)
            if attempt < self.retries:
                webhook_metrics.deliveries.labels(result="retry").inc()
                await asyncio.sleep(self.backoff * 2**attempt)
        webhook_metrics.deliveries.labels(result="dropped").inc()
        log.warning("webhook %s dropped after %d attempt(s): %s", event["id"], attempts, reason)


def make_webhooks(url: str, secret: str, node_id: str, redis: Any = None) -> Webhooks | None:
    if not url:
        return None
    if redis is not None:
        from server.webhooks.claim import RedisClaims

        return Webhooks(url, secret, node_id, RedisClaims(redis))
    return Webhooks(url, secret, node_id, LocalClaims())
