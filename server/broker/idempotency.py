"""Idempotent sends: a client-chosen `cid` on `dm` / `danmaku` is remembered per sender.

Danmaku are simple: the room stream that numbers them drops a retry (`DanmakuCids` here for
the in-memory broker and a Redis node numbering alone; with Redis the publish script, a
`SET NX` per cid on the room's slot in the same call), so a danmaku's cid costs no round trip.
What follows is for DMs, which are stored, not sequenced.

A client whose connection was reset (1012, a dead network) cannot know whether its last DM was
stored; it sends it again with the same `cid` and gets the original `dm_ack` back instead of a
second copy. The first send *claims* `(sender, kind, cid)` (Redis: `SET NX`, so every node sees
it) with a note of what it is about to store and a deadline, then records its answer for
`WINDOW` seconds. A retry that finds the answer gets it; one that finds a claim still in flight
waits for it (or is told to retry). A claim past its deadline was orphaned by a node that died
mid-send: the retry takes it over and gets the note back (the first attempt's timestamp, which
every attempt stores). A send refused before anything was stored (4501) releases its claim so
the retry stores it; one whose store call lost its answer (the DM may be stored) *abandons* it:
the claim stays, orphaned at once.

The claim is not what stops a second copy: it lives on the sender's slot, apart from the DM,
and can be lost after the DM was stored (a failover of an unreplicated write, a node killed
between the two). So the store itself records each send (`dm_send`) beside the recipient's DMs,
in the same script (Inbox.store_dm), for WINDOW seconds: a send stored before gets its first id
back, even after the recipient read and acknowledged it (a soak stored one DM twice that way).
"""

from __future__ import annotations

import asyncio
import time
from abc import ABC, abstractmethod
from collections import OrderedDict
from collections.abc import Awaitable
from dataclasses import dataclass
from typing import Any

import msgpack

WINDOW = 600  # seconds a cid is remembered
CLAIM_TTL = 12.0  # seconds before a retry may take a claim over (> the broker's 10 s socket timeout)
MEMORY_MAX = 100_000  # remembered sends on one node (oldest forgotten first)
PENDING = b"p"  # prefix of a claim whose send has not answered yet (answers are msgpack maps)


def cid_tag(cid: str | int) -> str:
    return f"i{cid}" if isinstance(cid, int) else f"s{cid}"  # 1 and "1" are different cids


def dm_send(sender: str, cid: str | int) -> str:
    """One DM send, as the recipient's store records it (Inbox.store_dm's `send`)."""
    return f"{sender}|{cid_tag(cid)}"


class DanmakuCids:
    """The danmaku `cid`s this process sequenced in the last WINDOW seconds, per room and sender.

    Used where this process numbers a room's events itself; the Redis publish script applies
    the same rule with a key per cid (redis_scripts.danmaku_claim_key).
    """

    def __init__(self, limit: int = MEMORY_MAX) -> None:
        self._limit = limit
        self._seen: OrderedDict[tuple[str, str, str], float] = OrderedDict()

    def fresh(self, room_id: str, events: list[dict[str, Any]]) -> list[dict[str, Any]]:
        """The events without the retries of danmaku already sequenced (each cid is now seen)."""
        if not any("cid" in e for e in events):
            return events
        now = time.monotonic()
        kept = []
        for event in events:
            if event.get("t") == "danmaku" and "cid" in event:
                key = (room_id, str(event.get("uid")), cid_tag(event["cid"]))
                until = self._seen.get(key)
                if until is not None and until > now:
                    continue
                self._seen[key] = now + WINDOW
                self._seen.move_to_end(key)
                if len(self._seen) > self._limit:
                    self._seen.popitem(last=False)
            kept.append(event)
        return kept


class SendInProgress(Exception):
    """Another send with this cid is still in flight (answer: retry shortly)."""


@dataclass(frozen=True, slots=True)
class Claimed:
    answer: bytes | None = None  # the first send's answer: do not send again
    orphan: dict[str, Any] | None = None  # the note of a first send whose node died mid-send


def key_of(uid: str, kind: str, cid: str | int) -> str:
    return f"lr:{{u:{uid}}}:cid:{kind}:{cid_tag(cid)}"


def _pending(note: dict[str, Any]) -> bytes:
    return PENDING + msgpack.packb({**note, "until": time.time() + CLAIM_TTL})


class SendLog(ABC):
    async def claim(self, uid: str, kind: str, cid: str | int, note: dict[str, Any] | None = None) -> Claimed:
        """Claim this send, or get the first one's answer (see the module docstring).

        Raises SendInProgress when the first send is still in flight after a few seconds.
        """
        key = key_of(uid, kind, cid)
        mine = _pending(note or {})
        for _ in range(30):  # the first send is one store away from its answer
            found = await self._claim(key, mine)
            if found is None:
                return Claimed()
            if not found.startswith(PENDING):
                return Claimed(answer=found)
            old = msgpack.unpackb(found[len(PENDING) :])
            if old.get("until", 0) < time.time():  # orphaned: take it over
                old.pop("until", None)
                # the first send's note (its ts) stays: every attempt looks for that same copy
                await self._put(key, _pending({**(note or {}), **old}))
                return Claimed(orphan=old)
            await asyncio.sleep(0.1)
        raise SendInProgress(key)

    @abstractmethod
    async def _claim(self, key: str, value: bytes) -> bytes | None:
        """SET NX: None when set, else the value there."""

    @abstractmethod
    async def _put(self, key: str, value: bytes) -> None:
        """SET (a claim taken over)."""

    @abstractmethod
    async def answer(self, uid: str, kind: str, cid: str | int, answer: bytes) -> None:
        """The send succeeded: a retry within WINDOW gets `answer`."""

    @abstractmethod
    async def release(self, uid: str, kind: str, cid: str | int) -> None:
        """The send failed: a retry must do it again."""

    async def abandon(self, uid: str, kind: str, cid: str | int, note: dict[str, Any]) -> None:
        """The send may have been stored: a retry takes the claim over at once (orphaned), with
        the note (its timestamp), and the store tells whether the first copy is there."""
        await self._put(key_of(uid, kind, cid), PENDING + msgpack.packb({**note, "until": 0}))

    async def close(self) -> None:  # noqa: B027 - optional hook
        """Release connections."""


class MemorySendLog(SendLog):
    """One node's memory (the in-memory broker's deployment is one node)."""

    def __init__(self) -> None:
        self._seen: OrderedDict[str, tuple[bytes, float]] = OrderedDict()

    async def _claim(self, key: str, value: bytes) -> bytes | None:
        now = time.monotonic()
        found = self._seen.get(key)
        if found is not None and found[1] > now:
            return found[0]
        self._keep(key, value, now + WINDOW)
        return None

    async def _put(self, key: str, value: bytes) -> None:
        self._keep(key, value, time.monotonic() + WINDOW)

    def _keep(self, key: str, value: bytes, until: float) -> None:
        self._seen[key] = (value, until)
        self._seen.move_to_end(key)
        while len(self._seen) > MEMORY_MAX:
            self._seen.popitem(last=False)

    async def answer(self, uid: str, kind: str, cid: str | int, answer: bytes) -> None:
        self._keep(key_of(uid, kind, cid), answer, time.monotonic() + WINDOW)

    async def release(self, uid: str, kind: str, cid: str | int) -> None:
        self._seen.pop(key_of(uid, kind, cid), None)


class RedisSendLog(SendLog):
    """Shared by every node: a retry on another node after a crash or a drain finds the claim.

    While Redis is unreachable it falls back to this node's memory (a DM is refused then anyway;
    a danmaku retried on the same node is still caught).
    """

    def __init__(self, redis: Any) -> None:
        from redis.exceptions import RedisClusterException, RedisError

        from server.broker.redis_sturdy import closed_under_us

        self._redis = redis  # the node's RedisClients.commands
        # RedisClusterException ("cannot be connected") is not a RedisError
        self._errors = (OSError, TimeoutError, RedisError, RedisClusterException)
        self._closed_under_us = closed_under_us  # uvloop's RuntimeError for a closed connection
        self._local = MemorySendLog()

    def _down(self, exc: BaseException) -> bool:
        """Redis unreachable (any class redis-py raises for it, uvloop's too), not a bug."""
        return isinstance(exc, self._errors) or self._closed_under_us(exc)

    async def _claim(self, key: str, value: bytes) -> bytes | None:
        try:
            if await self._redis.set(key, value, nx=True, ex=WINDOW):
                return None
            found = await self._redis.get(key)
        except Exception as exc:
            if not self._down(exc):
                raise
            return await self._local._claim(key, value)
        return _pending({"until": 0}) if found is None else found  # gone in between: claim again

    async def _put(self, key: str, value: bytes) -> None:
        await self._local._put(key, value)
        await self._quietly(self._redis.set(key, value, ex=WINDOW))

    async def answer(self, uid: str, kind: str, cid: str | int, answer: bytes) -> None:
        await self._local.answer(uid, kind, cid, answer)
        await self._quietly(self._redis.set(key_of(uid, kind, cid), answer, ex=WINDOW))  # else this node's

    async def release(self, uid: str, kind: str, cid: str | int) -> None:
        await self._local.release(uid, kind, cid)
        await self._quietly(self._redis.delete(key_of(uid, kind, cid)))  # else it expires after CLAIM_TTL

    async def _quietly(self, command: Awaitable[Any]) -> None:
        """Best effort while Redis is unreachable; a bug still raises."""
        try:
            await command
        except Exception as exc:
            if not self._down(exc):
                raise


def make_send_log(redis: Any = None) -> SendLog:
    """`redis`: the node's RedisClients.commands, or None for one node's memory."""
    return RedisSendLog(redis) if redis is not None else MemorySendLog()
