"""High-rate load generator and benchmark for one liveroom node (or --nodes N on Redis).

    python -m load_tests.bench join   --clients 5000 --rate 500
    python -m load_tests.bench fanout --viewers 2000 --rate 250 --duration 10
    python -m load_tests.bench likes  --likers 100 --rate 2000
    python -m load_tests.bench dm     --pairs 50 --rate 500
    python -m load_tests.bench idle   --connections 10000
    python -m load_tests.bench fanout --nodes 2 --viewers 2000 --rate 1000   # 2 nodes + Redis

Why this shape: the server under test runs in its own process (started here with
`python -m server serve --port 0` unless --url is given) so its CPU and memory
can be read from /proc without the generator's; the clients run in --workers
processes (asyncio + uvloop each, a bare-protocol WebSocket client from
`load_tests.wsraw`) so 10,000 sockets and ~40,000 received frames/s are spread
over cores. Every scenario is bounded by a count and by a deadline and stops by
itself. Only loopback addresses are accepted. Output: one JSON line per run on
stdout, a JSON line with the median when --repeat > 1, then a Markdown table.
"""

from __future__ import annotations

import argparse
import asyncio
import datetime
import json
import multiprocessing as mp
import os
import resource
import select
import signal
import statistics
import subprocess
import sys
import tempfile
import time
import traceback
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass
from multiprocessing.connection import Connection
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import msgpack

from load_tests import wsraw
from server.config import DEFAULT_SECRET
from server.deadline import within
from server.wire import auth

LOOPBACK = {"127.0.0.1", "localhost", "::1"}
SCENARIOS = ("join", "fanout", "likes", "dm", "idle")
ERROR_PATTERN = b"\xa1t\xa5error"
JOIN_TIMEOUT = 30.0  # seconds for one connection to get its snapshot
JOIN_RETRIES = 5  # a join refused with retry_after (4206 busy) is tried again, as a client would
CONNECT_CONCURRENCY = 200  # connections opened at once when not rate-paced
GO_DELAY = 0.3  # seconds between "go" and the scheduled start, so all workers start together


# The abuse guard (server.abuse) limits per IP, per user and per repeated text; every bench
# client comes from 127.0.0.1 and publishers repeat themselves on purpose, so the started
# server runs with those limits off. Admission control (joins in flight, loop lag) stays on.
# Variables already set in the environment win; unknown ones are ignored by older servers.
BENCH_SERVER_ENV = {
    "LIVEROOM_RATE_LIMITS": "off",
    "LIVEROOM_MAX_CONNS_PER_IP": "0",
    "LIVEROOM_MAX_CONNS_PER_USER": "0",
    "LIVEROOM_REPEAT_MAX": "0",
    "LIVEROOM_CONTACT_FILTER": "off",
    "LIVEROOM_ABUSE_STRIKES": "0",
    "LIVEROOM_HTTP_PORT": "0",  # WHIP/WHEP port: any free one, so runs never collide
}


class BenchError(Exception):
    """The run could not complete (server did not start, a worker died, deadline passed)."""


def raise_nofile() -> None:
    """Lift the soft open-files limit to the hard limit: 10,000 sockets need it."""
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if soft < hard:
        resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))


def now_us() -> int:
    """Wall clock in microseconds: shared by every process on the machine, so e2e latency works."""
    return time.time_ns() // 1000


def letters(n: int) -> str:
    """n in base 26 as a-z: varies the text without digits a contact filter could mistake for a phone."""
    out = []
    while True:
        n, r = divmod(n, 26)
        out.append(chr(97 + r))
        if not n:
            return "".join(reversed(out))


def from_letters(text: str) -> int:
    n = 0
    for ch in text:
        n = n * 26 + ord(ch) - 97
    return n


def percentiles(values: list[float]) -> dict[str, float | None]:
    """Nearest-rank p50/p90/p99/max in milliseconds (None when there is no sample)."""
    if not values:
        return {"p50": None, "p90": None, "p99": None, "max": None}
    ordered = sorted(values)
    n = len(ordered)

    def rank(q: float) -> float:
        return round(ordered[min(n - 1, max(0, int(q * n + 0.999999) - 1))], 3)

    return {"p50": rank(0.50), "p90": rank(0.90), "p99": rank(0.99), "max": round(ordered[-1], 3)}


# ---------------------------------------------------------------------------------------
# Server process and /proc sampling
# ---------------------------------------------------------------------------------------


@dataclass(slots=True)
class ServerSample:
    """CPU seconds (user+system) and resident memory of the server process tree."""

    cpu_s: float
    rss_kib: int


def _children(pid: int) -> list[int]:
    found: list[int] = []
    for task in Path(f"/proc/{pid}/task").glob("*"):
        try:
            found += [int(c) for c in (task / "children").read_text().split()]
        except OSError:
            continue
    return found


def server_pids(pid: int) -> list[int]:
    """The server and any processes it started (none today; future workers count too)."""
    pids, todo = [], [pid]
    while todo:
        current = todo.pop()
        pids.append(current)
        todo += _children(current)
    return pids


def sample_servers(pids: list[int]) -> ServerSample | None:
    """sample_server summed over several nodes."""
    samples = [s for s in map(sample_server, pids) if s is not None]
    if not samples:
        return None
    return ServerSample(sum(s.cpu_s for s in samples), sum(s.rss_kib for s in samples))


def sample_server(pid: int | None) -> ServerSample | None:
    """Read utime+stime from /proc/PID/stat and VmRSS from /proc/PID/status, summed over the tree."""
    if pid is None:
        return None
    ticks = os.sysconf("SC_CLK_TCK")
    cpu, rss = 0.0, 0
    for p in server_pids(pid):
        try:
            stat = Path(f"/proc/{p}/stat").read_text()
            status = Path(f"/proc/{p}/status").read_text()
        except OSError:
            continue
        fields = stat.rsplit(")", 1)[1].split()
        cpu += (int(fields[11]) + int(fields[12])) / ticks  # fields 14 and 15 of stat(5)
        for line in status.splitlines():
            if line.startswith("VmRSS:"):
                rss += int(line.split()[1])
    return ServerSample(cpu, rss)


def tcp_counters() -> dict[str, int]:
    """Machine-wide TcpExt counters that explain slow connects (accept queue full, SYN resent)."""
    try:
        lines = Path("/proc/net/netstat").read_text().splitlines()
    except OSError:
        return {}
    for head, values in zip(lines[::2], lines[1::2], strict=False):
        if head.startswith("TcpExt:"):
            table = dict(zip(head.split()[1:], (int(v) for v in values.split()[1:]), strict=False))
            return {k: table.get(k, 0) for k in ("ListenOverflows", "TCPSynRetrans")}
    return {}


@dataclass
class ServerProcess:
    proc: subprocess.Popen[str]
    port: int
    stderr_path: str

    def stop(self) -> None:
        stop_process(self.proc, 15)
        if self.proc.stdout is not None:
            self.proc.stdout.close()
        Path(self.stderr_path).unlink(missing_ok=True)


def stop_process(proc: subprocess.Popen[Any], timeout: float = 20) -> None:
    """SIGTERM (a node drains gracefully), then SIGKILL if it has not exited within timeout."""
    if proc.poll() is None:
        proc.send_signal(signal.SIGTERM)
        try:
            proc.wait(timeout)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait(5)


def start_server(
    tick_ms: int, extra: list[str], cwd: str | None = None, timeout: float = 30.0
) -> ServerProcess:
    """Start `python -m server serve --port 0` on loopback and read the port it prints.

    cwd: a source tree to run the server from (e.g. `git archive` of a commit), so
    a benchmark measures a fixed revision while others edit the working tree.
    """
    fd, stderr_path = tempfile.mkstemp(prefix="liveroom-bench-", suffix=".log")
    cmd = [sys.executable, "-m", "server", "serve", "--host", "127.0.0.1", "--port", "0"]
    cmd += ["--tick-ms", str(tick_ms), "--log-level", "WARNING", "--node-id", "bench", *extra]
    env = {**BENCH_SERVER_ENV, **os.environ}
    if cwd:
        env["PYTHONPATH"] = os.pathsep.join(filter(None, [cwd, env.get("PYTHONPATH")]))
    proc = subprocess.Popen(
        cmd, stdout=subprocess.PIPE, stderr=fd, text=True, preexec_fn=raise_nofile, cwd=cwd, env=env
    )
    os.close(fd)
    assert proc.stdout is not None
    ready, _, _ = select.select([proc.stdout], [], [], timeout)
    line = proc.stdout.readline() if ready else ""
    if "listening on http://127.0.0.1:" not in line:
        proc.kill()
        proc.wait()
        log = Path(stderr_path).read_text()[-2000:]
        Path(stderr_path).unlink(missing_ok=True)
        raise BenchError(f"server did not start: {line!r}\n{log}")
    port = int(line.split("http://127.0.0.1:")[1].split()[0])
    return ServerProcess(proc, port, stderr_path)


# ---------------------------------------------------------------------------------------
# Worker side: one process, one uvloop loop, a share of the connections
# ---------------------------------------------------------------------------------------


def _noop(buf: bytearray, start: int, end: int) -> None:
    pass


@dataclass
class Counter:
    """Danmaku received by one viewer, and whether it has all it should get."""

    expected: int
    received: int = 0
    dropped_frames: int = 0
    done: bool = False
    sampled: int = 0  # danmaku a big room's frames left out on purpose (`sampled`), counted as had
    bytes: int = 0
    priority: int = 0  # staff (host) danmaku received: never sampled


class Worker:
    """Base of the per-scenario client logic; `prepare` runs before "go", `run` after."""

    def __init__(self, plan: dict[str, Any]) -> None:
        self.plan = plan
        self.host: str = plan["host"]
        self.port: int = plan["port"]
        # with --nodes N, connections go round-robin over the nodes' ports (one deployment)
        self.ports: list[int] = plan.get("ports") or [self.port]
        self.opened = 0
        self.secret: str = plan["secret"]
        self.k: int = plan["worker"]
        self.workers: int = plan["workers"]
        self.conns: list[wsraw.RawWs] = []
        self.join_failures = 0
        self.join_retries = 0
        self.join_errors: list[str] = []

    def token_path(self, room: str, user: str, role: auth.Role = "viewer") -> str:
        return f"/ws?token={auth.mint(self.secret, room=room, user=user, role=role)}"

    async def open(
        self,
        room: str,
        user: str,
        on_message: Callable[[bytearray, int, int], None] = _noop,
        role: auth.Role = "viewer",
    ) -> tuple[wsraw.RawWs, float]:
        """Connect and wait for the snapshot; returns the connection and join seconds."""
        port = self.ports[(self.k + self.opened) % len(self.ports)]
        self.opened += 1
        for attempt in range(JOIN_RETRIES + 1):
            try:
                conn, seconds = await wsraw.connect(
                    self.host, port, self.token_path(room, user, role), on_message, JOIN_TIMEOUT
                )
                break
            except wsraw.Refused as exc:  # "busy, retry after": what the protocol asks a client to do
                if exc.retry_after is None or attempt == JOIN_RETRIES:
                    raise
                self.join_retries += 1
                await asyncio.sleep(float(exc.retry_after))
        self.conns.append(conn)
        return conn, seconds

    async def open_many(self, specs: list[tuple[Any, ...]]) -> list[wsraw.RawWs | None]:
        """Open connections with bounded concurrency; failures are counted, not raised."""
        sem = asyncio.Semaphore(CONNECT_CONCURRENCY)

        async def one(
            room: str, user: str, cb: Callable[[bytearray, int, int], None], role: auth.Role = "viewer"
        ) -> wsraw.RawWs | None:
            async with sem:
                try:
                    return (await self.open(room, user, cb, role))[0]
                except Exception as exc:
                    self.note_failure(exc)
                    return None

        return list(await asyncio.gather(*(one(*s) for s in specs)))

    def note_failure(self, exc: BaseException) -> None:
        self.join_failures += 1
        if len(self.join_errors) < 5:
            self.join_errors.append(f"{type(exc).__name__}: {exc}"[:200])

    async def prepare(self) -> dict[str, Any]:
        return {}

    async def run(self, t0: float) -> dict[str, Any]:
        return {}

    def close(self) -> None:
        for conn in self.conns:
            conn.close()

    def alive(self) -> int:
        return sum(1 for c in self.conns if c.alive)


async def pace(count: int, rate: float, t0: float, send: Callable[[int], None], burst: int = 1) -> None:
    """Call send(i) for i in range(count) at `rate` per second from wall time t0, in bursts."""
    i = 0
    while i < count:
        due = min(count, int((time.time() - t0) * rate) + burst)
        due -= due % burst if due < count else 0
        while i < due:
            send(i)
            i += 1
        if i < count:
            await asyncio.sleep(max(0.0, t0 + i / rate - time.time()))


async def wait_until(event: asyncio.Event, deadline: float) -> bool:
    """Wait for the event or the wall-clock deadline; a late run reports its loss, not a hang."""
    try:
        await within(event.wait(), max(0.0, deadline - time.time()))
    except TimeoutError:
        return False
    return True


class JoinWorker(Worker):
    """Joins its share of N clients at the global rate (or as fast as allowed) and holds them."""

    async def run(self, t0: float) -> dict[str, Any]:
        n, rate, rooms = self.plan["clients"], self.plan["rate"], self.plan["rooms"]
        latencies: list[float] = []
        last = [t0]
        sem = asyncio.Semaphore(self.plan["concurrency"] if rate <= 0 else 1_000_000)

        async def one(i: int) -> None:
            if rate > 0:
                await asyncio.sleep(max(0.0, t0 + i / rate - time.time()))
            async with sem:
                try:
                    _, seconds = await self.open(f"{self.plan['run_id']}-j{i % rooms}", f"j{i}")
                except Exception as exc:
                    self.note_failure(exc)
                    return
            latencies.append(seconds * 1000)
            last[0] = max(last[0], time.time())

        await asyncio.gather(*(one(i) for i in range(self.k, n, self.workers)))
        return {
            "latencies": latencies,
            "failures": self.join_failures,
            "errors": self.join_errors,
            "last": last[0],
        }


class IdleWorker(Worker):
    """Opens its share of K viewer connections, then keeps them open and silent."""

    async def prepare(self) -> dict[str, Any]:
        n, rooms = self.plan["connections"], self.plan["rooms"]
        started = time.time()
        specs = [
            (f"{self.plan['run_id']}-i{i % rooms}", f"i{i}", _noop) for i in range(self.k, n, self.workers)
        ]
        await self.open_many(specs)
        return {
            "failures": self.join_failures,
            "errors": self.join_errors,
            "started": started,
            "last": time.time(),
        }

    async def run(self, t0: float) -> dict[str, Any]:
        return {"alive": self.alive()}


class FanoutWorker(Worker):
    """Viewers count danmaku (a sample decode them for latency); publishers send at a paced rate."""

    def __init__(self, plan: dict[str, Any]) -> None:
        super().__init__(plan)
        self.remaining = 0
        self.complete = asyncio.Event()
        self.counters: list[Counter] = []
        self.latencies: list[float] = []
        self.priority_latencies: list[float] = []  # host danmaku: never left out of a frame
        self.first_recv = 0.0
        self.last_recv = 0.0
        self.publishers: list[tuple[wsraw.RawWs | None, int, float]] = []
        self.publish_errors = 0

    def _finish(self, counter: Counter) -> None:
        counter.done = True
        self.remaining -= 1
        if self.remaining == 0:
            self.complete.set()

    def counting(self, counter: Counter) -> Callable[[bytearray, int, int], None]:
        """Cheap receipt: count the danmaku type tag's bytes in the frame, no decoding."""
        pattern, dropped = wsraw.DANMAKU_PATTERN, wsraw.DROPPED_PATTERN

        def on_message(buf: bytearray, start: int, end: int) -> None:
            counter.bytes += end - start
            n = buf.count(pattern, start, end)
            if buf.find(b"\xa7sampled", start, end) >= 0:
                frame = msgpack.unpackb(buf[start:end])
                counter.sampled += frame["sampled"]
                n += frame["sampled"]
                counter.priority += sum(1 for e in frame["events"] if "role" in e)
            elif n and buf.find(b"\xa4role", start, end) >= 0:
                counter.priority += buf.count(b"\xa4role", start, end)
            if n:
                counter.received += n
                self.last_recv = time.time()
                if not self.first_recv:
                    self.first_recv = self.last_recv
                if counter.received >= counter.expected and not counter.done:
                    self._finish(counter)
            elif end - start < 40 and buf.find(dropped, start, end) >= 0:
                counter.dropped_frames += 1

        return on_message

    def decoding(self, counter: Counter) -> Callable[[bytearray, int, int], None]:
        """Sampled receipt: decode the batch, take latency from the send time in each cid."""

        def on_message(buf: bytearray, start: int, end: int) -> None:
            arrived = now_us()
            counter.bytes += end - start
            frame = msgpack.unpackb(buf[start:end])
            kind = frame.get("t")
            if kind == "batch":
                n = frame.get("sampled", 0)
                counter.sampled += n
                for event in frame["events"]:
                    if event["t"] == "danmaku":
                        n += 1
                        cid = event.get("cid")
                        staff = "role" in event
                        counter.priority += staff
                        if isinstance(cid, int):
                            (self.priority_latencies if staff else self.latencies).append(
                                (arrived - cid) / 1000
                            )
                if n:
                    counter.received += n
                    self.last_recv = time.time()
                    if not self.first_recv:
                        self.first_recv = self.last_recv
                    if counter.received >= counter.expected and not counter.done:
                        self._finish(counter)
            elif kind == "dropped":
                counter.dropped_frames += 1

        return on_message

    def publisher_cb(self, buf: bytearray, start: int, end: int) -> None:
        if end - start < 200 and buf.find(ERROR_PATTERN, start, end) >= 0:
            self.publish_errors += 1

    async def prepare(self) -> dict[str, Any]:
        plan = self.plan
        specs = []
        for room, user, sampled in plan["viewers"]:
            counter = Counter(expected=plan["expected"][room])
            self.counters.append(counter)
            specs.append((room, user, (self.decoding if sampled else self.counting)(counter)))
        self.remaining = len(self.counters)
        for room, user, _, _, role in plan["publishers"]:
            specs.append((room, user, self.publisher_cb, role))
        opened = await self.open_many(specs)
        for counter, conn in zip(self.counters, opened, strict=False):
            if conn is None:  # never joined: don't wait for it, its loss shows in the totals
                self._finish(counter)
        pubs = opened[len(self.counters) :]
        self.publishers = [(c, p[2], p[3]) for c, p in zip(pubs, plan["publishers"], strict=True)]
        if not self.counters:
            self.complete.set()
        return {"failures": self.join_failures, "errors": self.join_errors, "retries": self.join_retries}

    async def run(self, t0: float) -> dict[str, Any]:
        text = "x" * max(0, self.plan["text_len"] - 8)
        sent = [0]

        def sender(conn: wsraw.RawWs) -> Callable[[int], None]:
            def send(i: int) -> None:  # distinct texts, so a repeat filter has nothing to refuse
                conn.send({"t": "danmaku", "text": f"{text} {letters(i)}", "cid": now_us()})
                sent[0] += 1

            return send

        await asyncio.gather(
            *(
                pace(count, rate, t0, sender(conn))
                for conn, count, rate in self.publishers
                if conn is not None
            )
        )
        await wait_until(self.complete, t0 + self.plan["duration"] + self.plan["drain"])
        return {
            "sent": sent[0],
            "expected": sum(c.expected for c in self.counters),
            "received": sum(c.received for c in self.counters),
            "dropped_frames": sum(c.dropped_frames for c in self.counters),
            "latencies": self.latencies,
            "priority_latencies": self.priority_latencies,
            "sampled": sum(c.sampled for c in self.counters),
            "priority": sum(c.priority for c in self.counters),
            "bytes": sum(c.bytes for c in self.counters),
            "first_recv": self.first_recv,
            "last_recv": self.last_recv,
            "publish_errors": self.publish_errors,
            "alive": self.alive(),
        }


class LikesWorker(Worker):
    """Likers in a room of this worker send bursts of likes; liker 0 also observes the totals.

    A room per worker makes the round trip exact: this process knows the room's
    running total of likes it sent, so a likes event with total T completes every
    send whose running total is <= T.
    """

    def __init__(self, plan: dict[str, Any]) -> None:
        super().__init__(plan)
        self.pending: deque[tuple[int, int]] = deque()  # (running total after send, send time us)
        self.cum = 0
        self.observed = 0
        self.latencies: list[float] = []
        self.complete = asyncio.Event()
        self.last_recv = 0.0
        self.target = 0

    def observer(self, buf: bytearray, start: int, end: int) -> None:
        arrived = now_us()
        frame = msgpack.unpackb(buf[start:end])
        if frame.get("t") != "batch":
            return
        for event in frame["events"]:
            if event["t"] == "likes":
                self.observed = max(self.observed, event["total"])
                self.last_recv = time.time()
        pending = self.pending
        while pending and pending[0][0] <= self.observed:
            self.latencies.append((arrived - pending.popleft()[1]) / 1000)
        if self.target and self.observed >= self.target:
            self.complete.set()

    async def prepare(self) -> dict[str, Any]:
        room = f"{self.plan['run_id']}-likes-w{self.k}"
        n = self.plan["likers_per_worker"]
        specs = [(room, f"l{self.k}-{i}", self.observer if i == 0 else _noop) for i in range(n)]
        self.likers = [c for c in await self.open_many(specs) if c is not None]
        return {"failures": self.join_failures, "errors": self.join_errors, "retries": self.join_retries}

    async def run(self, t0: float) -> dict[str, Any]:
        count, rate, burst = self.plan["likes_per_worker"], self.plan["rate_per_worker"], self.plan["burst"]
        self.target = count
        likers = self.likers

        def send(i: int) -> None:
            likers[(i // burst) % len(likers)].send({"t": "like", "count": 1})
            self.cum += 1
            self.pending.append((self.cum, now_us()))

        if likers:
            await pace(count, rate, t0, send, burst=burst)
        await wait_until(self.complete, t0 + self.plan["duration"] + self.plan["drain"])
        return {
            "sent": self.cum,
            "observed": self.observed,
            "latencies": self.latencies,
            "last_recv": self.last_recv,
            "alive": self.alive(),
        }


class DmWorker(Worker):
    """Pairs of users: senders DM their partner; ack round trip and delivery latency are timed."""

    def __init__(self, plan: dict[str, Any]) -> None:
        super().__init__(plan)
        self.ack_ms: list[float] = []
        self.delivery_ms: list[float] = []
        self.acked = 0
        self.live = 0
        self.delivered = 0
        self.errors = 0
        self.target = 0
        self.complete = asyncio.Event()
        self.last_recv = 0.0

    def _check(self) -> None:
        if self.target and self.acked >= self.target and self.delivered >= self.target:
            self.complete.set()

    def on_frame(self, buf: bytearray, start: int, end: int) -> None:
        arrived = now_us()
        frame = msgpack.unpackb(buf[start:end])
        kind = frame.get("t")
        if kind == "dm_ack":
            self.acked += 1
            self.live += bool(frame.get("delivered"))
            self.ack_ms.append((arrived - frame["cid"]) / 1000)
        elif kind == "dm":
            self.delivered += 1
            self.delivery_ms.append((arrived - from_letters(frame["text"][3:])) / 1000)
        elif kind == "error":
            self.errors += 1
        else:
            return
        self.last_recv = time.time()
        self._check()

    async def prepare(self) -> dict[str, Any]:
        room = f"{self.plan['run_id']}-dm"
        n = self.plan["pairs_per_worker"]
        specs = []
        for i in range(n):
            specs.append((room, f"s{self.k}-{i}", self.on_frame))
            specs.append((room, f"r{self.k}-{i}", self.on_frame))
        opened = await self.open_many(specs)
        self.pairs = [
            (opened[2 * i], f"r{self.k}-{i}")
            for i in range(n)
            if opened[2 * i] is not None and opened[2 * i + 1] is not None
        ]
        return {"failures": self.join_failures, "errors": self.join_errors, "retries": self.join_retries}

    async def run(self, t0: float) -> dict[str, Any]:
        count, rate = self.plan["dms_per_worker"], self.plan["rate_per_worker"]
        self.target = count if self.pairs else 0
        pairs = self.pairs

        def send(i: int) -> None:
            conn, to = pairs[i % len(pairs)]
            assert conn is not None
            sent_at = now_us()
            conn.send({"t": "dm", "to": to, "text": f"dm {letters(sent_at)}", "cid": sent_at})

        if pairs:
            await pace(count, rate, t0, send)
        await wait_until(self.complete, t0 + self.plan["duration"] + self.plan["drain"])
        return {
            "sent": count if pairs else 0,
            "acked": self.acked,
            "live": self.live,
            "delivered": self.delivered,
            "dm_errors": self.errors,
            "ack_ms": self.ack_ms,
            "delivery_ms": self.delivery_ms,
            "last_recv": self.last_recv,
            "alive": self.alive(),
        }


WORKERS: dict[str, type[Worker]] = {
    "join": JoinWorker,
    "idle": IdleWorker,
    "fanout": FanoutWorker,
    "likes": LikesWorker,
    "dm": DmWorker,
}


def _cpu_self() -> float:
    usage = resource.getrusage(resource.RUSAGE_SELF)
    return usage.ru_utime + usage.ru_stime


async def _worker_main(pipe: Connection, plan: dict[str, Any]) -> None:
    loop = asyncio.get_running_loop()
    worker = WORKERS[plan["scenario"]](plan)
    try:
        pipe.send(("ready", await worker.prepare()))
        message = await loop.run_in_executor(None, pipe.recv)
        if message[0] == "go":
            before = _cpu_self()
            result = await worker.run(message[1])
            result["client_cpu_s"] = _cpu_self() - before
            pipe.send(("done", result))
            await loop.run_in_executor(None, pipe.recv)  # "close": the parent has sampled the server
    except Exception:
        pipe.send(("error", traceback.format_exc()))
    finally:
        worker.close()
        await asyncio.sleep(0.05)  # let the close frames reach the kernel before the process exits


def worker_entry(pipe: Connection, plan: dict[str, Any]) -> None:
    """Process entry point (spawned): raise the fd limit, run the worker on uvloop."""
    raise_nofile()
    import uvloop

    uvloop.run(_worker_main(pipe, plan))


# ---------------------------------------------------------------------------------------
# Parent side: plans, orchestration, aggregation
# ---------------------------------------------------------------------------------------


def make_plans(args: argparse.Namespace, host: str, port: int, run_id: str) -> list[dict[str, Any]]:
    """Split the scenario's connections and load over the worker processes."""
    w = args.workers
    base = {"scenario": args.scenario, "host": host, "port": port, "secret": args.secret, "run_id": run_id}
    plans = [{**base, "worker": k, "workers": w} for k in range(w)]
    s = args.scenario
    if s == "join":
        for p in plans:
            p.update(clients=args.clients, rate=args.rate, rooms=args.rooms, concurrency=args.concurrency)
    elif s == "idle":
        rooms = args.rooms or max(1, args.connections // 100)
        for p in plans:
            p.update(connections=args.connections, rooms=rooms)
    elif s == "fanout":
        rooms = [f"{run_id}-f{r}" for r in range(args.rooms)]
        per_pub = round(args.rate * args.duration / args.publishers)
        expected = {room: per_pub * args.publishers for room in rooms}
        for p in plans:
            p.update(viewers=[], publishers=[], expected=expected, text_len=args.text_len)
            p.update(duration=args.duration, drain=args.drain)
        stride = max(1, args.viewers // max(1, args.sample))
        for i in range(args.viewers):
            sampled = i % stride == 0 and i // stride < args.sample
            plans[(i // len(rooms)) % w]["viewers"].append((rooms[i % len(rooms)], f"v{i}", sampled))
        j = 0
        host_count = round(args.host_rate * args.duration)
        for room in rooms:
            for q in range(args.publishers):
                plans[j % w]["publishers"].append(
                    (room, f"p{j}-{q}", per_pub, args.rate / args.publishers, "viewer")
                )
                j += 1
            if host_count:  # the host's danmaku: never sampled, their loss and latency reported apart
                plans[j % w]["publishers"].append((room, f"h{j}", host_count, args.host_rate, "host"))
                expected[room] += host_count
                j += 1
        for p in plans:
            p["host_expected"] = host_count
    elif s == "likes":
        for p in plans:
            p.update(likers_per_worker=max(1, args.likers // w), burst=args.burst)
            p.update(likes_per_worker=round(args.rate * args.duration / w), rate_per_worker=args.rate / w)
            p.update(duration=args.duration, drain=args.drain)
    elif s == "dm":
        for p in plans:
            p.update(pairs_per_worker=max(1, args.pairs // w))
            p.update(dms_per_worker=round(args.rate * args.duration / w), rate_per_worker=args.rate / w)
            p.update(duration=args.duration, drain=args.drain)
    return plans


def _receive(pipe: Connection, want: str, deadline: float) -> Any:
    if not pipe.poll(max(0.0, deadline - time.time())):
        raise BenchError(f"a worker did not report {want!r} before the deadline")
    try:
        kind, payload = pipe.recv()
    except EOFError:
        raise BenchError("a worker process died") from None
    if kind == "error":
        raise BenchError(f"worker failed:\n{payload}")
    if kind != want:
        raise BenchError(f"worker sent {kind!r}, expected {want!r}")
    return payload


def parse_url(url: str) -> tuple[str, int]:
    """Accept ws://HOST:PORT[/ws] with a loopback HOST only: this tool never loads another machine."""
    parts = urlsplit(url)
    if parts.scheme not in ("ws", "http") or parts.hostname not in LOOPBACK or parts.port is None:
        raise SystemExit(f"--url must be ws://127.0.0.1:PORT (loopback only), got {url!r}")
    return ("127.0.0.1" if parts.hostname == "localhost" else parts.hostname), parts.port


def run_once(args: argparse.Namespace, index: int) -> dict[str, Any]:
    """Start a fresh server (unless --url), run the scenario once, return the result record."""
    servers: list[ServerProcess] = []
    redis_server: Any = None
    if args.url:
        host, port = parse_url(args.url)
        pids = [args.server_pid] if args.server_pid else []
    elif args.nodes > 1:  # N nodes of one deployment on their own redis-server
        from load_tests.bench_redis import _Redis

        redis_server = _Redis(tempfile.mkdtemp(prefix="liveroom-bench-redis-"), cluster=args.redis_cluster)
        for k in range(args.nodes):
            extra = [*(args.server_arg or []), "--redis", redis_server.url, "--node-id", f"bench{k}"]
            extra += ["--redis-cluster"] if args.redis_cluster else []
            servers.append(start_server(args.tick_ms, extra, args.server_dir))
        host, port, pids = "127.0.0.1", servers[0].port, [s.proc.pid for s in servers]
    else:
        servers.append(start_server(args.tick_ms, args.server_arg or [], args.server_dir))
        host, port, pids = "127.0.0.1", servers[0].port, [servers[0].proc.pid]
    run_id = f"b{os.getpid()}x{index}x{int(time.time() * 1000) % 10**8}"
    plans = make_plans(args, host, port, run_id)
    for plan in plans:
        plan["ports"] = [s.port for s in servers] or [port]
    ctx = mp.get_context("spawn")
    procs: list[mp.process.BaseProcess] = []
    pipes: list[Connection] = []
    hard_deadline = time.time() + args.max_seconds
    try:
        base = sample_servers(pids)
        redis_cpu0 = redis_server.cpu() if redis_server else None
        tcp_before = tcp_counters()
        for plan in plans:
            parent, child = ctx.Pipe()
            proc = ctx.Process(target=worker_entry, args=(child, plan), daemon=True)
            proc.start()
            child.close()
            procs.append(proc)
            pipes.append(parent)
        prepared = [_receive(p, "ready", hard_deadline) for p in pipes]
        if args.scenario == "idle":
            time.sleep(args.settle)  # let the join ticks' presence batches go out before measuring
        joined = sample_servers(pids)
        t0 = time.time() + GO_DELAY
        for p in pipes:
            p.send(("go", t0))
        done = [_receive(p, "done", hard_deadline) for p in pipes]
        end = sample_servers(pids)
        redis_cpu = round(redis_server.cpu() - redis_cpu0, 3) if redis_server else None
        tcp_after = tcp_counters()
        for p in pipes:
            p.send(("close", None))
    finally:
        for proc in procs:
            proc.join(10)
            if proc.is_alive():
                proc.kill()
                proc.join()
        for server in servers:
            server.stop()
        if redis_server is not None:
            redis_server.stop()
    record = aggregate(args, prepared, done, t0, base, joined, end)
    record["nodes"] = args.nodes if not args.url else 1
    record["redis"] = ("cluster" if args.redis_cluster else "single") if redis_server is not None else None
    if redis_server is not None:
        record["redis_cpu_s"] = redis_cpu  # the whole run, joins included
    # machine-wide, so other processes' connections count too; nonzero explains 1 s / 3 s joins
    record["tcp"] = {k: tcp_after.get(k, 0) - v for k, v in tcp_before.items()}
    record.update(run=index, date=datetime.date.today().isoformat(), commit=git_commit(args.server_dir))
    # the machine is shared: the 1-minute load average at the end says how quiet it was
    record["loadavg_1m"] = os.getloadavg()[0]
    return record


def git_commit(server_dir: str | None) -> str | None:
    """The commit benchmarked: HEAD of this checkout, or what --server-dir's COMMIT file says."""
    marker = Path(server_dir or "", "COMMIT")
    if server_dir and marker.is_file():
        return marker.read_text().strip()[:12]
    try:
        out = subprocess.run(
            ["git", "rev-parse", "--short", "HEAD"],
            capture_output=True,
            text=True,
            timeout=5,
            cwd=Path(__file__).parent,
        )
    except (OSError, subprocess.TimeoutExpired):
        return None
    return out.stdout.strip() or None


def _per_conn_kib(a: ServerSample | None, b: ServerSample | None, conns: int) -> float | None:
    if a is None or b is None or conns <= 0:
        return None
    return round((b.rss_kib - a.rss_kib) / conns, 2)


def aggregate(
    args: argparse.Namespace,
    prepared: list[dict[str, Any]],
    done: list[dict[str, Any]],
    t0: float,
    base: ServerSample | None,
    joined: ServerSample | None,
    end: ServerSample | None,
) -> dict[str, Any]:
    """Merge worker reports into one record: the JSON line of the run."""
    s = args.scenario
    failures = sum(p.get("failures", 0) for p in prepared) + sum(d.get("failures", 0) for d in done)
    errors = [e for r in prepared + done for e in r.get("errors", []) if isinstance(e, str)][:5]
    rec: dict[str, Any] = {"scenario": s, "tick_ms": args.tick_ms, "workers": args.workers}
    rec["join_retries"] = sum(p.get("retries", 0) for p in prepared)  # refused busy, then joined
    rec["server"] = {"self_started": not args.url, "rss_base_kib": base.rss_kib if base else None}
    if s == "join":
        lat = [x for d in done for x in d["latencies"]]
        last = max(d["last"] for d in done)
        rec.update(clients=args.clients, rate=args.rate, rooms=args.rooms, joined=len(lat), failures=failures)
        rec["join_ms"] = percentiles(lat)
        rec["elapsed_s"] = round(last - t0, 3)
        rec["joins_per_s"] = round(len(lat) / (last - t0), 1) if last > t0 else None
        rec["server_rss_per_conn_kib"] = _per_conn_kib(base, end, len(lat))
        cpu = round(end.cpu_s - joined.cpu_s, 3) if end and joined else None
        rec["server_cpu_s"] = cpu
        rec["server_cpu_ms_per_join"] = round(cpu * 1000 / len(lat), 3) if cpu is not None and lat else None
    elif s == "idle":
        alive = sum(d["alive"] for d in done)
        started = min(p["started"] for p in prepared)
        rec.update(connections=args.connections, joined=args.connections - failures, failures=failures)
        rec.update(alive=alive, join_elapsed_s=round(max(p["last"] for p in prepared) - started, 3))
        rec["server_rss_kib"] = joined.rss_kib if joined else None
        rec["server_rss_per_conn_kib"] = _per_conn_kib(base, joined, args.connections - failures)
    elif s == "fanout":
        expected = sum(d["expected"] for d in done)
        received = sum(d["received"] for d in done)
        last = max(d["last_recv"] for d in done)
        lat = [x for d in done for x in d["latencies"]]
        conns = args.viewers + args.rooms * args.publishers - failures
        rec.update(viewers=args.viewers, rooms=args.rooms, publishers=args.publishers, rate=args.rate)
        rec.update(duration_s=args.duration, failures=failures, sent=sum(d["sent"] for d in done))
        rec.update(expected=expected, received=received, loss=max(0, expected - received))
        rec["excess"] = max(0, received - expected)  # over-counting would show here, never hide loss
        rec["dropped_frames"] = sum(d["dropped_frames"] for d in done)
        rec["publish_errors"] = sum(d["publish_errors"] for d in done)
        # Over the delivery window (first to last receipt): equals the offered rate when the
        # server keeps up, and falls below it when deliveries lag behind the publishers.
        first = min((d["first_recv"] for d in done if d["first_recv"]), default=0.0)
        rec["offered_per_s"] = round(args.rate * args.rooms * (args.viewers / args.rooms), 1)
        rec["delivered_per_s"] = round(received / (last - first), 1) if last > first else 0.0
        rec["e2e_ms"] = percentiles(lat)
        rec["latency_samples"] = len(lat)
        rec["sampled"] = sum(d["sampled"] for d in done)  # left out by the event budget, counted
        rec["priority_e2e_ms"] = percentiles([x for d in done for x in d["priority_latencies"]])
        host_expected = round(args.host_rate * args.duration) * (args.viewers - failures)
        rec["priority_lost"] = max(0, host_expected - sum(d["priority"] for d in done))
        window = last - first if last > first else args.duration
        rec["bytes_per_viewer_s"] = round(sum(d["bytes"] for d in done) / max(1, args.viewers) / window, 1)
        cpu = round(end.cpu_s - joined.cpu_s, 3) if end and joined else None
        rec["server_cpu_s"] = cpu
        rec["server_cpu_us_per_viewer_s"] = (
            round(cpu * 1e6 / max(1, args.viewers) / window, 2) if cpu is not None else None
        )
        rec["server_cpu_us_per_msg"] = (
            round(cpu * 1e6 / received, 3) if cpu is not None and received else None
        )
        rec["server_rss_per_conn_kib"] = _per_conn_kib(base, joined, conns)
    elif s == "likes":
        sent = sum(d["sent"] for d in done)
        observed = sum(d["observed"] for d in done)
        last = max(d["last_recv"] for d in done)
        lat = [x for d in done for x in d["latencies"]]
        rec.update(likers=args.likers, rate=args.rate, burst=args.burst, duration_s=args.duration)
        rec.update(failures=failures, sent=sent, observed=observed, loss=max(0, sent - observed))
        rec["likes_per_s"] = round(observed / (last - t0), 1) if last > t0 else 0.0
        rec["rtt_ms"] = percentiles(lat)
        cpu = round(end.cpu_s - joined.cpu_s, 3) if end and joined else None
        rec["server_cpu_s"] = cpu
    elif s == "dm":
        sent = sum(d["sent"] for d in done)
        delivered = sum(d["delivered"] for d in done)
        last = max(d["last_recv"] for d in done)
        rec.update(pairs=args.pairs, rate=args.rate, duration_s=args.duration, failures=failures)
        rec.update(sent=sent, acked=sum(d["acked"] for d in done), delivered=delivered)
        rec.update(live=sum(d["live"] for d in done), dm_errors=sum(d["dm_errors"] for d in done))
        rec["loss"] = max(0, sent - delivered)
        rec["dms_per_s"] = round(delivered / (last - t0), 1) if last > t0 else 0.0
        rec["ack_ms"] = percentiles([x for d in done for x in d["ack_ms"]])
        rec["delivery_ms"] = percentiles([x for d in done for x in d["delivery_ms"]])
        cpu = round(end.cpu_s - joined.cpu_s, 3) if end and joined else None
        rec["server_cpu_s"] = cpu
    # The generator's own CPU while it ran: near (elapsed x workers) means it was the bottleneck.
    rec["client_cpu_s"] = round(sum(d.get("client_cpu_s", 0.0) for d in done), 3)
    if errors:
        rec["errors"] = errors
    return rec


def median_record(records: list[dict[str, Any]]) -> dict[str, Any]:
    """Field-by-field median of numeric values (recursively); other values from the first run."""

    def merge(values: list[Any]) -> Any:
        first = values[0]
        if isinstance(first, dict):
            return {k: merge([v.get(k) for v in values]) for k in first}
        nums = [v for v in values if isinstance(v, (int, float)) and not isinstance(v, bool)]
        if nums and len(nums) == len(values):
            return statistics.median(nums)
        return first

    out = merge(records)
    out["run"] = "median"
    out["runs"] = len(records)
    return out


# Columns of the Markdown table: (title, path into the record).
COLUMNS: dict[str, list[tuple[str, str]]] = {
    "join": [
        ("clients", "clients"),
        ("rate/s", "rate"),
        ("joined", "joined"),
        ("fail", "failures"),
        ("p50 ms", "join_ms.p50"),
        ("p90 ms", "join_ms.p90"),
        ("p99 ms", "join_ms.p99"),
        ("max ms", "join_ms.max"),
        ("all joined s", "elapsed_s"),
        ("CPU ms/join", "server_cpu_ms_per_join"),
        ("RSS/conn KiB", "server_rss_per_conn_kib"),
    ],
    "fanout": [
        ("viewers", "viewers"),
        ("rooms", "rooms"),
        ("msgs/s/room", "rate"),
        ("delivered/s", "delivered_per_s"),
        ("loss", "loss"),
        ("dropped", "dropped_frames"),
        ("p50 ms", "e2e_ms.p50"),
        ("p99 ms", "e2e_ms.p99"),
        ("max ms", "e2e_ms.max"),
        ("CPU us/msg", "server_cpu_us_per_msg"),
        ("RSS/conn KiB", "server_rss_per_conn_kib"),
    ],
    "likes": [
        ("likers", "likers"),
        ("rate/s", "rate"),
        ("likes/s", "likes_per_s"),
        ("loss", "loss"),
        ("p50 ms", "rtt_ms.p50"),
        ("p99 ms", "rtt_ms.p99"),
        ("max ms", "rtt_ms.max"),
        ("server CPU s", "server_cpu_s"),
    ],
    "dm": [
        ("pairs", "pairs"),
        ("rate/s", "rate"),
        ("DMs/s", "dms_per_s"),
        ("loss", "loss"),
        ("ack p50 ms", "ack_ms.p50"),
        ("ack p99 ms", "ack_ms.p99"),
        ("deliver p50 ms", "delivery_ms.p50"),
        ("deliver p99 ms", "delivery_ms.p99"),
        ("server CPU s", "server_cpu_s"),
    ],
    "idle": [
        ("connections", "connections"),
        ("joined", "joined"),
        ("fail", "failures"),
        ("alive", "alive"),
        ("join s", "join_elapsed_s"),
        ("server RSS MiB", "server_rss_kib"),
        ("RSS/conn KiB", "server_rss_per_conn_kib"),
    ],
}

# The latency block each scenario plots, and the load parameter --sweep varies.
PLOT_KEY = {"join": "join_ms", "fanout": "e2e_ms", "likes": "rtt_ms", "dm": "delivery_ms", "idle": None}
SWEEP_PARAM = {"join": "rate", "fanout": "rate", "likes": "rate", "dm": "rate", "idle": "connections"}


def get_path(record: dict[str, Any], path: str) -> Any:
    value: Any = record
    for part in path.split("."):
        value = value.get(part) if isinstance(value, dict) else None
    return value


def markdown_table(scenario: str, records: list[dict[str, Any]]) -> str:
    cols = [("run", "run"), *COLUMNS[scenario]]
    lines = ["| " + " | ".join(t for t, _ in cols) + " |", "|" + "---|" * len(cols)]
    for rec in records:
        cells = []
        for _, path in cols:
            v = get_path(rec, path)
            if path == "server_rss_kib" and isinstance(v, (int, float)):
                v = round(v / 1024, 1)
            cells.append("-" if v is None else f"{v:,}" if isinstance(v, (int, float)) else str(v))
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines)


def plot(scenario: str, points: list[tuple[float, dict[str, Any]]], path: str) -> None:
    """PNG of latency percentiles (or RSS per connection for idle) against the swept load."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(7, 4.5))
    xs = [x for x, _ in points]
    key = PLOT_KEY[scenario]
    if key is None:
        ax.plot(xs, [r.get("server_rss_per_conn_kib") for _, r in points], marker="o", label="RSS/conn")
        ax.set_ylabel("server RSS per connection (KiB)")
    else:
        for q in ("p50", "p90", "p99"):
            ax.plot(xs, [get_path(r, f"{key}.{q}") for _, r in points], marker="o", label=q)
        ax.set_ylabel(f"{key.replace('_ms', '')} latency (ms)")
    ax.set_xlabel(f"{SWEEP_PARAM[scenario]} ({scenario})")
    ax.set_title(f"liveroom {scenario}: tick {points[0][1].get('tick_ms')} ms, median of runs")
    ax.grid(True, alpha=0.3)
    ax.legend()
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="python -m load_tests.bench", description=__doc__.split("\n\n")[0])
    sub = parser.add_subparsers(dest="scenario", required=True)

    def common(p: argparse.ArgumentParser) -> None:
        p.add_argument("--url", help="use a running server, ws://127.0.0.1:PORT (loopback only)")
        p.add_argument("--server-pid", type=int, help="with --url: PID to read CPU and RSS from")
        p.add_argument("--server-arg", action="append", help="extra argument for the started server")
        p.add_argument(
            "--server-dir", help="run the started server from this source tree (default: installed)"
        )
        p.add_argument("--tick-ms", type=int, default=50, help="server tick (default 50)")
        p.add_argument("--workers", type=int, default=2, help="client processes (default 2)")
        p.add_argument(
            "--nodes",
            type=int,
            default=1,
            help="start N nodes sharing a redis-server the benchmark starts; connections go "
            "round-robin over them and server CPU is summed (default 1: one node, no Redis)",
        )
        p.add_argument(
            "--redis-cluster",
            action="store_true",
            help="with --nodes: a real 3+3 Redis Cluster instead of one redis-server",
        )
        p.add_argument("--repeat", type=int, default=1, help="runs per point; the median is reported")
        p.add_argument("--sweep", help=f"comma-separated values of the load parameter {SWEEP_PARAM}")
        p.add_argument("--plot", help="write a PNG of latency percentiles against load")
        p.add_argument("--max-seconds", type=float, default=180, help="hard limit for one run")
        p.add_argument("--secret", default=os.environ.get("LIVEROOM_SECRET", DEFAULT_SECRET))

    p = sub.add_parser("join", help="N clients join at a rate; connect-to-snapshot latency")
    common(p)
    p.add_argument("--clients", type=int, default=5000)
    p.add_argument("--rate", type=float, default=500, help="joins/s (0: as fast as --concurrency allows)")
    p.add_argument("--rooms", type=int, default=1)
    p.add_argument("--concurrency", type=int, default=CONNECT_CONCURRENCY)

    p = sub.add_parser("fanout", help="viewers receive danmaku from publishers; throughput and e2e latency")
    common(p)
    p.add_argument("--viewers", type=int, default=2000, help="total, spread over rooms")
    p.add_argument("--rooms", type=int, default=1)
    p.add_argument("--publishers", type=int, default=1, help="per room")
    p.add_argument("--rate", type=float, default=250, help="danmaku/s per room")
    p.add_argument("--duration", type=float, default=10.0, help="seconds of publishing")
    p.add_argument("--drain", type=float, default=10.0, help="seconds to wait for stragglers")
    p.add_argument("--sample", type=int, default=20, help="viewers that decode every frame for latency")
    p.add_argument("--text-len", type=int, default=20)
    p.add_argument(
        "--host-rate", type=float, default=0.0, help="host danmaku/s per room besides (never sampled)"
    )

    p = sub.add_parser("likes", help="bursty likes; throughput and like-to-total round trip")
    common(p)
    p.add_argument("--likers", type=int, default=100)
    p.add_argument("--rate", type=float, default=2000, help="like frames/s in total")
    p.add_argument("--burst", type=int, default=10, help="likes sent back to back by one liker")
    p.add_argument("--duration", type=float, default=10.0)
    p.add_argument("--drain", type=float, default=10.0)

    p = sub.add_parser("dm", help="direct messages between pairs; ack and delivery latency")
    common(p)
    p.add_argument("--pairs", type=int, default=50)
    p.add_argument("--rate", type=float, default=500, help="DMs/s in total")
    p.add_argument("--duration", type=float, default=10.0)
    p.add_argument("--drain", type=float, default=10.0)

    p = sub.add_parser("idle", help="K idle viewers; server RSS per connection")
    common(p)
    p.add_argument("--connections", type=int, default=10000)
    p.add_argument("--rooms", type=int, default=0, help="default: one room per 100 connections")
    p.add_argument("--settle", type=float, default=1.0, help="seconds after joining before measuring")
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    raise_nofile()
    if args.url:
        parse_url(args.url)
    param = SWEEP_PARAM[args.scenario]
    values = [float(v) for v in args.sweep.split(",")] if args.sweep else [getattr(args, param)]
    medians: list[tuple[float, dict[str, Any]]] = []
    table: list[dict[str, Any]] = []
    for value in values:
        setattr(args, param, int(value) if param == "connections" or value == int(value) else value)
        runs = []
        for i in range(args.repeat):
            try:
                rec = run_once(args, i)
            except BenchError as exc:
                print(f"bench: {exc}", file=sys.stderr)
                return 1
            print(json.dumps(rec), flush=True)
            runs.append(rec)
        result = runs[0] if len(runs) == 1 else median_record(runs)
        if len(runs) > 1:
            print(json.dumps(result), flush=True)
        table += runs + ([result] if len(runs) > 1 else [])
        medians.append((value, result))
    print()
    print(markdown_table(args.scenario, table))
    if args.plot:
        plot(args.scenario, medians, args.plot)
        print(f"\nplot written to {args.plot}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
