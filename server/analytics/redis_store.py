"""Analytics records in Redis, shared by every node (the node's decoding redis.asyncio client).

Keys carry the room in a hash tag, so one room's keys sit in one cluster slot:
  an:{<room>}:log:<day>   list of encoded records of that UTC day (expires after KEEP_DAYS)
  an:{<room>}:uv:<day>    HyperLogLog of the day's viewers (PFADD/PFCOUNT)
  an:{<room>}:first       hash uid -> first UTC day seen (HSETNX; return rate)
A flush is one non-transactional pipeline; a failed flush is kept by the recorder and written
again on the next flush (at least once: a pipeline cut halfway may write some records twice).
"""

from __future__ import annotations

from collections import defaultdict
from collections.abc import Awaitable, Callable, Sequence
from typing import Any

from server.analytics.records import DAY, JOIN, Record, day_of
from server.analytics.store import KEEP_DAYS, AnalyticsStore

FIRST_TTL = 400 * DAY  # seconds: a viewer unseen for this long counts as new again
# (routing key, command) calls -> results in call order, a failed command as its exception
Pipeline = Callable[[Sequence[tuple[str, Sequence[Any]]]], Awaitable[list[Any]]]
EXPIRED_MAX = 200_000  # (key, day) pairs remembered as already given their TTL


def _key(room: str, part: str) -> str:
    return f"an:{{{room}}}:{part}"


class RedisStore(AnalyticsStore):
    def __init__(self, redis: Any, pipeline: Pipeline | None = None) -> None:
        self._redis = redis  # RedisClients.text: replies decoded
        # the broker's pipelines (one write per shard, packed in C) when it has them: a flush with
        # thousands of active rooms is thousands of commands
        self._pipeline = pipeline
        self._expired: set[tuple[str, int]] = set()  # (key, day) given its TTL by this process

    async def close(self) -> None:
        pass  # the client is the node's (RedisClients), closed by the app

    async def append(self, records: list[Record]) -> None:
        grouped: defaultdict[tuple[str, int], list[Record]] = defaultdict(list)
        for r in records:
            grouped[(r.room, day_of(r.ts))].append(r)
        calls: list[tuple[str, tuple[Any, ...]]] = []
        expiring: set[tuple[str, int]] = set()  # keys given their TTL by this flush
        for (room, day), batch in grouped.items():
            log_key = _key(room, f"log:{day}")
            calls.append((log_key, ("RPUSH", log_key, *(r.encode() for r in batch))))
            joined = sorted({r.uid for r in batch if r.kind == JOIN})
            ttls = [(log_key, KEEP_DAYS * DAY)]
            if joined:
                uv_key, first_key = _key(room, f"uv:{day}"), _key(room, "first")
                calls.append((uv_key, ("PFADD", uv_key, *joined)))
                calls += [(first_key, ("HSETNX", first_key, uid, day)) for uid in joined]
                ttls += [(uv_key, KEEP_DAYS * DAY), (first_key, FIRST_TTL)]
            for key, ttl in ttls:  # once a day per key: TTLs are days long, flushes a second apart
                if (key, day) not in self._expired:
                    calls.append((key, ("EXPIRE", key, ttl)))
                    expiring.add((key, day))
        if self._pipeline is not None:
            for result in await self._pipeline(calls):
                if isinstance(result, Exception):
                    raise result  # the recorder keeps the batch and writes it again
        else:
            pipe = self._redis.pipeline(transaction=False)
            for _, command in calls:
                pipe.execute_command(*command)
            await pipe.execute()
        if len(self._expired) > EXPIRED_MAX:
            self._expired.clear()  # set them again: harmless
        self._expired |= expiring

    async def records(self, room: str, days: list[int]) -> list[Record]:
        pipe = self._redis.pipeline(transaction=False)
        for day in days:
            pipe.lrange(_key(room, f"log:{day}"), 0, -1)
        results = await pipe.execute()
        return [Record.decode(room, raw) for rows in results for raw in rows]

    async def first_seen(self, room: str, uids: list[str]) -> dict[str, int]:
        if not uids:
            return {}
        values = await self._redis.hmget(_key(room, "first"), uids)
        return {u: int(v) for u, v in zip(uids, values, strict=True) if v is not None}

    async def unique_viewers(self, room: str, day: int) -> int:
        return int(await self._redis.pfcount(_key(room, f"uv:{day}")))
