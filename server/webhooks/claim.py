"""Which node sends an event, and the shared counts that decide room started/ended.

With Redis every event id is claimed with SET NX before sending, so an event that more than
one node could emit is delivered by the first to claim it; connection counts per room are
INCRBY on one key per room (hash-tagged: cluster-safe). In memory both are local.
"""

from __future__ import annotations

from collections import defaultdict
from typing import Any

CLAIM_TTL = 86400  # seconds an event id stays claimed (longer than any retry schedule)


class LocalClaims:
    def __init__(self) -> None:
        self._counts: defaultdict[str, int] = defaultdict(int)

    async def claim(self, event_id: str) -> bool:
        return True

    async def add_connections(self, room: str, delta: int) -> int:
        self._counts[room] += delta
        return self._counts[room]

    async def close(self) -> None:
        pass


class RedisClaims(LocalClaims):
    def __init__(self, redis: Any) -> None:
        super().__init__()
        self._redis = redis  # the node's RedisClients.commands

    async def claim(self, event_id: str) -> bool:
        return bool(await self._redis.set(f"wh:{{{event_id}}}", 1, nx=True, ex=CLAIM_TTL))

    async def add_connections(self, room: str, delta: int) -> int:
        return int(await self._redis.incrby(f"wh:{{{room}}}:conns", delta))

    async def close(self) -> None:
        pass  # the client is the node's (RedisClients), closed by the app
