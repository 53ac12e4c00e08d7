"""Idempotent sends: a client-chosen `cid` on `dm` / `danmaku` is remembered per sender.

A client whose connection was reset (1012, a dead network) cannot know whether its last DM was
stored; it sends it again with the same `cid` and gets the original `dm_ack` back instead of a
second copy. The first send *claims* `(sender, kind, cid)` (Redis: `SET NX` with a short TTL,
so every node sees it), then records its answer for `WINDOW` seconds; a retry that finds the
claim gets that answer, or waits for it while the first send is still in flight. A send that
fails (4501) releases its claim so the retry stores it.
"""

from __future__ import annotations

import asyncio
import contextlib
import time
from abc import ABC, abstractmethod
from collections import OrderedDict

WINDOW = 600  # seconds a cid is remembered after its send succeeded
CLAIM_TTL = 10  # seconds a claim lives without an answer (its node died mid-send)
MEMORY_MAX = 100_000  # remembered sends on one node (oldest forgotten first)
PENDING = b""  # a claim whose send has not answered yet
SENT = b"1"  # the answer of a danmaku: it was sequenced (the event itself is the acknowledgement)


class SendInProgress(Exception):
    """Another send with this cid is still in flight (answer: retry shortly)."""


def key_of(uid: str, kind: str, cid: str | int) -> str:
    tag = f"i{cid}" if isinstance(cid, int) else f"s{cid}"  # 1 and "1" are different cids
    return f"lr:{{u:{uid}}}:cid:{kind}:{tag}"


class SendLog(ABC):
    async def claim(self, uid: str, kind: str, cid: str | int) -> bytes | None:
        """None: this send is new and now claimed. Else the first send's answer (b"" for a danmaku).

        Raises SendInProgress when the first send has not answered within a few seconds.
        """
        key = key_of(uid, kind, cid)
        for _ in range(30):  # the first send is one store away from its answer
            found = await self._claim(key)
            if found is None or found != PENDING:
                return found
            await asyncio.sleep(0.1)
        raise SendInProgress(key)

    @abstractmethod
    async def _claim(self, key: str) -> bytes | None:
        """SET NX: None when set, else the value there."""

    @abstractmethod
    async def answer(self, uid: str, kind: str, cid: str | int, answer: bytes) -> None:
        """The send succeeded: a retry within WINDOW gets `answer`."""

    async def answer_many(self, answers: list[tuple[str, str, str | int, bytes]]) -> None:
        """Several answers at once (the danmaku of one tick): one round trip with Redis."""
        for uid, kind, cid, answer in answers:
            await self.answer(uid, kind, cid, answer)

    @abstractmethod
    async def release(self, uid: str, kind: str, cid: str | int) -> None:
        """The send failed: a retry must do it again."""

    async def close(self) -> None:  # noqa: B027 - optional hook
        """Release connections."""


class MemorySendLog(SendLog):
    """One node's memory (the in-memory broker's deployment is one node)."""

    def __init__(self) -> None:
        self._seen: OrderedDict[str, tuple[bytes, float]] = OrderedDict()

    async def _claim(self, key: str) -> bytes | None:
        now = time.monotonic()
        found = self._seen.get(key)
        if found is not None and found[1] > now:
            return found[0]
        self._put(key, PENDING, now + CLAIM_TTL)
        return None

    def _put(self, key: str, value: bytes, until: float) -> None:
        self._seen[key] = (value, until)
        self._seen.move_to_end(key)
        while len(self._seen) > MEMORY_MAX:
            self._seen.popitem(last=False)

    async def answer(self, uid: str, kind: str, cid: str | int, answer: bytes) -> None:
        self._put(key_of(uid, kind, cid), answer, time.monotonic() + WINDOW)

    async def release(self, uid: str, kind: str, cid: str | int) -> None:
        self._seen.pop(key_of(uid, kind, cid), None)


class RedisSendLog(SendLog):
    """Shared by every node: a retry on another node after a crash or a drain finds the claim.

    While Redis is unreachable it falls back to this node's memory (a DM is refused then anyway;
    a danmaku retried on the same node is still caught).
    """

    def __init__(self, url: str, cluster: bool = False) -> None:
        import redis.asyncio as aioredis
        from redis.asyncio.cluster import RedisCluster
        from redis.exceptions import RedisError

        opts = {"socket_timeout": 2.0, "socket_connect_timeout": 1.0}
        self._redis = RedisCluster.from_url(url, **opts) if cluster else aioredis.Redis.from_url(url, **opts)
        self._errors = (OSError, TimeoutError, RedisError)
        self._local = MemorySendLog()

    async def _claim(self, key: str) -> bytes | None:
        try:
            if await self._redis.set(key, PENDING, nx=True, ex=CLAIM_TTL):
                return None
            found = await self._redis.get(key)
        except self._errors:
            return await self._local._claim(key)
        return PENDING if found is None else found  # None: expired in between, ask again

    async def answer(self, uid: str, kind: str, cid: str | int, answer: bytes) -> None:
        await self._local.answer(uid, kind, cid, answer)
        with contextlib.suppress(*self._errors):  # else remembered on this node only
            await self._redis.set(key_of(uid, kind, cid), answer, ex=WINDOW)

    async def answer_many(self, answers: list[tuple[str, str, str | int, bytes]]) -> None:
        await self._local.answer_many(answers)
        pipe = self._redis.pipeline(transaction=False)
        for uid, kind, cid, answer in answers:
            pipe.set(key_of(uid, kind, cid), answer, ex=WINDOW)
        with contextlib.suppress(*self._errors):  # else remembered on this node only
            await pipe.execute()

    async def release(self, uid: str, kind: str, cid: str | int) -> None:
        await self._local.release(uid, kind, cid)
        with contextlib.suppress(*self._errors):  # else the claim expires after CLAIM_TTL
            await self._redis.delete(key_of(uid, kind, cid))

    async def close(self) -> None:
        await self._redis.aclose()


def make_send_log(redis_url: str | None, cluster: bool) -> SendLog:
    return RedisSendLog(redis_url, cluster) if redis_url else MemorySendLog()
