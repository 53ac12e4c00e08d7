"""Which node holds a room's media: a claim with a TTL its holder renews with its heartbeat.

Why: a room's publishers must share one node (the origin; other nodes cascade from it), and
when that node dies its `live` state must not linger. The first node to take a publisher
claims the room (`SET NX PX`); it renews the claim every third of the presence TTL while it
holds a publication, and releases it when the last one ends. A claim that is not renewed
expires within the TTL. The node that notices first takes the claim itself for a moment (a
reaper's claim, so no publisher can go live meanwhile), announces the dead origin's
publishers as gone (`live` off), and releases it: edges and viewers let go, and the host's
next publish, on any node, claims the room and goes live again.

Memory: one process is the whole deployment, so a dict with deadlines is the whole story.
Redis: plain keys `lr:{r:<room>}:media` (same hash tag as the room's other keys).
"""

from __future__ import annotations

import time
from typing import Any

from server.broker import redis_scripts as rs

# KEYS[1] claim; ARGV node, ttl ms. Take the claim if free, renew it if ours; return the holder.
_CLAIM = """
local holder = redis.call('GET', KEYS[1])
if not holder then
  redis.call('SET', KEYS[1], ARGV[1], 'PX', ARGV[2])
  return ARGV[1]
end
if holder == ARGV[1] then
  redis.call('PEXPIRE', KEYS[1], ARGV[2])
end
return holder
"""

# KEYS[1] claim; ARGV node. Delete only our own claim.
_RELEASE = """
if redis.call('GET', KEYS[1]) == ARGV[1] then
  return redis.call('DEL', KEYS[1])
end
return 0
"""


def claim_key(room_id: str) -> str:
    return f"{rs.room_keys(room_id).meta.rsplit(':', 1)[0]}:media"


def edges_key(room_id: str) -> str:
    """ZSET of `node|url` -> deadline (ms): the nodes pulling the room straight from its origin."""
    return f"{claim_key(room_id)}:edges"


class MediaClaims:
    """In-process claims (the memory broker's deployment: one node)."""

    def __init__(self, clock: Any = time.monotonic) -> None:
        self._claims: dict[str, tuple[str, float]] = {}
        self._edges: dict[str, dict[str, tuple[str, float]]] = {}  # room -> node -> (url, deadline)
        self._clock = clock

    async def claim(self, room_id: str, node: str, ttl: float) -> str:
        """Take or renew `room_id` for `node`; returns the holder (`node` when it got it)."""
        return self._claim(claim_key(room_id), node, ttl)

    def _claim(self, key: str, node: str, ttl: float) -> str:
        now = self._clock()
        held = self._claims.get(key)
        if held is None or held[1] <= now or held[0] == node:
            self._claims[key] = (node, now + ttl)
            return node
        return held[0]

    async def holders(self, room_ids: list[str]) -> dict[str, str | None]:
        now = self._clock()
        out: dict[str, str | None] = {}
        for room_id in room_ids:
            held = self._claims.get(claim_key(room_id))
            out[room_id] = held[0] if held is not None and held[1] > now else None
        return out

    async def register_edge(self, room_id: str, node: str, url: str, ttl: float) -> None:
        """The relay registry: `node` pulls `room_id` straight from its origin and may feed edges."""
        self._edges.setdefault(room_id, {})[node] = (url, self._clock() + ttl)

    async def edges(self, room_id: str) -> list[tuple[str, str]]:
        """(node, media URL) of the room's registered edges, in no particular order."""
        now = self._clock()
        return [
            (node, url) for node, (url, deadline) in self._edges.get(room_id, {}).items() if deadline > now
        ]

    async def release(self, room_id: str, node: str) -> None:
        key = claim_key(room_id)
        if self._claims.get(key, ("", 0.0))[0] == node:
            del self._claims[key]

    async def close(self) -> None:
        return None


class RedisMediaClaims(MediaClaims):
    """Claims in Redis, shared by every node; the node's `RedisClients.commands` client."""

    def __init__(self, redis: Any) -> None:
        super().__init__()
        self._redis = redis
        self._claim_script = self._redis.register_script(_CLAIM)
        self._release_script = self._redis.register_script(_RELEASE)

    async def claim(self, room_id: str, node: str, ttl: float) -> str:
        holder = await self._claim_script(keys=[claim_key(room_id)], args=[node, int(ttl * 1000)])
        return holder.decode() if isinstance(holder, bytes) else str(holder)

    async def holders(self, room_ids: list[str]) -> dict[str, str | None]:
        if not room_ids:
            return {}
        pipe = self._redis.pipeline(transaction=False)  # one round trip (split per shard in a cluster)
        for room_id in room_ids:
            pipe.get(claim_key(room_id))
        values = await pipe.execute()
        return {r: (v.decode() if isinstance(v, bytes) else v) for r, v in zip(room_ids, values, strict=True)}

    async def register_edge(self, room_id: str, node: str, url: str, ttl: float) -> None:
        key, now_ms = edges_key(room_id), int(time.time() * 1000)
        pipe = self._redis.pipeline(transaction=False)
        pipe.zadd(key, {f"{node}|{url}": now_ms + int(ttl * 1000)})
        pipe.zremrangebyscore(key, "-inf", now_ms)
        pipe.pexpire(key, int(ttl * 1000))
        await pipe.execute()

    async def edges(self, room_id: str) -> list[tuple[str, str]]:
        members = await self._redis.zrangebyscore(edges_key(room_id), int(time.time() * 1000), "+inf")
        out = []
        for member in members:
            node, _, url = (member.decode() if isinstance(member, bytes) else member).partition("|")
            out.append((node, url))
        return out

    async def release(self, room_id: str, node: str) -> None:
        await self._release_script(keys=[claim_key(room_id)], args=[node])

    async def close(self) -> None:
        return None  # the client is the node's (RedisClients), closed by the app
