"""The node's Redis clients for everything but the room stream's hot path, built in one place.

Why a module of its own: the media claims, the webhook claims, the `cid` send log, the gift,
follow and PK stores and the analytics store each built a redis-py client from the URL (seven
places, seven connection pools). `app.py` now builds one `RedisClients` per node and hands each
user the client it needs: one bytes client shared by the claims, the send log and the stores,
one decoding client for analytics (its store reads strings). The broker's parts (stream, inbox, sanctions) share the broker's own
connection (`redis.py`: per-primary pools and RESP3 sessions it reconnects itself), built from
the same URL by the same composition root. The holder closes the clients once, last.
"""

from __future__ import annotations

from typing import Any

# One timeout for the small users: a claim, a SET NX, an INCRBY; past it they fall back or retry.
TIMEOUT = 2.0
ANALYTICS_TIMEOUT = 5.0  # a flush is one pipeline of many commands
POOL_SIZE = 64  # connections per client to one Redis (shards.py's figure); more wait their turn
CLUSTER_MAX = 1000  # per cluster node, as the broker's own cluster client (redis.py)


class RedisClients:
    """Lazily built redis-py clients of one node, closed together."""

    def __init__(self, url: str, cluster: bool = False) -> None:
        self.url = url
        self.cluster = cluster
        self._bytes: Any = None
        self._text: Any = None

    def _build(self, **options: Any) -> Any:
        """redis-py's async pools refuse a command past 100 in flight ("Too many connections"):
        a burst of 5,000 follows on one node was refused (bench_live_notice). One Redis: at
        most POOL_SIZE connections and a command waits for a free one (up to its connect
        timeout); a cluster client has no waiting pool, so it may open CLUSTER_MAX per node."""
        from redis.asyncio import BlockingConnectionPool  # imported only when used

        from server.broker.redis_sturdy import SturdyRedis, SturdyRedisCluster

        if self.cluster:
            return SturdyRedisCluster.from_url(self.url, max_connections=CLUSTER_MAX, **options)
        timeout = options.get("socket_connect_timeout", TIMEOUT)
        pool = BlockingConnectionPool.from_url(
            self.url, max_connections=POOL_SIZE, timeout=timeout, **options
        )
        return SturdyRedis.from_pool(pool)  # closes the pool with the client

    @property
    def commands(self) -> Any:
        """Bytes replies: media claims, webhook claims, the send log, the gift/follow/PK stores."""
        if self._bytes is None:
            self._bytes = self._build(socket_timeout=TIMEOUT, socket_connect_timeout=TIMEOUT)
        return self._bytes

    @property
    def text(self) -> Any:
        """Decoded replies: the analytics store."""
        if self._text is None:
            self._text = self._build(
                decode_responses=True, socket_timeout=ANALYTICS_TIMEOUT, socket_connect_timeout=TIMEOUT
            )
        return self._text

    async def close(self) -> None:
        clients = [c for c in (self._bytes, self._text) if c is not None]
        self._bytes = self._text = None
        for client in clients:
            await client.aclose()
