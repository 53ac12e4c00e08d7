"""redis-py clients whose commands fail as every caller here expects when Redis closes a connection.

Around a Redis restart, redis-py on uvloop raises a plain RuntimeError or AttributeError from a
write on a connection Redis just closed (closed_under_us below), not a ConnectionError. A
caller that handles DOWN then let it escape: a room re-read after a gap died with it, and the
room's batches stayed held on that node for good (a soak's three Redis restarts: every room
stalled for the rest of the run). These clients raise ConnectionError instead, once redis-py is
done with the command: inside, redis-py keeps its own handling (turning them into
ConnectionError there made its cluster client re-read the topology in a storm).

The cluster client also waits for a free connection when its pool to a node is full, as the
single-Redis client's BlockingConnectionPool does, instead of failing the command at once.
"""

from __future__ import annotations

import asyncio
from typing import Any

from redis.asyncio import Redis, RedisCluster
from redis.exceptions import ConnectionError as RedisConnectionError
from redis.exceptions import MaxConnectionsError

POOL_WAIT_S = 2.0  # how long a command waits for a free connection (the client's connect timeout)


class _Sturdy:
    """execute_command, with closed_under_us's errors raised as ConnectionError."""

    async def execute_command(self, *args: Any, **kwargs: Any) -> Any:
        try:
            return await super().execute_command(*args, **kwargs)  # type: ignore[misc]
        except (RuntimeError, AttributeError) as exc:
            raise _converted(exc) from exc


class SturdyRedis(_Sturdy, Redis):
    pass


class SturdyRedisCluster(_Sturdy, RedisCluster):
    async def execute_command(self, *args: Any, **kwargs: Any) -> Any:
        """redis-py's cluster client has no waiting pool: past its per-node limit a command fails
        at once with MaxConnectionsError, before anything is written. In a resume storm (an
        in-band soak filled a node's pool) each refused history read answered a rejoining viewer
        `recovered: false` where a read a few ms later would have served it. So a refused command
        is tried again, backing off, for up to POOL_WAIT_S; then it fails as before. The wait is
        per command, so a full pool to one shard delays nothing on the others."""
        loop = asyncio.get_running_loop()
        deadline = loop.time() + POOL_WAIT_S
        delay = 0.005
        while True:
            try:
                return await super().execute_command(*args, **kwargs)
            except MaxConnectionsError:
                if loop.time() + delay > deadline:
                    raise
            await asyncio.sleep(delay)
            delay = min(delay * 2, 0.1)


def _converted(exc: RuntimeError | AttributeError) -> BaseException:
    if closed_under_us(exc):
        return RedisConnectionError(f"redis closed the connection: {exc}")
    return exc


def closed_under_us(exc: BaseException) -> bool:
    """redis-py on uvloop, around a Redis restart: a command written to a connection Redis just
    closed raises a plain RuntimeError ("unable to perform operation on <TCPTransport
    closed=True ...>"), or an AttributeError when the connection was torn down between redis-py's
    own check and its write ("'NoneType' object has no attribute 'writelines'"). Both mean Redis
    is down, like DOWN, not a bug (a soak's Redis restart answered DMs with 4500 and a traceback;
    a bare redis-py cluster client raised both, for 2-3 s after each restart)."""
    if isinstance(exc, RuntimeError):
        return "closed=True" in str(exc)
    if isinstance(exc, AttributeError):
        return str(exc).startswith("'NoneType' object has no attribute") and exc.name in _STREAM_CALLS
    return False


_STREAM_CALLS = ("writelines", "write", "drain", "read", "readline", "readexactly")  # asyncio streams'
