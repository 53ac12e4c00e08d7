"""Token buckets per action and scope, checked before any expensive work.

Scopes: a connection, a user (all of its connections on this node, and across
nodes through periodic reconciliation), an IP, a room. Every bucket is a few
floats refilled lazily on use, so a check is O(1) with no allocation; idle
buckets are swept, so the tables stay bounded by the active population.

Cross-node user limits (see docs/ARCHITECTURE.md): each node counts the tokens
its users spent since the last exchange (`UsageLedger`), swaps the counts with
the other nodes through the broker (`Broker.exchange_usage`) about once a
second, for every user that still has a bucket here, and debits the other
nodes' spending from its local buckets. A user can overspend by about one burst
per node it starts on plus one interval of spending; in exchange no check waits
on the network.
"""

from __future__ import annotations

import math
import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass

Clock = Callable[[], float]
ACTIONS = ("frame", "danmaku", "like", "dm", "join", "mod", "gift", "follow")
SCOPES = ("conn", "user", "ip", "room")

# rate per second / burst. "frame" counts every frame a connection sends (garbage too),
# so a flood of anything is cut before it is decoded. The room scope is a per-node budget
# for danmaku only: beyond it low-priority danmaku is shed (see Guard).
DEFAULT_LIMITS: dict[str, tuple[float, float]] = {
    "frame.conn": (30, 60),
    "danmaku.conn": (2, 6),
    "danmaku.user": (3, 8),
    "danmaku.ip": (30, 60),
    "danmaku.room": (300, 600),
    "like.conn": (10, 30),
    "like.user": (15, 40),
    "like.ip": (200, 400),
    "dm.conn": (1, 5),
    "dm.user": (2, 10),
    "dm.ip": (20, 40),
    "join.user": (1, 10),
    "join.ip": (20, 100),
    "mod.user": (5, 20),
    # gifts are paid, so a burst is a combo; follows/reservations/links are rare clicks
    "gift.conn": (10, 30),
    "gift.user": (10, 30),
    "gift.ip": (100, 300),
    "follow.conn": (2, 10),
    "follow.user": (2, 10),
}


class TokenBucket:
    """`burst` tokens, refilled at `rate` per second; take() says how long to wait when empty."""

    __slots__ = ("burst", "rate", "stamp", "tokens")

    def __init__(self, rate: float, burst: float, now: float) -> None:
        self.rate = rate
        self.burst = burst
        self.tokens = burst
        self.stamp = now

    def take(self, now: float, cost: float = 1.0) -> float:
        """Spend `cost` tokens: 0.0 when allowed, else the seconds until it would be."""
        tokens = self.tokens + (now - self.stamp) * self.rate
        if tokens > self.burst:
            tokens = self.burst
        self.stamp = now
        if tokens >= cost:
            self.tokens = tokens - cost
            return 0.0
        self.tokens = tokens
        return (cost - tokens) / self.rate if self.rate > 0 else math.inf

    def debit(self, amount: float) -> None:
        """Spend without asking (tokens spent on another node); may go below zero."""
        self.tokens = max(self.tokens - amount, -self.burst)

    def full(self, now: float) -> bool:
        return self.tokens + (now - self.stamp) * self.rate >= self.burst


@dataclass(frozen=True, slots=True)
class Limit:
    rate: float
    burst: float

    def bucket(self, now: float) -> TokenBucket:
        return TokenBucket(self.rate, self.burst, now)


class LimitError(ValueError):
    pass


def parse_limits(spec: str) -> dict[str, Limit]:
    """`action.scope=rate/burst,...` over the defaults; `off` disables every bucket.

    A rate of 0 (`danmaku.ip=0`) disables that one bucket.
    """
    spec = spec.strip()
    if spec.lower() == "off":
        return {}
    merged = dict(DEFAULT_LIMITS)
    for item in filter(None, (part.strip() for part in spec.split(","))):
        key, sep, value = item.partition("=")
        action, _, scope = key.strip().partition(".")
        if not sep or action not in ACTIONS or scope not in SCOPES:
            raise LimitError(f"bad rate limit {item!r}: expected action.scope=rate/burst")
        rate_s, _, burst_s = value.partition("/")
        try:
            rate = float(rate_s)
            burst = float(burst_s) if burst_s else max(rate, 1.0)
        except ValueError:
            raise LimitError(f"bad rate limit {item!r}: rate and burst must be numbers") from None
        if rate < 0 or burst < 1:
            raise LimitError(f"bad rate limit {item!r}: rate >= 0 and burst >= 1")
        merged[f"{action}.{scope}"] = (rate, burst)
    return {key: Limit(rate, burst) for key, (rate, burst) in merged.items() if rate > 0}


class BucketTable:
    """Buckets for one action+scope keyed by user id, IP or room; swept when idle and full."""

    __slots__ = ("_buckets", "clock", "limit")

    def __init__(self, limit: Limit, clock: Clock = time.monotonic) -> None:
        self.limit = limit
        self.clock = clock
        self._buckets: dict[str, TokenBucket] = {}

    def take(self, key: str, now: float, cost: float = 1.0) -> float:
        bucket = self._buckets.get(key)
        if bucket is None:
            bucket = self._buckets[key] = self.limit.bucket(now)
        return bucket.take(now, cost)

    def get(self, key: str) -> TokenBucket | None:
        return self._buckets.get(key)

    def active_keys(self) -> Iterable[str]:
        """Keys with a bucket that has not been swept (spent recently, maybe not refilled)."""
        return self._buckets.keys()

    def sweep(self, now: float) -> int:
        """Forget buckets that refilled completely: a fresh one is the same thing."""
        idle = [key for key, bucket in self._buckets.items() if bucket.full(now)]
        for key in idle:
            del self._buckets[key]
        if len(idle) > len(self._buckets):  # a dict never shrinks: copy it to give a burst's room back
            self._buckets = dict(self._buckets)
        return len(idle)

    def __len__(self) -> int:
        return len(self._buckets)


class UsageLedger:
    """Tokens each user spent locally since the last cross-node exchange."""

    __slots__ = ("_spent",)

    def __init__(self) -> None:
        self._spent: dict[str, float] = {}

    def add(self, key: str, cost: float = 1.0) -> None:
        self._spent[key] = self._spent.get(key, 0.0) + cost

    def take_all(self) -> dict[str, float]:
        spent, self._spent = self._spent, {}
        return spent


def reconcile(tables: dict[str, BucketTable], remote: dict[str, float]) -> None:
    """Debit what other nodes reported (keys `action|uid`) from the local user buckets."""
    for key, amount in remote.items():
        action, _, uid = key.partition("|")
        table = tables.get(action)
        if table is not None:
            now = table.clock()
            table.take(uid, now, 0.0)  # create/refill so the debit applies to a current bucket
            bucket = table.get(uid)
            if bucket is not None:
                bucket.debit(amount)


def sweep_all(tables: Iterable[BucketTable], now: float) -> None:
    for table in tables:
        table.sweep(now)
