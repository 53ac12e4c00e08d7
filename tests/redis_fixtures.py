"""A real redis-server on a free port and liveroom node processes against it (no mocks).

Imported by the Redis test modules: `from tests.redis_fixtures import *` brings the fixtures.
Every wait polls a condition with a generous timeout; nothing sleeps and hopes.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import time
import urllib.error
import urllib.request
from collections.abc import AsyncIterator, Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
import redis
from websockets.asyncio.client import connect

from tests import prom
from tests.child_logs import CHILD_LOGS
from tests.conftest import WsClient, start_server_process, token
from tests.ports import cluster_ports, free_port

WAIT = 30.0  # seconds: generous, a loaded 2-core machine must pass
# the core of these tests is throughput across nodes, not the abuse limits
NODE_ENV = {
    "LIVEROOM_RATE_LIMITS": "off",
    "LIVEROOM_REPEAT_MAX": "0",
    "LIVEROOM_CONTACT_FILTER": "off",
    "LIVEROOM_ABUSE_STRIKES": "0",
}

requires_redis = pytest.mark.skipif(shutil.which("redis-server") is None, reason="redis-server not installed")


def poll(condition: Callable[[], bool], timeout: float = WAIT, what: str = "condition") -> None:
    """Check condition until it holds; fail after timeout (used from threads and setup code)."""
    deadline = time.monotonic() + timeout
    while not condition():
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out waiting for {what}")
        time.sleep(0.02)


async def apoll(condition: Callable[[], Any], timeout: float = WAIT, what: str = "condition") -> Any:
    """Async variant: condition may be a coroutine function."""
    async with asyncio.timeout(timeout):
        while True:
            result = condition()
            if asyncio.iscoroutine(result):
                result = await result
            if result:
                return result
            await asyncio.sleep(0.02)


class RedisServer:
    """redis-server as a child process; `persistent` keeps an always-fsynced AOF across restarts."""

    def __init__(self, workdir: Path, persistent: bool = False, password: str | None = None) -> None:
        self.port = free_port()
        self.password = password
        self.url = f"redis://{f':{password}@' if password else ''}127.0.0.1:{self.port}/0"
        self.workdir = workdir
        self.persistent = persistent
        self.proc: subprocess.Popen[bytes] | None = None

    def start(self) -> None:
        persistence = ["--appendonly", "yes", "--appendfsync", "always"] if self.persistent else []
        persistence += ["--requirepass", self.password] if self.password else []
        self.proc = subprocess.Popen(
            [
                "redis-server",
                "--port",
                str(self.port),
                "--bind",
                "127.0.0.1",
                "--save",
                "",
                "--appendonly",
                "no",
                *persistence,
                "--dir",
                str(self.workdir),
                "--loglevel",
                "warning",
            ],
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
        )
        poll(self.ping, what="redis-server to answer PING")

    def ping(self) -> bool:
        try:
            with redis.Redis(
                port=self.port, password=self.password, socket_timeout=1, socket_connect_timeout=1
            ) as client:
                return bool(client.ping())
        except redis.RedisError:
            return False

    def client(self) -> redis.Redis:
        return redis.Redis(port=self.port, password=self.password, socket_timeout=5)

    def stop(self) -> None:
        """Graceful (SIGTERM): with persistence on, everything acknowledged is on disk."""
        if self.proc is not None and self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(WAIT)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(WAIT)
        self.proc = None


class RedisClusterServer:
    """A real Redis Cluster: `masters` primaries with `replicas` replicas each, on loopback.

    Started from the redis-server binary and joined with `redis-cli --cluster create`; a low
    cluster-node-timeout makes a replica take over a killed primary in a second or two.
    `url` names one primary: the client learns the rest of the topology from it.
    """

    def __init__(
        self, workdir: Path, masters: int = 3, replicas: int = 1, node_timeout_ms: int = 1000
    ) -> None:
        self.workdir = workdir
        self.masters = masters
        self.replicas = replicas
        self.node_timeout_ms = node_timeout_ms
        self.ports = cluster_ports(masters * (1 + replicas))
        self.procs: dict[int, subprocess.Popen[bytes]] = {}
        self.url = f"redis://127.0.0.1:{self.ports[0]}/0"

    def _spawn(self, port: int) -> None:
        home = self.workdir / f"cluster-{port}"
        home.mkdir(parents=True, exist_ok=True)
        self.procs[port] = subprocess.Popen(
            [
                "redis-server",
                "--port",
                str(port),
                "--bind",
                "127.0.0.1",
                "--cluster-enabled",
                "yes",
                "--cluster-config-file",
                f"nodes-{port}.conf",
                "--cluster-node-timeout",
                str(self.node_timeout_ms),
                "--repl-diskless-sync-delay",  # replicas sync at once, not after the default 5 s
                "0",
                # a shard without a primary stops only itself (the default stops every shard)
                "--cluster-require-full-coverage",
                "no",
                "--save",
                "",
                "--appendonly",
                "no",
                "--dir",
                str(home),
                "--loglevel",
                "warning",
            ],
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
        )

    def start(self) -> None:
        try:
            self._start()
        except BaseException:
            self.stop()
            raise

    def _start(self) -> None:
        for port in self.ports:
            self._spawn(port)
        for port in self.ports:
            poll(lambda port=port: self._ping(port), what=f"cluster node {port} to answer PING")
        subprocess.run(
            [
                "redis-cli",
                "--cluster",
                "create",
                *(f"127.0.0.1:{port}" for port in self.ports),
                "--cluster-replicas",
                str(self.replicas),
                "--cluster-yes",
            ],
            check=True,
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
            timeout=WAIT,
        )
        poll(self.healthy, what="the cluster to cover every slot with a replica each")

    def _ping(self, port: int) -> bool:
        try:
            with redis.Redis(port=port, socket_timeout=1, socket_connect_timeout=1) as client:
                return bool(client.ping())
        except redis.RedisError:
            return False

    def _info(self, port: int) -> dict[str, Any]:
        with redis.Redis(port=port, socket_timeout=2, socket_connect_timeout=1, decode_responses=True) as c:
            text = c.execute_command("CLUSTER", "INFO")
        if isinstance(text, dict):
            return text
        return dict(line.split(":", 1) for line in text.splitlines() if ":" in line)

    def healthy(self, replicas: bool = True) -> bool:
        """Every live node sees all slots served and (replicas) each primary has its replicas in sync."""
        try:
            for port in self.procs:
                info = self._info(port)
                if info.get("cluster_state") != "ok" or int(info.get("cluster_slots_ok", 0)) != 16384:
                    return False
            for port in self.primaries() if replicas else []:
                with redis.Redis(port=port, socket_timeout=2, decode_responses=True) as c:
                    repl = c.info("replication")
                    online = [k for k, v in repl.items() if k.startswith("slave") and isinstance(v, dict)]
                    if sum(repl[k].get("state") == "online" for k in online) < self.replicas:
                        return False
            return True
        except (redis.RedisError, OSError):
            return False

    def primaries(self) -> list[int]:
        """Ports of the live primaries, as the cluster reports them."""
        found = []
        for port in self.procs:
            with (
                contextlib.suppress(redis.RedisError, OSError),
                redis.Redis(port=port, socket_timeout=2, decode_responses=True) as c,
            ):
                if c.info("replication").get("role") == "master":
                    found.append(port)
        return found

    def primary_of(self, key: str) -> int:
        """The port of the primary that serves key's slot right now."""
        with redis.RedisCluster(host="127.0.0.1", port=next(iter(self.procs))) as c:
            node = c.get_node_from_key(key)
            return int(node.port)

    def restart(self, port: int) -> None:
        """Start a killed node again with its cluster config: it rejoins (as a replica)."""
        self._spawn(port)
        poll(lambda: self._ping(port), what=f"cluster node {port} to answer PING")

    def flush(self) -> None:
        """Empty every primary (replicas follow) and wait until replicas caught up."""
        for port in self.primaries():
            with redis.Redis(port=port, socket_timeout=5) as c:
                c.flushall()
                c.execute_command("WAIT", self.replicas, 5000)

    def kill(self, port: int) -> None:
        """SIGKILL one node (no goodbye to the cluster: its replica must notice and take over)."""
        proc = self.procs.pop(port)
        proc.kill()
        proc.wait(WAIT)

    def client(self) -> redis.RedisCluster:
        return redis.RedisCluster(host="127.0.0.1", port=next(iter(self.procs)), socket_timeout=5)

    def stop(self) -> None:
        for proc in self.procs.values():
            proc.kill()
        for proc in self.procs.values():
            proc.wait(WAIT)
        self.procs.clear()


class NodeProc:
    """A `python -m server serve --redis URL` process. Its log lines (stderr) go to `log`, or to a
    temporary file that `log_text()` reads (start_nodes shows it with a failed test)."""

    def __init__(self, redis_url: str, node_id: str, *args: str, log: Any = None) -> None:
        self.node_id = node_id
        self._log = None
        if log is None and not os.environ.get("LIVEROOM_TEST_NODE_LOGS"):  # set: logs go to stderr
            # closed (and so deleted) by close_log, after the test
            self._log = log = tempfile.NamedTemporaryFile("w", prefix=f"{node_id}-", suffix=".log")  # noqa: SIM115
        self.proc, self.port = start_server_process(
            "--redis",
            redis_url,
            "--tick-ms",
            "20",
            "--presence-ttl",
            "1.5",
            "--node-id",
            node_id,
            *args,
            env=NODE_ENV,
            log=log,
        )
        self.ws_url = f"ws://127.0.0.1:{self.port}/ws"

    def http(self, path: str) -> tuple[int, str]:
        try:
            with urllib.request.urlopen(f"http://127.0.0.1:{self.port}{path}", timeout=5) as resp:
                return resp.status, resp.read().decode()
        except urllib.error.HTTPError as err:
            return err.code, err.read().decode()

    def ready(self) -> bool:
        return self.http("/readyz")[0] == 200

    async def wait_ready(self, ready: bool = True) -> None:
        await apoll(
            lambda: asyncio.to_thread(lambda: self.ready() == ready), what=f"{self.node_id} ready={ready}"
        )

    def metric(self, name: str) -> float:
        """The node's counter `name`, summed over its labels (parsed as Prometheus does)."""
        _, body = self.http("/metrics")
        return prom.total(body, name)

    @property
    def alive(self) -> bool:
        return self.proc.poll() is None

    def kill(self) -> None:
        self.proc.kill()
        self.proc.wait(WAIT)

    def stop(self) -> None:
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(WAIT)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(WAIT)
        if self.proc.stdout is not None:
            self.proc.stdout.close()

    def close_log(self) -> None:
        if self._log is not None:
            self._log.close()  # deletes it
            self._log = None

    def log_text(self) -> str:
        """What the node logged so far (read on a handle of our own: the node writes on)."""
        if self._log is None:
            return ""
        with open(self._log.name, errors="replace") as log:
            return log.read()


@pytest.fixture
def redis_server(tmp_path: Path) -> Iterator[RedisServer]:
    """A throwaway Redis (no persistence), stopped by PID after the test."""
    server = RedisServer(tmp_path)
    server.start()
    try:
        yield server
    finally:
        server.stop()


@pytest.fixture
def redis_cluster(tmp_path: Path) -> Iterator[RedisClusterServer]:
    """A throwaway 3-primary, 3-replica Redis Cluster, killed after the test."""
    cluster = RedisClusterServer(tmp_path)
    cluster.start()
    try:
        yield cluster
    finally:
        cluster.stop()


@dataclass
class RedisTarget:
    """What a test runs against: one Redis or a cluster, and the node flags that select it."""

    url: str
    cluster: bool
    server: RedisServer | RedisClusterServer

    @property
    def node_args(self) -> tuple[str, ...]:
        return ("--redis-cluster",) if self.cluster else ()


@pytest.fixture(scope="session")
def shared_cluster(tmp_path_factory: pytest.TempPathFactory) -> Iterator[RedisClusterServer]:
    """One 3+3 cluster for every test that only uses it (emptied before each); tests that kill
    a node take their own (redis_cluster)."""
    cluster = RedisClusterServer(tmp_path_factory.mktemp("cluster"))
    cluster.start()
    try:
        yield cluster
    finally:
        cluster.stop()


@pytest.fixture(params=["single", "cluster"])
def redis_any(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[RedisTarget]:
    """The test runs twice: against one redis-server, then against a real 3+3 Redis Cluster."""
    if request.param == "cluster":
        cluster: RedisClusterServer = request.getfixturevalue("shared_cluster")
        cluster.flush()
        yield RedisTarget(cluster.url, True, cluster)
        return
    server = RedisServer(tmp_path)
    server.start()
    try:
        yield RedisTarget(server.url, False, server)
    finally:
        server.stop()


@pytest.fixture
def persistent_redis(tmp_path: Path) -> Iterator[RedisServer]:
    """A Redis that survives restarts with its data (AOF, fsync on every write)."""
    server = RedisServer(tmp_path, persistent=True)
    server.start()
    try:
        yield server
    finally:
        server.stop()


@pytest.fixture
def start_nodes(request: pytest.FixtureRequest) -> Iterator[Callable[..., list[NodeProc]]]:
    """start_nodes(redis_url or RedisTarget, n, *args): n node processes, stopped after the test;
    a failed test's report shows their logs."""
    started: list[NodeProc] = []
    logs = request.node.stash.setdefault(CHILD_LOGS, [])

    def _start(target: str | RedisTarget, count: int, *args: str) -> list[NodeProc]:
        if isinstance(target, RedisTarget):  # a cluster needs --redis-cluster
            url, args = target.url, (*target.node_args, *args)
        else:
            url = target
        nodes = [NodeProc(url, f"n{len(started) + i}", *args) for i in range(count)]
        started.extend(nodes)
        logs.extend((f"node {node.node_id} log", node.log_text) for node in nodes)
        return nodes

    yield _start
    for node in started:
        with contextlib.suppress(Exception):
            node.stop()
        node.close_log()


@pytest.fixture
async def open_client() -> AsyncIterator[Callable[..., Any]]:
    """open_client(node, user, room, resume=None): a joined WsClient (snapshot read)."""
    opened: list[WsClient] = []

    async def _open(
        node: NodeProc, user: str, room: str = "r1", resume: dict[str, Any] | None = None, **kw: Any
    ) -> WsClient:
        role = kw.pop("role", "viewer")  # the token's, not a connect() option
        ws = await connect(node.ws_url, **kw)
        client = WsClient(ws)
        frame: dict[str, Any] = {"t": "join", "token": token(room, user, role)}
        if resume is not None:
            frame["resume"] = resume
        await client.send(**frame)
        client.snapshot = await client.recv()
        assert client.snapshot["t"] == "snapshot", client.snapshot
        opened.append(client)
        return client

    yield _open
    await asyncio.gather(*(c.close() for c in opened), return_exceptions=True)


__all__ = [
    "WAIT",
    "NodeProc",
    "RedisClusterServer",
    "RedisServer",
    "RedisTarget",
    "apoll",
    "free_port",
    "open_client",
    "persistent_redis",
    "poll",
    "redis_any",
    "redis_cluster",
    "redis_server",
    "requires_redis",
    "shared_cluster",
    "start_nodes",
]


@contextlib.contextmanager
def media_failover_nodes(redis_url: str, claim_ttl: str) -> Iterator[dict[str, NodeProc]]:
    """Nodes a, b, c on one Redis with a short media claim: origin a, edge b, spare c."""
    nodes: dict[str, NodeProc] = {}
    try:
        for name in ("a", "b", "c"):
            nodes[name] = NodeProc(redis_url, name, "--media-claim-ttl", claim_ttl)
        yield nodes
    finally:
        for node in nodes.values():
            node.stop()


@contextlib.contextmanager
def failover_host(servers: list[str], room: str, width: int, height: int) -> Iterator[subprocess.Popen[str]]:
    """`client_demo.host` publishing into `room`, republishing on the next of `servers` by itself."""
    args = ["--server", ",".join(servers), "--room", room, "--user", "hana"]
    size = ["--width", str(width), "--height", str(height)]
    proc = subprocess.Popen(
        [
            sys.executable,
            "-m",
            "client_demo.host",
            *args,
            *size,
            "--fps",
            "15",
            "--no-audio",
            "--stats-interval",
            "0",
        ],
        cwd=Path(__file__).resolve().parent.parent,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
        text=True,
    )
    try:
        yield proc
    finally:
        proc.kill()
        proc.wait(WAIT)
