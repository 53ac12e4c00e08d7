"""Connection caps, join admission control and the Origin and Host allow-lists.

A flood of connections or joins must get a fast, cheap "no" instead of making
every join slower: caps on concurrent connections per IP and per user, and a
join admission gate that refuses (with a retry-after) while the node is
saturated, i.e. too many joins are in flight or the event loop is lagging.
"""

from __future__ import annotations

import asyncio
import contextlib
import ipaddress
import random
from collections.abc import Callable
from urllib.parse import urlsplit


class ConcurrencyCap:
    """How many connections each key (an IP, a user id) holds now; refuses beyond `limit`."""

    __slots__ = ("_held", "limit")

    def __init__(self, limit: int) -> None:
        self.limit = limit  # 0: no cap
        self._held: dict[str, int] = {}

    def acquire(self, key: str) -> bool:
        held = self._held.get(key, 0)
        if self.limit and held >= self.limit:
            return False
        self._held[key] = held + 1
        return True

    def release(self, key: str) -> None:
        held = self._held.get(key, 0) - 1
        if held > 0:
            self._held[key] = held
        else:
            self._held.pop(key, None)

    def held(self, key: str) -> int:
        return self._held.get(key, 0)

    def __len__(self) -> int:
        return len(self._held)


class LoopLag:
    """Event-loop lag: how late a periodic wake-up fires, smoothed (EWMA) over a few samples.

    One late wake-up on a noisy machine should not refuse joins; a loop that
    stays behind should.
    """

    def __init__(self, interval: float = 0.1, alpha: float = 0.3) -> None:
        self.interval = interval
        self.alpha = alpha
        self.value = 0.0
        self._task: asyncio.Task[None] | None = None

    def start(self) -> None:
        if self._task is None:
            self._task = asyncio.get_running_loop().create_task(self._run())

    async def stop(self) -> None:
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task
            self._task = None

    async def _run(self) -> None:
        loop = asyncio.get_running_loop()
        while True:
            before = loop.time()
            await asyncio.sleep(self.interval)
            lag = max(0.0, loop.time() - before - self.interval)
            self.value += self.alpha * (lag - self.value)


class JoinGate:
    """Admission control for joins: refuse fast while the node is saturated.

    `enter()` returns 0.0 and counts the join as in flight, or the seconds the
    client should wait before retrying (jittered, so refused clients do not
    all come back at once).
    """

    def __init__(self, max_inflight: int, max_lag: float, lag: Callable[[], float]) -> None:
        self.max_inflight = max_inflight  # 0: no limit
        self.max_lag = max_lag  # seconds; 0: no limit
        self.lag = lag
        self.inflight = 0

    def enter(self) -> float:
        if self.max_inflight and self.inflight >= self.max_inflight:
            return round(random.uniform(0.5, 2.0), 2)
        lag = self.lag()
        if self.max_lag and lag > self.max_lag:
            return round(random.uniform(1.0, 2.0) * max(1.0, lag * 2), 2)
        self.inflight += 1
        return 0.0

    def leave(self) -> None:
        self.inflight = max(0, self.inflight - 1)


def parse_origins(spec: str) -> tuple[frozenset[str], bool]:
    """(allowed origins, allow any); entries like `https://example.com`, or `*`."""
    items = {item.strip().rstrip("/").lower() for item in spec.split(",") if item.strip()}
    return frozenset(items - {"*"}), "*" in items


def origin_allowed(origin: str | None, host: str | None, allowed: frozenset[str], any_origin: bool) -> bool:
    """Browsers always send Origin: allow the page's own host and the allow-list.

    No Origin header means a non-browser client (no ambient cookies to hijack),
    which is allowed; `null` (sandboxed frames, file://) is treated as cross-site.
    """
    if origin is None or any_origin:
        return True
    origin = origin.strip().rstrip("/").lower()
    if origin in allowed:
        return True
    netloc = urlsplit(origin).netloc
    return bool(netloc) and host is not None and netloc == host.strip().lower()


def host_name(value: str) -> str:
    """The host part of a Host header or netloc, lower case, without port or IPv6 brackets."""
    value = value.strip().lower()
    if value.startswith("["):
        return value[1:].partition("]")[0]
    return value.rsplit(":", 1)[0] if value.count(":") == 1 else value


def parse_hosts(spec: str, own: list[str]) -> tuple[frozenset[str], bool]:
    """(allowed host names, allow any): `--allowed-hosts a,b` (or `*`) plus the node's own names."""
    items = {host_name(item) for item in [*spec.split(","), *own] if item.strip()}
    return frozenset(items - {"*"}), "*" in {item.strip() for item in spec.split(",")}


def host_allowed(host: str | None, allowed: frozenset[str], any_host: bool) -> bool:
    """DNS rebinding: a page on evil.example whose name now resolves to this server sends
    `Host: evil.example`. A name must be one of ours; an IP literal cannot be rebound.
    No Host header: not a browser (browsers always send it)."""
    if host is None or any_host:
        return True
    name = host_name(host)
    if name in allowed:
        return True
    try:
        ipaddress.ip_address(name)
    except ValueError:
        return False
    return True
