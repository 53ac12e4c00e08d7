"""Abuse-resistance benchmark: honest viewers' latency with and without a flood of abusive clients.

    python -m load_tests.bench_flood [--viewers 1000] [--abusers 20] [--seconds 10] [--runs 3]

Per run: start a server in its own process; join `viewers` honest viewers to one room (from
127.0.0.1), of which `senders` each post one danmaku a second; phase 1 (baseline) runs for
`seconds`; phase 2 adds `abusers` clients (another process, each from its own 127.0.0.x
address) sending danmaku as fast as their sockets take them. Reported per phase: honest
end-to-end latency p50/p99 (send -> sampled viewers decode it), honest messages lost (every
viewer counts every honest message), and for the flood, server CPU per rejected message
(CPU of the flood phase minus the baseline's, over the rejections counted in /metrics).
Prints one JSON line, then a markdown table of the median run.

The server runs with `LIVEROOM_ABUSE_STRIKES=0` (flooders are never disconnected, so the
flood lasts the whole phase and the cost per rejection is measured at steady state) and with
join/connection limits for 127.0.0.1 raised so the honest viewers can all come from one address.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import multiprocessing as mp
import os
import select
import statistics
import subprocess
import sys
import time
import urllib.request
from multiprocessing.synchronize import Event as MpEvent
from typing import Any

import msgpack

from load_tests.bench import from_letters, letters, stop_process
from load_tests.wsraw import RawWs, connect

ROOM = "flood"
MARK = b"HONEST-"
SERVER_ENV = {
    "LIVEROOM_ABUSE_STRIKES": "0",
    "LIVEROOM_MAX_CONNS_PER_IP": "5000",
    "LIVEROOM_RATE_LIMITS": "join.ip=1000/2000",
}


def _token(user: str) -> str:
    from server.config import DEFAULT_SECRET
    from server.wire import auth

    return auth.mint(DEFAULT_SECRET, room=ROOM, user=user)


def start_server(tick_ms: int) -> tuple[subprocess.Popen[str], int]:
    cmd = [sys.executable, "-m", "server", "serve", "--port", "0", "--http-port", "0"]
    cmd += ["--tick-ms", str(tick_ms), "--log-level", "WARNING", "--node-id", "flood"]
    proc = subprocess.Popen(
        cmd, stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True, env={**os.environ, **SERVER_ENV}
    )
    assert proc.stdout is not None
    ready, _, _ = select.select([proc.stdout], [], [], 30)
    line = proc.stdout.readline() if ready else ""
    if "listening on http://127.0.0.1:" not in line:
        proc.kill()
        raise RuntimeError(f"server did not start: {line!r}")
    return proc, int(line.split("http://127.0.0.1:")[1].split()[0])


def cpu_seconds(pid: int) -> float:
    """utime + stime of the server process, from /proc/PID/stat."""
    with open(f"/proc/{pid}/stat") as f:
        fields = f.read().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def rejections(port: int) -> float:
    with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=10) as resp:
        text = resp.read().decode()
    return sum(
        float(line.rsplit(" ", 1)[1])
        for line in text.splitlines()
        if line.startswith("liveroom_rejections_total{")
    )


# -- abusers: their own process ------------------------------------------------------------------


def abuser_main(port: int, count: int, go: MpEvent, stop: MpEvent, out: Any) -> None:
    import uvloop

    out.send(uvloop.run(_abusers(port, count, go, stop)))


async def _abusers(port: int, count: int, go: MpEvent, stop: MpEvent) -> int:
    loop = asyncio.get_running_loop()
    conns: list[RawWs] = []
    for i in range(count):
        proto = RawWs(f"/ws?token={_token(f'abuser{i}')}", f"127.0.0.1:{port}", lambda b, s, e: None)
        await loop.create_connection(
            lambda p=proto: p, "127.0.0.1", port, local_addr=(f"127.0.0.{10 + i}", 0)
        )
        await proto.joined
        conns.append(proto)
    while not go.is_set():
        await asyncio.sleep(0.01)
    sent = 0
    frames = [msgpack.packb({"t": "danmaku", "text": f"spam spam {n}"}) for n in range(1000)]
    while not stop.is_set():
        wrote = False
        for conn in conns:
            transport = conn.transport
            if transport is None or transport.is_closing() or transport.get_write_buffer_size() > 1 << 16:
                continue
            for n in range(50):  # as fast as the socket takes them
                conn._send_frame(2, frames[(sent + n) % 1000])
            sent += 50
            wrote = True
        await asyncio.sleep(0 if wrote else 0.001)  # every socket full: wait for the server to drain
    for conn in conns:
        conn.close()
    return sent


# -- honest viewers ------------------------------------------------------------------------------------


class Viewer:
    __slots__ = ("conn", "honest", "latencies", "sampled")

    def __init__(self, sampled: bool) -> None:
        self.sampled = sampled
        self.honest = 0
        self.latencies: list[float] = []

    def on_message(self, buf: bytearray, start: int, end: int) -> None:
        found = buf.count(MARK, start, end)
        if not found:
            return
        self.honest += found
        if self.sampled:
            now = time.perf_counter()
            frame = msgpack.unpackb(bytes(buf[start:end]))
            for event in frame.get("events", ()):
                text = event.get("text", "")
                if text.startswith("HONEST-"):
                    self.latencies.append(now - from_letters(text.rsplit("-", 1)[1]) / 1e6)


async def honest_phase(senders: list[RawWs], seconds: float, tag: str) -> int:
    """Each sender posts one danmaku a second, staggered; returns messages sent."""
    sent = 0
    start = time.perf_counter()
    for k in range(int(seconds)):
        for i, conn in enumerate(senders):
            target = start + k + i / len(senders)
            await asyncio.sleep(max(0.0, target - time.perf_counter()))
            stamp = letters(int(time.perf_counter() * 1e6))
            conn.send({"t": "danmaku", "text": f"HONEST-{tag}-{letters(i)}-{letters(k)}-{stamp}"})
            sent += 1
    return sent


async def run_once(args: argparse.Namespace) -> dict[str, Any]:
    proc, port = start_server(args.tick_ms)
    ctx = mp.get_context("spawn")  # a fresh interpreter: nothing inherited from this running loop
    go, stop = ctx.Event(), ctx.Event()
    parent, child = ctx.Pipe()
    abusers = ctx.Process(target=abuser_main, args=(port, args.abusers, go, stop, child))
    try:
        viewers = [Viewer(sampled=i % max(1, args.viewers // args.sampled) == 0) for i in range(args.viewers)]
        conns: list[RawWs] = []
        for batch in range(0, args.viewers, 50):
            made = await asyncio.gather(
                *(
                    connect("127.0.0.1", port, f"/ws?token={_token(f'v{i}')}", viewers[i].on_message, 30)
                    for i in range(batch, min(batch + 50, args.viewers))
                )
            )
            conns += [conn for conn, _ in made]
        abusers.start()
        senders = conns[: args.senders]
        await asyncio.sleep(1.0)  # presence settles
        result: dict[str, Any] = {}
        for phase in ("baseline", "flood"):
            for v in viewers:
                v.honest, v.latencies = 0, []
            cpu0, rej0 = cpu_seconds(proc.pid), rejections(port)
            if phase == "flood":
                go.set()
            sent = await honest_phase(senders, args.seconds, phase)
            if phase == "flood":
                stop.set()
            cpu1, rej1 = cpu_seconds(proc.pid), rejections(port)
            deadline = time.perf_counter() + 15
            while time.perf_counter() < deadline and any(v.honest < sent for v in viewers):
                await asyncio.sleep(0.1)
            lat = sorted(x for v in viewers for x in v.latencies)
            result[phase] = {
                "honest_sent": sent,
                "honest_lost": sum(max(0, sent - v.honest) for v in viewers),
                "p50_ms": round(1000 * lat[len(lat) // 2], 2) if lat else None,
                "p99_ms": round(1000 * lat[min(len(lat) - 1, int(len(lat) * 0.99))], 2) if lat else None,
                "server_cpu_s": round(cpu1 - cpu0, 3),
                "rejected": int(rej1 - rej0),
            }
        flood, base = result["flood"], result["baseline"]
        flood["abuser_frames_sent"] = parent.recv() if parent.poll(30) else None
        extra_cpu = flood["server_cpu_s"] - base["server_cpu_s"]
        result["us_per_rejection"] = (
            round(1e6 * extra_cpu / flood["rejected"], 2) if flood["rejected"] else None
        )
        for conn in conns:
            conn.close()
        return result
    finally:
        stop.set()
        go.set()
        if abusers.is_alive() or abusers.exitcode is None:
            abusers.join(30)
            if abusers.is_alive():
                abusers.kill()
        stop_process(proc)  # a drain that takes too long is cut: the numbers are in already


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--viewers", type=int, default=1000)
    parser.add_argument("--senders", type=int, default=10, help="honest viewers that also post (1/s each)")
    parser.add_argument("--sampled", type=int, default=50, help="viewers that decode frames for latency")
    parser.add_argument("--abusers", type=int, default=20)
    parser.add_argument("--seconds", type=float, default=10)
    parser.add_argument("--runs", type=int, default=3)
    parser.add_argument("--tick-ms", dest="tick_ms", type=int, default=50)
    args = parser.parse_args()
    import resource

    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    resource.setrlimit(resource.RLIMIT_NOFILE, (min(hard, max(soft, 8192)), hard))
    import uvloop

    runs = [uvloop.run(run_once(args)) for _ in range(args.runs)]
    key = [r["flood"]["p99_ms"] or 0 for r in runs]
    median = runs[key.index(statistics.median_low(key))]
    summary = {
        "bench": "flood",
        "viewers": args.viewers,
        "abusers": args.abusers,
        "seconds": args.seconds,
        "runs": runs,
        "median_run": median,
    }
    print(json.dumps(summary))
    b, f = median["baseline"], median["flood"]
    ratio = f"{f['p99_ms'] / b['p99_ms']:.2f}x" if b["p99_ms"] and f["p99_ms"] else "n/a"
    print()
    print("| phase | honest sent | honest lost | p50 ms | p99 ms | server CPU s | rejected |")
    print("|---|---|---|---|---|---|---|")
    for name, p in (("no flood", b), ("flood", f)):
        print(
            f"| {name} | {p['honest_sent']} | {p['honest_lost']} | {p['p50_ms']} | {p['p99_ms']} "
            f"| {p['server_cpu_s']} | {p['rejected']} |"
        )
    print()
    print(f"p99 flood/no-flood: {ratio}; server CPU per rejected message: {median['us_per_rejection']} µs")


if __name__ == "__main__":
    main()
