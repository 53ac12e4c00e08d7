"""Which Redis connection owns a key: one plain client per primary of a cluster, or the one Redis.

The broker needs three things redis-py's cluster client does not give it: a pipeline of
script calls spread over several slots (one round trip per shard, all shards at once), a
pub/sub connection per shard (our own, redis_resp3.py: `endpoint()` says where), and a WAIT
on the very connection that wrote a DM. All three need "the connection of the primary of this slot",
which is what this class keeps. The slot map is read with CLUSTER SLOTS from any node
known so far (the URL's and every node seen since), so after a failover `refresh()` finds
the promoted replica by itself.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import Sequence
from typing import Any
from urllib.parse import urlparse

from redis.asyncio import BlockingConnectionPool, Redis
from redis.crc import REDIS_CLUSTER_HASH_SLOTS, key_slot
from redis.exceptions import NoScriptError, RedisError

from server.broker.redis_sturdy import SturdyRedis

MAIN = "main"  # the name of the only shard of a single Redis
# Connections per shard. Past this, a command waits for a free one (up to the connect
# timeout) instead of failing "Too many connections": a burst of joins must queue, not
# make the broker think Redis is gone.
POOL_SIZE = 64

Call = tuple[str, Sequence[Any]]  # (key that routes it, command and arguments)


class Shards:
    def __init__(self, url: str, cluster: bool, options: dict[str, Any]) -> None:
        self.cluster = cluster
        self._url = url
        self._options = options
        parsed = urlparse(url)
        self._seeds: list[tuple[str, int]] = [(parsed.hostname or "127.0.0.1", parsed.port or 6379)]
        self._clients: dict[str, Redis] = {}
        self._slots: list[str] = []  # slot -> shard name ("host:port" of its primary)
        self._scripts: dict[str, str] = {}  # sha -> body, loaded on every primary at refresh
        if not cluster:
            pool = BlockingConnectionPool.from_url(url, **self._pool_options())
            self._clients[MAIN] = SturdyRedis(connection_pool=pool, retry=self._options.get("retry"))

    def _pool_options(self) -> dict[str, Any]:
        timeout = self._options.get("socket_connect_timeout", 5.0)
        return {**self._options, "max_connections": POOL_SIZE, "timeout": timeout}

    @property
    def names(self) -> list[str]:
        return list(self._clients)

    def client(self, name: str) -> Redis:
        return self._clients[name]

    def name_of(self, key: str | bytes) -> str:
        if not self.cluster:
            return MAIN
        if not self._slots:
            raise ConnectionError("redis cluster topology not known yet")
        raw = key.encode() if isinstance(key, str) else key
        return self._slots[key_slot(raw)]

    def endpoint(self, name: str) -> dict[str, Any]:
        """Where a shard is and how to log in: for a connection of our own (redis_resp3.py)."""
        parsed = urlparse(self._url)
        if name == MAIN:
            host, port = parsed.hostname or "127.0.0.1", parsed.port or 6379
        else:
            host, _, raw_port = name.rpartition(":")
            port = int(raw_port)
        db = int(parsed.path.lstrip("/") or 0) if not self.cluster else 0
        return {
            "host": host,
            "port": port,
            "username": parsed.username,
            "password": parsed.password,
            "db": db,
        }

    def client_for(self, key: str | bytes) -> Redis:
        return self._clients[self.name_of(key)]

    def add_script(self, sha: str, body: str) -> None:
        self._scripts[sha] = body

    async def refresh(self, keep: Sequence[str] = ()) -> None:
        """(Re)read the topology and check every primary answers; raise if one does not.

        `keep`: primaries serving right now (another shard failed): their pooled connections
        stay open, so their commands in flight are not cut off."""
        if not self.cluster:
            client = self._clients[MAIN]
            await client.connection_pool.disconnect()  # pooled connections to a restarted Redis are dead
            await client.ping()
            await self._load_scripts(client)
            return
        slots = await self._read_slots()
        table: list[str] = [""] * REDIS_CLUSTER_HASH_SLOTS
        primaries: dict[str, tuple[str, int]] = {}
        for entry in slots:
            start, end, primary, *replicas = entry
            name = _address(primary)
            primaries[name] = (_host(primary[0]), int(primary[1]))
            table[int(start) : int(end) + 1] = [name] * (int(end) - int(start) + 1)
            for node in (primary, *replicas):
                seed = (_host(node[0]), int(node[1]))
                if seed not in self._seeds:
                    self._seeds.append(seed)
        if "" in table:
            raise ConnectionError("redis cluster does not cover every slot yet")
        for name in [n for n in self._clients if n not in primaries]:
            with contextlib.suppress(Exception):
                await self._clients.pop(name).aclose()
        for name, (host, port) in primaries.items():
            client = self._clients.get(name)
            if client is None:
                pool = BlockingConnectionPool(host=host, port=port, **self._pool_options())
                client = self._clients[name] = SturdyRedis(
                    connection_pool=pool, retry=self._options.get("retry")
                )
            elif name not in keep:
                await client.connection_pool.disconnect()
            await client.ping()
            if name not in keep:
                await _cluster_ok(name, client)
            await self._load_scripts(client)
        self._slots = table

    async def _read_slots(self) -> list[Any]:
        error: BaseException = ConnectionError("no redis cluster node reachable")
        for host, port in list(self._seeds):
            probe = Redis(host=host, port=port, **{**self._options, "socket_timeout": 2.0})
            try:
                slots = await probe.execute_command("CLUSTER SLOTS")
                if slots:
                    return list(slots)
            except (RedisError, OSError) as exc:
                error = exc
            finally:
                with contextlib.suppress(Exception):
                    await probe.aclose()
        raise ConnectionError(f"redis cluster topology unreadable: {error}")

    async def load_scripts(self, name: str) -> None:
        """Load every script on one primary (after a NOSCRIPT: a promoted replica, a flush)."""
        await self._load_scripts(self._clients[name])

    async def _load_scripts(self, client: Redis) -> None:
        for body in self._scripts.values():
            await client.script_load(body)

    async def pipelined(self, calls: Sequence[Call]) -> list[Any]:
        """Run calls in one pipeline per shard, every shard at once; results in call order.

        A failed command comes back as its exception (the others still ran); a connection
        failure raises. Calls routed to one shard keep their order (a room's publishes).
        """
        groups: dict[str, list[int]] = {}
        for i, (key, _) in enumerate(calls):
            groups.setdefault(self.name_of(key), []).append(i)
        results: list[Any] = [None] * len(calls)

        async def run(name: str, indexes: list[int]) -> None:
            client = self._clients[name]
            answers = await _execute(client, [calls[i][1] for i in indexes])
            missing = [j for j, a in enumerate(answers) if isinstance(a, NoScriptError)]
            if missing:  # a promoted replica or a flushed cache: load, then run those again
                await self._load_scripts(client)
                again = await _execute(client, [calls[indexes[j]][1] for j in missing])
                for j, answer in zip(missing, again, strict=True):
                    answers[j] = answer
            for i, answer in zip(indexes, answers, strict=True):
                results[i] = answer

        await asyncio.gather(*(run(name, idx) for name, idx in groups.items()))
        return results

    async def aclose(self) -> None:
        for client in self._clients.values():
            with contextlib.suppress(Exception):
                await client.aclose()


async def _execute(client: Redis, commands: list[Sequence[Any]]) -> list[Any]:
    pipe = client.pipeline(transaction=False)
    for args in commands:
        pipe.execute_command(*args)
    return list(await pipe.execute(raise_on_error=False))


def _host(raw: Any) -> str:
    host = raw.decode() if isinstance(raw, bytes) else str(raw)
    return host or "127.0.0.1"


def _address(node: Sequence[Any]) -> str:
    return f"{_host(node[0])}:{int(node[1])}"


async def _cluster_ok(name: str, client: Redis) -> None:
    """A primary that says its cluster is not ok (every node just restarted and the cluster is
    still forming) answers CLUSTERDOWN for a few seconds: that is not serving yet. Taken for
    serving, its rooms were re-read, lost again at the first CLUSTERDOWN, and reset a second
    time, each reset a reconnect storm (a 5,000-connection soak's Redis restarts)."""
    info = await client.execute_command("CLUSTER INFO")  # redis-py parses it into a dict
    state = info.get("cluster_state") if isinstance(info, dict) else None
    if state != "ok":
        raise ConnectionError(f"redis shard {name}: cluster_state {state}, not serving yet")
