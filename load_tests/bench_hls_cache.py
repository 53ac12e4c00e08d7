"""Origin flatness of LL-HLS behind a cache: 10, 100, 1,000 simulated viewers through nginx.

A node (`python -m server serve --demo`: the Python host streams a test pattern in room
`demo`) with nginx in front of its media port, configured as docs/API.md "HLS behind a CDN"
says (tests/nginx_fixtures.py writes the config). Each simulated viewer has its own URL token
and does what hls.js does at the live edge: a blocking reload for the hinted part and the part
itself, at once, again and again (it fetches hinted parts only, so not a segment's short
closing part, which the hint skips: ~6 requests/s against hls.js's ~7). The viewers run on
load_tests/hlsraw.py, a bare HTTP/1.1 client in `--procs` worker processes: ~19-25 µs of CPU a
request against aiohttp's ~140 µs (`--generators raw aiohttp` runs both, interleaved per level),
so that at 1,000 viewers (~6,000 requests/s) the machine, not the generator, is measured.
Per level, over `--seconds` after a warm-up: the node's answers per second (its
`liveroom_hls_requests_total`, i.e. the cache's misses), the node's CPU (utime+stime of its
process), the parts per second the viewers got (did they keep up), the generator's CPU and
CPU per request, and who took the CPU (node, nginx, generator, benchmark process, browsers,
the whole machine). Target: origin requests/s and node CPU flat from 10 to 1,000 viewers.
`--runs` repeats the whole ladder; medians are reported, with ratios against the first level
of the same run. `--browsers N` adds N real headless Chromium viewers
(load_tests/hls_browsers.py) of the demo page in `?mode=hls` through the same cache, playing
through every level: per level and browser, the frames it presented against 30 a second, its
stalls (`waiting` events, time stalled, hls.js buffer-stall errors, player restarts) and the
page's latency figure; the window runs from the level's start (the simulated viewers' tokens
and ramp-up included) to the end of its measurement. Prints one JSON line per level and run,
a JSON summary and Markdown tables.

    python -m load_tests.bench_hls_cache --levels 10 100 1000 --runs 3 --browsers 3

Measured 2026-12-06 on the shared 2-core box (docs/BENCHMARKS.md, "1,000 simulated viewers + 3
real Chromium viewers with a bare HTTP generator"): origin 7.5 req/s and node CPU ~27 % at 10,
100 and 1,000 viewers (1.0x, 0.95x), the viewers at 3.0 parts/s, the 3 pages at 99-100 % of
30 fps with 4 `waiting` events in 27 page-windows; nginx 14 %, the generator 12 % of a core at 1,000.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import re
import statistics
import subprocess
import sys
import tempfile
import time
from dataclasses import replace
from pathlib import Path
from typing import Any

import aiohttp

from load_tests.bench import BENCH_SERVER_ENV, raise_nofile, sample_server, stop_process
from load_tests.hls_browsers import RealViewers
from load_tests.hlsraw import Crowd, Tally
from server.config import DEFAULT_SECRET
from server.wire import auth
from tests.nginx_fixtures import NginxCache
from tests.ports import free_port

ROOM = "demo"
_HINT = re.compile(r'#EXT-X-PRELOAD-HINT:TYPE=PART,URI="([^"]+)"')
_PART = re.compile(r"p(\d+)\.(\d+)\.m4s")
_METRIC = re.compile(r'^liveroom_hls_requests_total\{kind="(\w+)"\} ([0-9.e+]+)$', re.M)


async def follow(http: aiohttp.ClientSession, url: str, tally: Tally, stop: asyncio.Event) -> None:
    """One LL-HLS viewer at the live edge until `stop`, on aiohttp (`--generators aiohttp`; the
    default generator is load_tests/hlsraw.py's `Viewer`, which does the same ~6x cheaper)."""
    directory = url.rsplit("/", 1)[0]
    hint: str | None = None
    while not stop.is_set():
        try:
            if hint is None:
                async with http.get(url) as r:
                    text = await r.text()
                match = _HINT.search(text)
                if r.status != 200 or match is None:
                    tally.errors += 1
                    await asyncio.sleep(0.5)
                    continue
                tally.requests += 1
                hint = match[1]
            part = _PART.fullmatch(hint.split("/")[1])
            assert part is not None
            reload_url = f"{url}?_HLS_msn={part[1]}&_HLS_part={part[2]}"
            async with http.get(reload_url) as r1, http.get(f"{directory}/{hint}") as r2:
                text, _ = await r1.text(), await r2.read()
                status = r2.status
            tally.requests += 2
            if r1.status != 200:
                tally.errors += 1
                hint = None
                continue
            tally.part(status)
            match = _HINT.search(text)
            hint = match[1] if match else None
        except (aiohttp.ClientError, TimeoutError):
            tally.errors += 1
            hint = None
            await asyncio.sleep(0.5)


async def origin_requests(http: aiohttp.ClientSession, node: str) -> dict[str, float]:
    """The node's HLS answers so far, by kind (playlist, blocking, part, segment, init)."""
    async with http.get(f"{node}/metrics") as r:
        text = await r.text()
    return {m[1]: float(m[2]) for m in _METRIC.finditer(text)}


async def viewer_urls(http: aiohttp.ClientSession, cache: str, count: int) -> list[str]:
    """A URL token per viewer, asked through the cache (the token endpoint is never cached)."""
    gate = asyncio.Semaphore(20)

    async def one(i: int) -> str:
        async with gate:
            token = auth.mint(DEFAULT_SECRET, room=ROOM, user=f"hv{i}", role="viewer")
            headers = {"Authorization": f"Bearer {token}"}
            async with http.get(f"{cache}/hls/{ROOM}/token", headers=headers) as r:
                body = await r.json()
                if r.status != 200:
                    raise RuntimeError(f"token refused: {body}")
            return cache + body["url"]

    return await asyncio.gather(*(one(i) for i in range(count)))


def cpu_seconds(pid: int) -> float:
    """utime+stime of a process and its descendants so far."""
    sample = sample_server(pid)
    return sample.cpu_s if sample is not None else 0.0


def machine_busy_s() -> float:
    """CPU seconds all cores spent not idle so far (/proc/stat): everyone's, other people's too."""
    fields = [int(x) for x in Path("/proc/stat").read_text().split("\n", 1)[0].split()[1:]]
    return (sum(fields[:8]) - fields[3] - fields[4]) / os.sysconf("SC_CLK_TCK")


def cpu_by_group(node: int, nginx: int, workers: list[int]) -> dict[str, float]:
    """CPU seconds so far of who shares the machine during a level: the node, nginx (master and
    worker), the simulated viewers' worker processes, the benchmark's own process (the aiohttp
    generator runs in it), the browsers (every other child: Playwright's driver and Chromium)
    and the whole machine."""
    tree, own = cpu_seconds(os.getpid()), os.times()
    groups = {
        "node": cpu_seconds(node),
        "nginx": cpu_seconds(nginx),
        "workers": sum(map(cpu_seconds, workers)),
        "bench": own.user + own.system,
    }
    return {**groups, "browsers": max(0.0, tree - sum(groups.values())), "machine": machine_busy_s()}


async def level(
    http: aiohttp.ClientSession,
    node: str,
    cache: NginxCache,
    pid: int,
    viewers: int,
    warmup: float,
    seconds: float,
    generator: str = "raw",
    crowd: Crowd | None = None,
    browsers: RealViewers | None = None,
) -> dict[str, Any]:
    """One level: `viewers` simulated viewers by `generator` (raw: hlsraw's Viewers in `crowd`'s
    worker processes; aiohttp: follow() tasks in this process), measured after `warmup`."""
    if browsers is not None:
        await browsers.watch()
    urls = await viewer_urls(http, cache.base, viewers)
    stop, tally = asyncio.Event(), Tally()
    tasks: list[asyncio.Task[None]] = []
    workers: list[int] = []
    if generator == "raw":
        assert crowd is not None
        workers = crowd.pids
        await crowd.follow([u.removeprefix(cache.base) for u in urls])
    else:
        tasks = [asyncio.create_task(follow(http, u, tally, stop)) for u in urls]

    async def counts() -> Tally:
        return await crowd.tally() if crowd is not None and generator == "raw" else replace(tally)

    assert cache.proc is not None
    try:
        await asyncio.sleep(warmup)
        req0, cpu0, tally0, t0 = (
            await origin_requests(http, node),
            cpu_by_group(pid, cache.proc.pid, workers),
            await counts(),
            time.monotonic(),
        )
        await asyncio.sleep(seconds)
        req1, cpu1, tally1, t1 = (
            await origin_requests(http, node),
            cpu_by_group(pid, cache.proc.pid, workers),
            await counts(),
            time.monotonic(),
        )
        seen = await browsers.collect() if browsers is not None else None
    finally:
        if generator == "raw" and crowd is not None:
            await crowd.stop()
        stop.set()
        if tasks:
            await asyncio.wait(tasks, timeout=15)
        for task in tasks:
            task.cancel()
    span = t1 - t0
    cpu = {k: round(100 * (cpu1[k] - cpu0[k]) / span, 1) for k in cpu0}
    # the generator's own CPU: its worker processes (raw) or this process (aiohttp, with the
    # browsers' Playwright calls in it)
    generator_s = (
        (cpu1["workers"] - cpu0["workers"]) if generator == "raw" else (cpu1["bench"] - cpu0["bench"])
    )
    requests = tally1.requests - tally0.requests
    return {
        "generator": generator,
        "viewers": viewers,
        "origin_rps": round((sum(req1.values()) - sum(req0.values())) / span, 2),
        # each part crosses the cache once: the parts the viewers pulled through (~3.5 a second at the live edge)
        "origin_parts_per_s": round((req1.get("part", 0) - req0.get("part", 0)) / span, 2),
        "origin_rps_by_kind": {k: round((v - req0.get(k, 0)) / span, 2) for k, v in sorted(req1.items())},
        "node_cpu_pct": cpu["node"],
        "viewer_parts_per_s": round((tally1.parts - tally0.parts) / span / viewers, 2),
        # the simulated viewers' own CPU (% of one core): near 100 % per process, they, not the origin, limit
        "clients_cpu_pct": round(100 * generator_s / span, 1),
        "clients_requests_per_s": round(requests / span, 1),
        "clients_cpu_us_per_request": round(1e6 * generator_s / requests, 1) if requests else None,
        "cpu_pct_by": cpu,  # node, nginx, workers, bench, browsers, machine (everyone's), % of one core
        "loadavg_1m": os.getloadavg()[0],
        "missing_hints": tally1.missing - tally0.missing,
        "errors": tally1.errors - tally0.errors,
        **({"browsers": seen} if seen is not None else {}),
    }


def start_node(http_port: int) -> tuple[subprocess.Popen[str], str]:
    port = free_port()
    env = {**os.environ, **BENCH_SERVER_ENV, "LIVEROOM_HTTP_PORT": str(http_port)}
    cmd = [
        sys.executable,
        "-m",
        "server",
        "serve",
        "--port",
        str(port),
        "--http-port",
        str(http_port),
        "--demo",
    ]
    proc = subprocess.Popen(cmd, env=env, stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True)
    assert proc.stdout is not None
    line = proc.stdout.readline()
    if "listening on" not in line:
        stop_process(proc)
        raise RuntimeError(f"node did not start: {line!r}")
    return proc, f"http://127.0.0.1:{port}"


async def wait_live(http: aiohttp.ClientSession, cache: str, node: str, deadline: float) -> None:
    """Until the demo host publishes and the room's HLS playlist answers."""
    (url,) = await viewer_urls(http, cache, 1)
    while time.monotonic() < deadline:
        async with http.get(url) as r:
            if r.status == 200:
                return
        await asyncio.sleep(0.5)
    raise RuntimeError("the demo room's HLS never started")


async def run_once(
    levels: list[int],
    warmup: float,
    seconds: float,
    browsers: int = 0,
    generators: tuple[str, ...] = ("raw",),
    procs: int = 2,
) -> list[dict[str, Any]]:
    """A fresh node and nginx; each level once per generator (interleaved: raw then aiohttp)."""
    http_port = free_port()
    proc, node = start_node(http_port)
    cache = NginxCache(Path(tempfile.mkdtemp(prefix="bench-hls-nginx-")), http_port)
    real = RealViewers() if browsers else None
    crowd: Crowd | None = None
    try:
        cache.start()
        if "raw" in generators:
            crowd = Crowd("127.0.0.1", cache.port, procs)
        connector = aiohttp.TCPConnector(limit=0)
        timeout = aiohttp.ClientTimeout(total=30)
        async with aiohttp.ClientSession(connector=connector, timeout=timeout) as http:
            await wait_live(http, cache.base, node, time.monotonic() + 60)
            if real is not None:  # the page from the node, its HLS through the cache
                pages = [f"{node}/room/{ROOM}?user=bv{i}&mode=hls&hls={cache.base}" for i in range(browsers)]
                await real.open(pages)
            return [
                await level(http, node, cache, proc.pid, n, warmup, seconds, g, crowd, real)
                for n in levels
                for g in generators
            ]
    finally:
        if real is not None:
            await real.close()
        if crowd is not None:
            await crowd.close()
        cache.stop()
        stop_process(proc)


Rows = dict[tuple[str, int], list[dict[str, Any]]]


def report(rows: Rows) -> None:
    """Medians per generator and level, ratios against the generator's first level of the same
    run; JSON then the tables."""
    summary = []
    for g in dict.fromkeys(g for g, _ in rows):
        levels = [n for gg, n in rows if gg == g]
        base = rows[(g, levels[0])]
        for n in levels:
            runs = rows[(g, n)]
            keys = (
                "origin_rps",
                "origin_parts_per_s",
                "node_cpu_pct",
                "viewer_parts_per_s",
                "clients_cpu_pct",
            )
            med = {k: statistics.median(r[k] for r in runs) for k in keys}
            per_request = [r["clients_cpu_us_per_request"] for r in runs if r["clients_cpu_us_per_request"]]
            ratio = {
                f"{k}_vs_base": round(
                    statistics.median(r[k] / max(b[k], 1e-9) for r, b in zip(runs, base, strict=True)), 2
                )
                for k in ("origin_rps", "node_cpu_pct")
            }
            summary.append(
                {
                    "generator": g,
                    "viewers": n,
                    "base": levels[0],
                    **med,
                    "clients_cpu_us_per_request": statistics.median(per_request) if per_request else None,
                    "cpu_pct_by": {
                        k: statistics.median(r["cpu_pct_by"][k] for r in runs) for k in runs[0]["cpu_pct_by"]
                    },
                    **ratio,
                    "missing_hints": sum(r["missing_hints"] for r in runs),
                    "errors": sum(r["errors"] for r in runs),
                    **browsers_summary([r["browsers"] for r in runs if "browsers" in r]),
                }
            )
    print(json.dumps({"summary": summary}))
    real = any("browser_frames_pct_worst" in s for s in summary)
    extra = (
        " browsers' frames % presented / received (worst) | waiting / stalled s / restarts | page latency p50 s |"
        if real
        else ""
    )
    print(
        "\n| generator | viewers | origin req/s | origin parts/s | node CPU % | parts/s per viewer | clients CPU % "
        f"| clients µs/request | origin vs first level | CPU vs first level |{extra}"
    )
    print("|---|---|---|---|---|---|---|---|---|---|" + ("---|---|---|" if real else ""))
    for s in summary:
        line = (
            f"| {s['generator']} | {s['viewers']} | {s['origin_rps']} | {s['origin_parts_per_s']} | {s['node_cpu_pct']} "
            f"| {s['viewer_parts_per_s']} | {s['clients_cpu_pct']} | {s['clients_cpu_us_per_request']} "
            f"| {s['origin_rps_vs_base']} | {s['node_cpu_pct_vs_base']} |"
        )
        if "browser_frames_pct_worst" in s:
            latency = s["browser_latency_p50_ms"]
            line += (
                f" {s['browser_frames_pct_worst']} / {s['browser_decoded_pct_worst']} | {s['browser_waiting']} / {s['browser_stalled_ms'] / 1000:.1f}"
                f" / {s['browser_restarts']} | {'-' if latency is None else f'{latency / 1000:.2f}'} |"
            )
        print(line)
    print("\nCPU by process group, % of one core (medians; machine = all processes, other people's too):\n")
    print("| generator | viewers | node | nginx | sim. viewer workers | bench process | browsers | machine |")
    print("|---|---|---|---|---|---|---|---|")
    for s in summary:
        c = s["cpu_pct_by"]
        print(
            f"| {s['generator']} | {s['viewers']} | {c['node']} | {c['nginx']} | {c['workers']} | {c['bench']} "
            f"| {c['browsers']} | {c['machine']} |"
        )


def browsers_summary(runs: list[list[dict[str, Any]]]) -> dict[str, Any]:
    """The real viewers of one level over all runs: the worst page's frames (median over runs),
    every stall counted, the median of the pages' latency medians."""
    if not runs:
        return {}
    pages = [b for run in runs for b in run]
    latencies = [b["latency_p50_ms"] for b in pages if b["latency_p50_ms"] is not None]
    return {
        "browser_frames_pct_worst": statistics.median(min(b["frames_pct"] or 0 for b in run) for run in runs),
        "browser_decoded_pct_worst": statistics.median(
            min(b["decoded_pct"] or 0 for b in run) for run in runs
        ),
        "browser_dropped": sum(b["dropped"] for b in pages),
        "browser_waiting": sum(b["waiting"] for b in pages),
        "browser_stalled_ms": sum(b["stalled_ms"] for b in pages),
        "browser_buffer_stalls": sum(b["buffer_stalls"] for b in pages),
        "browser_restarts": sum(b["restarts"] for b in pages),
        "browser_latency_p50_ms": round(statistics.median(latencies)) if latencies else None,
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--levels", type=int, nargs="+", default=[10, 100, 1000])
    parser.add_argument("--runs", type=int, default=3)
    parser.add_argument("--warmup", type=float, default=4.0)
    parser.add_argument("--seconds", type=float, default=10.0)
    parser.add_argument("--browsers", type=int, default=0, help="real Chromium viewers through the cache")
    parser.add_argument(
        "--generators",
        nargs="+",
        choices=("raw", "aiohttp"),
        default=["raw"],
        help="the simulated viewers' HTTP client; several: each level once per generator, interleaved",
    )
    parser.add_argument("--procs", type=int, default=2, help="worker processes of the raw generator")
    args = parser.parse_args()
    raise_nofile()
    rows: Rows = {(g, n): [] for n in args.levels for g in args.generators}
    rows = {k: rows[k] for k in sorted(rows, key=lambda k: args.generators.index(k[0]))}
    for run in range(args.runs):
        records = asyncio.run(
            run_once(
                args.levels, args.warmup, args.seconds, args.browsers, tuple(args.generators), args.procs
            )
        )
        for row in records:
            print(json.dumps({"run": run, **row}), flush=True)
            rows[(row["generator"], row["viewers"])].append(row)
    report(rows)


if __name__ == "__main__":
    main()
