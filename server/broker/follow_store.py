"""Who follows which host, the lives hosts scheduled and who reserved them, shared by every node.

A set of followers per host (memory: a dict of sets; Redis: a SET on the host's slot
`{f:<host>}`), a hash of scheduled lives per host and a set of reservers per scheduled live on
the same slot, and a short claim per host so that a host who goes live on two nodes at once (or
republishes) tells the followers once per `live_notice_every` seconds.
"""

from __future__ import annotations

import time
from abc import ABC, abstractmethod
from dataclasses import dataclass
from typing import Any

import msgpack


@dataclass(frozen=True, slots=True)
class Scheduled:
    id: str
    at: int  # ms since the epoch
    title: str


class FollowStore(ABC):
    @abstractmethod
    async def follow(self, host: str, uid: str, on: bool) -> int:
        """Add (or remove) a follower; the host's follower count after it."""

    @abstractmethod
    async def followers(self, host: str) -> list[str]: ...

    @abstractmethod
    async def schedule(self, host: str, live: Scheduled) -> None: ...

    @abstractmethod
    async def reserve(self, host: str, live_id: str, uid: str) -> bool:
        """False when the host has no such scheduled live."""

    @abstractmethod
    async def take_due(self, host: str, before: int) -> list[tuple[Scheduled, list[str]]]:
        """The host's lives scheduled before `before` (ms) and their reservers, removed."""

    @abstractmethod
    async def claim_notice(self, host: str, ttl: float) -> bool:
        """True at most once per `ttl` seconds per host (ttl 0: always)."""

    async def close(self) -> None:  # noqa: B027 - optional hook
        """Release connections."""


class MemoryFollowStore(FollowStore):
    def __init__(self) -> None:
        self._followers: dict[str, set[str]] = {}
        self._lives: dict[str, dict[str, Scheduled]] = {}
        self._reserved: dict[tuple[str, str], set[str]] = {}
        self._noticed: dict[str, float] = {}

    async def follow(self, host: str, uid: str, on: bool) -> int:
        fans = self._followers.setdefault(host, set())
        (fans.add if on else fans.discard)(uid)
        return len(fans)

    async def followers(self, host: str) -> list[str]:
        return sorted(self._followers.get(host, ()))

    async def schedule(self, host: str, live: Scheduled) -> None:
        self._lives.setdefault(host, {})[live.id] = live

    async def reserve(self, host: str, live_id: str, uid: str) -> bool:
        if live_id not in self._lives.get(host, {}):
            return False
        self._reserved.setdefault((host, live_id), set()).add(uid)
        return True

    async def take_due(self, host: str, before: int) -> list[tuple[Scheduled, list[str]]]:
        lives = self._lives.get(host, {})
        due = [live for live in lives.values() if live.at <= before]
        for live in due:
            del lives[live.id]
        return [(live, sorted(self._reserved.pop((host, live.id), ()))) for live in due]

    async def claim_notice(self, host: str, ttl: float) -> bool:
        now = time.monotonic()
        if now < self._noticed.get(host, 0.0):
            return False
        self._noticed[host] = now + ttl
        return True


LIVE_TTL = 31 * 86400  # seconds a scheduled live and its reservations are kept


class RedisFollowStore(FollowStore):
    """A host's followers, lives and reservations on one slot (`{f:<host>}`)."""

    def __init__(self, redis: Any) -> None:
        self._redis = redis  # the node's RedisClients.commands

    @staticmethod
    def _base(host: str) -> str:
        return f"lr:{{f:{host}}}"

    async def follow(self, host: str, uid: str, on: bool) -> int:
        key = f"{self._base(host)}:followers"
        async with self._redis.pipeline(transaction=True) as pipe:
            (pipe.sadd if on else pipe.srem)(key, uid)
            pipe.scard(key)
            _, count = await pipe.execute()
        return int(count)

    async def followers(self, host: str) -> list[str]:
        members = await self._redis.smembers(f"{self._base(host)}:followers")
        return sorted(m.decode() for m in members)

    async def schedule(self, host: str, live: Scheduled) -> None:
        key = f"{self._base(host)}:lives"
        await self._redis.hset(key, live.id, msgpack.packb([live.at, live.title]))
        await self._redis.expire(key, LIVE_TTL)

    async def reserve(self, host: str, live_id: str, uid: str) -> bool:
        base = self._base(host)
        if not await self._redis.hexists(f"{base}:lives", live_id):
            return False
        await self._redis.sadd(f"{base}:reserved:{live_id}", uid)
        await self._redis.expire(f"{base}:reserved:{live_id}", LIVE_TTL)
        return True

    async def take_due(self, host: str, before: int) -> list[tuple[Scheduled, list[str]]]:
        base = self._base(host)
        lives = await self._redis.hgetall(f"{base}:lives")
        due = []
        for raw_id, raw in lives.items():
            at, title = msgpack.unpackb(raw)
            if at <= before and await self._redis.hdel(f"{base}:lives", raw_id):  # one node takes it
                live_id = raw_id.decode()
                key = f"{base}:reserved:{live_id}"
                members = await self._redis.smembers(key)
                await self._redis.delete(key)
                due.append((Scheduled(live_id, at, title), sorted(m.decode() for m in members)))
        return due

    async def claim_notice(self, host: str, ttl: float) -> bool:
        if ttl <= 0:
            return True
        return bool(await self._redis.set(f"{self._base(host)}:noticed", 1, nx=True, px=int(ttl * 1000)))

    async def close(self) -> None:
        pass  # the client is the node's (RedisClients), closed by the app


def make_follow_store(redis: Any = None) -> FollowStore:
    """`redis`: the node's RedisClients.commands, or None for one node's memory."""
    return RedisFollowStore(redis) if redis is not None else MemoryFollowStore()
