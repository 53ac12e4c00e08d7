"""Time to first picture on the viewer page, in real headless Chromium, from navigation start.

Starts `python -m server serve --demo` (the Python host streams a test pattern into room
`demo`), warms up with one page load that waits for video, then opens the viewer page in
`--loads` fresh browser contexts one after the other. Each load is measured by the page's
own clock origin (`performance.timeOrigin`, i.e. navigation start), independently of what
the page reports: an init script records DOMContentLoaded, the token response, the first
WebSocket message, the RTCPeerConnection's creation, its first track, ICE connected and the
first `requestVideoFrameCallback`, then reads the video receiver's counters (frames, keyframes,
lost packets, NACKs, PLIs: a load that needed a repair is counted as such). Prints one JSON
line per load, a JSON summary (p50/p95/max of every step) and a Markdown table.

    python -m load_tests.bench_first_frame --loads 20
    python -m load_tests.bench_first_frame --loads 20 --server-dir /tmp/base   # another revision
    python -m load_tests.bench_first_frame --loads 20 --url http://127.0.0.1:8081/room/demo  # your nodes
    python -m load_tests.bench_first_frame --loads 20 --background-rate 200   # a fixed load beside

`--codec VP8|H264` measures a room of that codec instead of the demo room: the server starts
without `--demo`, and the Python host (`python -m client_demo.host --codec ...`, the same
640x360 30 fps pattern and tone as the demo host) publishes into `--room` (default
`bench-<codec>`), so the first picture of an H.264 room and of a VP8 room are measured alike.

    python -m load_tests.bench_first_frame --loads 20 --codec H264
    python -m load_tests.bench_first_frame --loads 20 --codec VP8
    python -m load_tests.bench_first_frame --loads 20 --codec H264 --ingest rtmp   # FFmpeg over RTMP

`--ingest rtmp` publishes with FFmpeg's RTMP client instead (tests/media/encoders.py: libx264
baseline zerolatency, a keyframe every second, AAC; a publish key from POST /rtmp/<room>/key),
into a node started with `--rtmp-port` (needs nginx and libnginx-mod-rtmp).

`--background-rate R` runs the same loads beside a fixed background load, so a loaded machine
is measured the same way every time: a generator process keeps `--background-conns` dev
viewers in room `background` of the same server, together sending R danmaku/s (each within
the per-connection limits; the started server lifts only the per-IP danmaku and join budgets,
since every generator connection comes from 127.0.0.1) and reading every batch.

Loopback only; needs Playwright and Chromium (the dev extra, scripts/test.sh).
"""

from __future__ import annotations

import argparse
import asyncio
import json
import math
import multiprocessing
import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

from load_tests.bench import percentiles, raise_nofile
from tests.ports import free_port

BACKGROUND_ROOM = "background"
# what the started server relaxes for a background load: all its connections share one IP
BACKGROUND_SERVER_ENV = {"LIVEROOM_RATE_LIMITS": "danmaku.ip=0,join.ip=0", "LIVEROOM_MAX_CONNS_PER_IP": "0"}

# the headless Chromium flags of this machine (see the ground rules); tests/test_browser.py uses them too
CHROMIUM_ARGS = [
    "--no-sandbox",
    "--disable-gpu",
    "--disable-background-networking",
    "--use-fake-device-for-media-stream",
    "--use-fake-ui-for-media-stream",
    "--allow-loopback-in-peer-connection",
    "--disable-features=WebRtcHideLocalIpsWithMdns",
]

# Runs before any page script: hooks that stamp each step with performance.now(), whose
# origin is navigation start, so every figure is "ms since the user asked for the page".
PROBE = """
(() => {
  const OFFER_TAG = [0xa1, 0x74, 0xa5, 0x6f, 0x66, 0x66, 0x65, 0x72].join(",");  // "t", "offer"
  const marks = (window.__ff = {});
  const now = () => performance.now();
  const NativeWS = window.WebSocket;
  window.WebSocket = class extends NativeWS {
    constructor(...a) {
      super(...a);
      if (marks.ws_open_call === undefined) marks.ws_open_call = now();
      this.addEventListener("open", () => { if (marks.ws_open === undefined) marks.ws_open = now(); });
      this.addEventListener("message", (ev) => {
        if (marks.first_ws_message === undefined) marks.first_ws_message = now();
        // the server's media offer arriving (msgpack "t": "offer" leads the frame), before the page reads it
        if (marks.offer_received === undefined && ev.data instanceof ArrayBuffer) {
          const head = Array.from(new Uint8Array(ev.data, 0, Math.min(ev.data.byteLength, 12))).join(",");
          if (head.includes(OFFER_TAG)) marks.offer_received = now();
        }
      });
    }
  };
  const NativePC = window.RTCPeerConnection;
  window.RTCPeerConnection = class extends NativePC {
    constructor(...a) {
      super(...a);
      if (marks.pc_created === undefined) marks.pc_created = now();
      if (!window.__ffpc) window.__ffpc = this;  // the first connection: its stats after the first frame
      this.addEventListener("track", () => { if (marks.track === undefined) marks.track = now(); });
      this.addEventListener("iceconnectionstatechange", () => {
        if (["connected", "completed"].includes(this.iceConnectionState) && marks.ice_connected === undefined)
          marks.ice_connected = now();
      });
    }
  };
  document.addEventListener("DOMContentLoaded", () => (marks.dom_content_loaded = now()));
  const watch = () => {
    const v = document.querySelector("video#video");
    if (!v) return requestAnimationFrame(watch);
    v.requestVideoFrameCallback((t) => (marks.first_frame = t));
  };
  watch();
})();
"""

# The video receiver's counters once the first frame showed: a NACK/PLI or a lost packet, or
# more than one keyframe, means the picture waited on a repair, not on the path itself.
VIDEO_RX = """async () => {
  const pc = window.__ffpc;
  if (!pc) return null;
  for (const r of (await pc.getStats()).values())
    if (r.type === "inbound-rtp" && r.kind === "video")
      return {frames_received: r.framesReceived, frames_decoded: r.framesDecoded,
              key_frames: r.keyFramesDecoded, packets_lost: r.packetsLost, nacks: r.nackCount,
              plis: r.pliCount, firs: r.firCount};
  return null;
}"""

STEPS = [
    "html",
    "token",
    "ws_open_call",
    "dom_content_loaded",
    "ws_open",
    "first_ws_message",
    "offer_received",
    "adopt",
    "offer",
    "pc_created",
    "track",
    "answer",
    "ice_connected",
    "first_frame",
]


def chromium_path() -> str:
    for path in (os.environ.get("LIVEROOM_CHROMIUM"), "/usr/lib/chromium/chromium", "/usr/bin/chromium"):
        if path and Path(path).exists():
            return path
    found = shutil.which("chromium")
    if not found:
        raise SystemExit("chromium not found")
    return found


def start_server(
    server_dir: str | None,
    extra_env: dict[str, str] | None = None,
    demo: bool = True,
    extra_args: tuple[str, ...] = (),
) -> tuple[subprocess.Popen[str], int]:
    env = {**os.environ, **(extra_env or {})}
    cwd = server_dir or str(Path(__file__).resolve().parent.parent)
    env["PYTHONPATH"] = os.pathsep.join(filter(None, [cwd, env.get("PYTHONPATH")]))
    cmd = [sys.executable, "-m", "server", "serve", *(["--demo"] if demo else []), "--port", "0"]
    cmd += ["--http-port", "0", *extra_args]  # a later --http-port wins
    cmd += ["--log-level", "WARNING"]
    proc = subprocess.Popen(
        cmd,
        cwd=cwd,
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.DEVNULL,
        text=True,
        start_new_session=True,
    )
    assert proc.stdout is not None
    line = proc.stdout.readline()
    if "listening on http://127.0.0.1:" not in line:
        proc.kill()
        raise SystemExit(f"server did not start: {line!r}")
    return proc, int(line.split("http://127.0.0.1:")[1].split()[0])


def start_host(server_dir: str | None, port: int, room: str, codec: str) -> subprocess.Popen[str]:
    """The Python host publishing the demo's pattern and tone in `codec` into `room`."""
    cwd = server_dir or str(Path(__file__).resolve().parent.parent)
    env = {**os.environ, "PYTHONPATH": os.pathsep.join(filter(None, [cwd, os.environ.get("PYTHONPATH")]))}
    cmd = [sys.executable, "-m", "client_demo.host", "--server", f"ws://127.0.0.1:{port}", "--room", room]
    cmd += ["--codec", codec, "--stats-interval", "0", "--user", "benchhost", "--name", "Bench host"]
    return subprocess.Popen(
        cmd, cwd=cwd, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, text=True
    )


def start_rtmp_encoder(port: int, http_port: int, rtmp_port: int, room: str) -> Any:
    """FFmpeg's RTMP client (PyAV, its own process: tests/media/encoders.py; libx264 baseline
    zerolatency, keyframe every second, AAC) pushing 640x360 30 fps with a publish key, as OBS."""
    import urllib.request

    from tests.media.encoders import rtmp_key_encoder

    base = f"http://127.0.0.1:{port}/api/dev/token?room={room}&user=benchhost&name=Bench+host&role=host"
    with urllib.request.urlopen(base, timeout=30) as resp:
        token = json.load(resp)["token"]
    request = urllib.request.Request(
        f"http://127.0.0.1:{http_port}/rtmp/{room}/key",
        method="POST",
        headers={"Authorization": f"Bearer {token}"},
    )
    with urllib.request.urlopen(request, timeout=30) as resp:
        key = json.load(resp)["stream_key"]
    encoder = rtmp_key_encoder(rtmp_port, key, width=640, height=360, seconds=3600).start()
    assert encoder.proc is not None and encoder.proc.stdout is not None
    if encoder.proc.stdout.readline().strip() != "sending":
        encoder.stop()
        raise SystemExit("the RTMP encoder did not start")
    return encoder


def stop_server(proc: subprocess.Popen[str]) -> None:
    if proc.poll() is None:
        os.killpg(proc.pid, signal.SIGTERM)  # the server and its demo host (same session)
        try:
            proc.wait(20)
        except subprocess.TimeoutExpired:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait()


async def _background(port: int, rate: float, conns: int, stop: Any, out: Any) -> None:
    """conns dev viewers in BACKGROUND_ROOM sending rate danmaku/s in all, every batch read."""
    import msgpack
    from websockets.asyncio.client import connect

    counts = {"sent": 0, "errors": 0, "frames_in": 0, "closed": 0}
    interval = conns / rate  # seconds between one connection's danmaku

    async def viewer(i: int) -> None:
        url = f"ws://127.0.0.1:{port}/ws?room={BACKGROUND_ROOM}&dev_user=bg{i}&name=bg{i}"
        try:
            async with connect(url, max_size=None, open_timeout=30) as ws:
                reader = asyncio.create_task(read(ws))
                loop = asyncio.get_running_loop()
                due = loop.time() + interval * i / conns  # spread the connections over the interval
                n = 0
                while not stop.is_set() and not reader.done():
                    await asyncio.sleep(max(0.0, due - loop.time()))
                    n += 1
                    await ws.send(msgpack.packb({"t": "danmaku", "text": f"background {i} #{n}", "cid": n}))
                    counts["sent"] += 1
                    due += interval
                reader.cancel()
        except Exception:
            counts["closed"] += 1

    async def read(ws: Any) -> None:
        async for data in ws:
            frame = msgpack.unpackb(data)
            counts["frames_in"] += 1
            if frame.get("t") == "error":
                counts["errors"] += 1

    started = time.monotonic()
    await asyncio.gather(*(viewer(i) for i in range(conns)))
    out.put({**counts, "rate": round(counts["sent"] / max(1e-9, time.monotonic() - started), 1)})


def _background_process(port: int, rate: float, conns: int, stop: Any, out: Any) -> None:
    raise_nofile()
    asyncio.run(_background(port, rate, conns, stop, out))


def one_load(browser: Any, url: str, timeout_ms: int) -> dict[str, Any]:
    context = browser.new_context(viewport={"width": 1280, "height": 720})
    try:
        context.add_init_script(PROBE)
        page = context.new_page()
        page.goto(url, wait_until="commit")
        try:
            page.wait_for_function("window.__ff && window.__ff.first_frame !== undefined", timeout=timeout_ms)
        except Exception as exc:
            exc.page_state = page.evaluate(  # type: ignore[attr-defined]
                """() => ({conn: document.body.dataset.conn, stream: document.body.dataset.stream,
                  offline: document.querySelector('#offline-title')?.textContent,
                  detail: document.querySelector('#offline-sub')?.textContent,
                  marks: window.__ff, negotiations: window.liveroom?.media?.negotiations,
                  pc: window.liveroom?.media?.pc?.connectionState})"""
            )
            raise
        marks = page.evaluate(
            """() => {
              const m = {...window.__ff};
              const tok = performance.getEntriesByType("resource").find((e) => e.name.includes("/api/dev/token"));
              if (tok) m.token = tok.responseEnd;
              const nav = performance.getEntriesByType("navigation")[0];
              m.html = nav.responseEnd;
              for (const e of performance.getEntriesByType("mark"))
                if (e.name.startsWith("liveroom:") && m[e.name.slice(9)] === undefined) m[e.name.slice(9)] = e.startTime;
              const ff = document.querySelector("#first-frame");
              m.page_reported = ff && ff.dataset.ms ? Number(ff.dataset.ms) : null;
              return m;
            }"""
        )
        # The page's own report must agree with the probe (both from navigation start), give or take a frame.
        page.wait_for_function("document.querySelector('#first-frame')?.dataset.ms", timeout=timeout_ms)
        marks["page_reported"] = int(page.evaluate("document.querySelector('#first-frame').dataset.ms"))
        marks["video_rx"] = page.evaluate(VIDEO_RX)
        return {k: round(v, 1) if isinstance(v, float) else v for k, v in marks.items()}
    finally:
        context.close()


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--loads", type=int, default=20, help="fresh browser contexts measured (default 20)")
    ap.add_argument("--url", help="measure this viewer page of servers you started (no server started)")
    ap.add_argument("--server-dir", help="run the server from this source tree (e.g. a git archive)")
    ap.add_argument("--label", default="", help="a name for this run in the output")
    ap.add_argument("--timeout", type=float, default=60.0, help="seconds one load may take")
    ap.add_argument(
        "--background-rate", type=float, default=0, help="danmaku/s into another room meanwhile (0: none)"
    )
    ap.add_argument("--background-conns", type=int, default=100, help="connections of that load (100)")
    ap.add_argument("--codec", choices=("VP8", "H264"), help="a room of this codec instead of the demo room")
    ap.add_argument("--room", help="the room --codec publishes into (default bench-<codec>)")
    ap.add_argument(
        "--ingest",
        choices=("ws", "rtmp"),
        default="ws",
        help="with --codec H264: the Python host over the WebSocket (ws), or FFmpeg over RTMP",
    )
    args = ap.parse_args(argv)
    load_at_start = os.getloadavg()
    if args.codec and args.url:
        ap.error("--codec needs the server this script starts (not --url)")
    if args.ingest == "rtmp" and args.codec != "H264":
        ap.error("--ingest rtmp needs --codec H264 (RTMP carries H.264)")
    if args.background_rate and args.url:
        ap.error("--background-rate needs the server this script starts (not --url)")
    if args.background_rate and not 0 < args.background_rate <= 2 * args.background_conns:
        ap.error("--background-rate: at most 2 danmaku/s per background connection (its limit)")

    from playwright.sync_api import TimeoutError as PlaywrightTimeout
    from playwright.sync_api import sync_playwright

    proc: subprocess.Popen[str] | None = None
    host: subprocess.Popen[str] | None = None
    encoder: Any = None
    if args.url:  # e.g. a node that is not the room's origin: the picture comes through it (cascading)
        url = args.url
    else:
        env = BACKGROUND_SERVER_ENV if args.background_rate else None
        rtmp = (free_port(), free_port()) if args.ingest == "rtmp" else None
        ports = ("--http-port", str(rtmp[0]), "--rtmp-port", str(rtmp[1])) if rtmp else ()
        proc, port = start_server(args.server_dir, env, demo=not args.codec, extra_args=ports)
        room = "demo"
        if args.codec:
            room = args.room or f"bench-{args.codec.lower()}{'-rtmp' if rtmp else ''}"
            if rtmp:
                encoder = start_rtmp_encoder(port, rtmp[0], rtmp[1], room)
            else:
                host = start_host(args.server_dir, port, room, args.codec)
        url = f"http://127.0.0.1:{port}/room/{room}"
    loads: list[dict[str, Any]] = []
    failed: list[dict[str, Any]] = []
    background: multiprocessing.Process | None = None
    ctx = multiprocessing.get_context("spawn")
    stop, results = ctx.Event(), ctx.Queue()
    if args.background_rate:
        background = ctx.Process(
            target=_background_process,
            args=(port, args.background_rate, args.background_conns, stop, results),
            daemon=True,
        )
        background.start()
    try:
        with sync_playwright() as pw:
            browser = pw.chromium.launch(executable_path=chromium_path(), args=CHROMIUM_ARGS)
            deadline = time.monotonic() + 120
            while True:  # warm-up: the demo host must be live (and Chromium's caches of the binary warm)
                try:
                    one_load(browser, url, 30_000)
                    break
                except Exception:
                    if time.monotonic() > deadline:
                        raise
            for i in range(args.loads):
                try:
                    marks = one_load(browser, url, int(args.timeout * 1000))
                except PlaywrightTimeout as exc:  # no picture in time: counted, described, not hidden
                    failed.append({"load": i + 1, "state": getattr(exc, "page_state", None)})
                    print(json.dumps({"label": args.label, "load": i + 1, "failed": failed[-1]}), flush=True)
                    continue
                marks["load"] = i + 1
                print(json.dumps({"label": args.label, **marks}), flush=True)
                loads.append(marks)
            browser.close()
    finally:
        bg_stats: dict[str, Any] | None = None
        if background is not None:
            stop.set()
            try:
                bg_stats = results.get(timeout=30)
            except Exception:
                bg_stats = {"error": "the background generator did not report"}
            background.join(10)
            if background.is_alive():
                background.kill()
        if encoder is not None:
            encoder.stop()
        if host is not None and host.poll() is None:
            host.terminate()
            host.wait(20)
        if proc is not None:
            stop_server(proc)

    summary: dict[str, Any] = {"label": args.label, "loads": len(loads), "failed": len(failed)}
    summary["codec"] = f"{args.codec} over {args.ingest.upper()}" if args.codec else "VP8 (demo room)"
    # the machine is shared: how busy it was (1, 5, 15 min) when the run started and ended
    summary["load_average"] = {"start": load_at_start, "end": os.getloadavg()}
    if args.background_rate:
        summary["background"] = {
            "target_rate": args.background_rate,
            "conns": args.background_conns,
            **(bg_stats or {}),
        }
    for step in [*STEPS, "page_reported"]:
        values = [float(m[step]) for m in loads if m.get(step) is not None]
        p = percentiles(values)
        p95 = sorted(values)[max(0, math.ceil(0.95 * len(values)) - 1)] if values else None
        summary[step] = {"p50": p["p50"], "p95": p95, "max": p["max"]}
    rx = [m["video_rx"] for m in loads if m.get("video_rx")]
    summary["repaired"] = sum(1 for r in rx if r.get("nacks") or r.get("plis") or r.get("packets_lost"))
    print(json.dumps({"summary": summary}), flush=True)
    bg = summary.get("background")
    beside = f", beside {bg.get('rate')} danmaku/s into another room" if bg else ""
    print(
        f"\n| step ({args.label or 'run'}, {summary['codec']}: {len(loads)} loads, {len(failed)} without a"
        f" picture in time{beside}; load average {load_at_start[0]:.1f} -> {os.getloadavg()[0]:.1f};"
        " ms from navigation start) | p50 | p95 | max |"
    )
    print("|---|---|---|---|")
    for step in [*STEPS, "page_reported"]:
        s = summary[step]
        cells = ["-" if s[k] is None else f"{s[k]:.0f}" for k in ("p50", "p95", "max")]
        print(f"| {step} | {' | '.join(cells)} |")
    print(
        f"\nloads whose video receiver lost a packet or sent a NACK/PLI by then: {summary['repaired']} of {len(rx)}"
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
