"""What every part of the Redis broker shares: one client, one pub/sub session, one outage state.

RedisBroker (server/broker/redis.py) owns the connection, the pub/sub session and reconnection;
the parts (room stream, inbox, sanctions and limits) reach them through RedisPart, so each
part's code reads as if it owned them, and a part never holds a connection of its own.
"""

from __future__ import annotations

from collections.abc import Coroutine, Sequence
from typing import Any, Protocol

from redis.exceptions import RedisClusterException, RedisError

from server.broker.shards import Call, Shards

# Connection failures look like any of these depending on where they happen. redis-py's
# cluster client raises RedisClusterException ("cannot be connected", a slot not covered),
# which is not a RedisError.
DOWN = (RedisError, RedisClusterException, OSError, ConnectionError, TimeoutError)


def named(exc: BaseException) -> str:
    """An error for a log line, with its class: a timeout's text is empty, and `lost ()` is what
    a soak's looping shard said, 287 times, with no clue what failed."""
    return f"{type(exc).__name__}: {exc}" if str(exc) else type(exc).__name__


class Link(Protocol):
    node_id: str
    _redis: Any
    _connected: bool
    _publish_cmd: str
    _targets: dict[bytes, tuple[str, str]]
    _shards: Shards
    _wait_replicas: int
    _wait_timeout_ms: int
    _wait_degrade: bool
    _down: set[str]

    def replicas_short(self, shard: str) -> bool: ...
    def replicas_seen(self, shard: str, count: int) -> None: ...
    def refused_for_replicas(self, shard: str) -> None: ...
    def _kick(self, exc: BaseException, key: str | bytes | None = None) -> None: ...
    def lose_shard(self, name: str, exc: BaseException) -> None: ...
    def serving(self, key: str | bytes) -> bool: ...
    def _spawn(self, coro: Coroutine[Any, Any, Any]) -> None: ...
    async def _listen(self, channels: list[bytes], read: Sequence[Any] | None = None) -> Any: ...
    async def _unlisten(self, channel: bytes) -> None: ...
    async def pipelined(self, calls: Sequence[Call]) -> list[Any]: ...


class RedisPart:
    """A responsibility of the Redis broker, on the broker's shared connection."""

    def __init__(self, link: Link) -> None:
        self._link = link

    @property
    def node_id(self) -> str:
        return self._link.node_id

    @property
    def _redis(self) -> Any:
        return self._link._redis

    @property
    def _connected(self) -> bool:
        return self._link._connected

    @property
    def _publish_cmd(self) -> str:
        return self._link._publish_cmd

    @property
    def _shards(self) -> Shards:
        """Per-primary connections: a tick's pipelines, a DM's WAIT (server/broker/shards.py)."""
        return self._link._shards

    @property
    def _targets(self) -> dict[bytes, tuple[str, str]]:
        return self._link._targets

    def _serving(self, key: str | bytes) -> bool:
        """Redis is up for this key: on a cluster, the shard that owns it serves now."""
        return self._link.serving(key)

    def _kick(self, exc: BaseException, key: str | bytes | None = None) -> None:
        """A command failed: the connection (on a cluster: `key`'s shard) is lost."""
        self._link._kick(exc, key)

    def _lose_shard(self, name: str, exc: BaseException) -> None:
        """A command sent to shard `name` failed (its name when sent, not its key's now)."""
        self._link.lose_shard(name, exc)

    def _spawn(self, coro: Coroutine[Any, Any, Any]) -> None:
        self._link._spawn(coro)

    async def _listen(self, channels: list[bytes], read: Sequence[Any] | None = None) -> Any:
        """Subscribe (confirmed), and with `read` run that command right after, gap-free."""
        return await self._link._listen(channels, read)

    async def _unlisten(self, channel: bytes) -> None:
        await self._link._unlisten(channel)

    async def _pipelined(self, calls: Sequence[Call]) -> list[Any]:
        """Script calls over many slots, one write per shard (RedisBroker.pipelined)."""
        return await self._link.pipelined(calls)
