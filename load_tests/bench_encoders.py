"""Encoder benchmark (#26): what H.264 and RTMP ingest cost a node, against VP8 and WHIP.

Not a test: it measures, prints JSON lines and a Markdown table, and asserts nothing. Loopback
only; every run is bounded (fixed windows, step timeouts). Three measurements, each repeated
`--runs` times with the two sides alternating in the same session (medians and ratios reported):

1. **CPU per viewer, H.264 vs VP8**: load_tests/bench_media.py's forwarding run (its own server
   process, one WHIP publisher of a pre-encoded 640x480 30 fps ~1 Mbps clip, tapped WHEP viewers
   that do not decode, server CPU from /proc over a fixed window) with the clip encoded by
   libx264 (baseline, zerolatency) or libvpx; per viewer = (CPU at N - CPU at 0) / N.
2. **First picture, H.264 vs VP8 room**: bench_media's join timing (a live aiortc publisher over
   the room WebSocket encoding the codec; each joiner timed from `subscribe` to its first
   *decoded* frame).
3. **RTMP ingest**: a node with `--rtmp-port 0`; a stamped test pattern (640x360 30 fps; the
   wall clock in ms written as 32 black/white 16x16 blocks in the top rows) is published
   either by FFmpeg's RTMP client (PyAV, its own process, libx264 + AAC: tests/media/encoders.py)
   or by an aiortc WHIP publisher (H.264); one aiortc WHEP viewer decodes every frame and reads
   the stamp: latency = decode time - stamp (glass to glass minus a display, both ends on this
   machine's clock). CPU of the node's process tree (the node, with its RTMP pull thread, and
   nginx-rtmp's master and worker) over a window idle, then live with that viewer: per room =
   live - idle.

Usage: python -m load_tests.bench_encoders [--runs 3] [--viewers 1,10] [--joins 10]
       [--window 5] [--latency-window 10] [--quick]
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import os
import statistics
import sys
import time
from pathlib import Path
from typing import Any

import aiohttp
import av
from aiortc import RTCConfiguration, RTCPeerConnection, RTCSessionDescription, VideoStreamTrack
from aiortc.mediastreams import MediaStreamTrack

from load_tests import bench_media
from load_tests.bench_media import ROOM, STEP_TIMEOUT, Server, only_codec, post_sdp, token
from server.media import use_loopback_candidates

CODECS = ("VP8", "H264")
PATHS = ("whip", "rtmp")
LAT_W, LAT_H = 640, 360
BITS, BLOCK = 32, 16  # the stamp: 32 blocks of 16x16 luma in the top rows (640 px wide holds 40)
ROOT = Path(__file__).resolve().parent.parent


# -- the stamped pattern ----------------------------------------------------------------------


def now_ms() -> int:
    return int(time.time() * 1000) & 0xFFFFFFFF


def stamped(frame: av.VideoFrame, ms: int) -> av.VideoFrame:
    """`frame` with `ms` written as black/white blocks (survive any sane encoder's quantizer)."""
    img = frame.to_ndarray()
    for bit in range(BITS):
        img[:BLOCK, bit * BLOCK : (bit + 1) * BLOCK] = 235 if ms >> bit & 1 else 16
    return av.VideoFrame.from_ndarray(img, format="yuv420p")


def read_stamp(frame: av.VideoFrame) -> int:
    """The ms a decoded frame was stamped with (the middle of each block, so edges do not count)."""
    luma = frame.to_ndarray(format="yuv420p")[:BLOCK]
    ms = 0
    for bit in range(BITS):
        if luma[4:12, bit * BLOCK + 4 : bit * BLOCK + 12].mean() > 128:
            ms |= 1 << bit
    return ms


class StampedTrack(VideoStreamTrack):
    """aiortc's publisher side: the encoders' pattern, stamped when the frame is made."""

    def __init__(self) -> None:
        super().__init__()
        self.count = 0

    async def recv(self) -> av.VideoFrame:
        from tests.media.encoders import pattern_frame

        pts, time_base = await self.next_timestamp()
        frame = stamped(pattern_frame(LAT_W, LAT_H, self.count), now_ms())
        frame.pts, frame.time_base = pts, time_base
        self.count += 1
        return frame


def rtmp_encoder_main(url: str, seconds: float) -> None:
    """FFmpeg's RTMP client (tests/media/encoders.py's publisher), its pattern stamped at creation."""
    from tests.media import encoders

    plain = encoders.pattern_frame
    encoders.pattern_frame = lambda w, h, count: stamped(plain(w, h, count), now_ms())
    encoders.publish(url, "flv", {}, LAT_W, LAT_H, seconds)


# -- the node's process tree ------------------------------------------------------------------


def tree_cpu_seconds(root: int) -> float:
    """utime + stime of `root` and its descendants (the node, nginx's master and worker)."""
    parents: dict[int, int] = {}
    times: dict[int, float] = {}
    for entry in os.scandir("/proc"):
        if not entry.name.isdigit():
            continue
        with contextlib.suppress(OSError):
            with open(f"/proc/{entry.name}/stat") as f:
                fields = f.read().rsplit(")", 1)[1].split()
            pid = int(entry.name)
            parents[pid] = int(fields[1])
            times[pid] = (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")
    members = {root}
    grew = True
    while grew:
        more = {pid for pid, ppid in parents.items() if ppid in members} - members
        members |= more
        grew = bool(more)
    return sum(times.get(pid, 0.0) for pid in members)


async def window_cpu(server: Server, seconds: float) -> float:
    """% of one core the node's tree used over `seconds`."""
    cpu0, t0 = tree_cpu_seconds(server.proc.pid), time.monotonic()
    await asyncio.sleep(seconds)  # the measurement window
    return 100 * (tree_cpu_seconds(server.proc.pid) - cpu0) / (time.monotonic() - t0)


# -- 3. RTMP ingest: latency and CPU ------------------------------------------------------------


async def stamped_viewer(
    http: aiohttp.ClientSession, base: str, samples: list[float], first: asyncio.Event
) -> RTCPeerConnection:
    """A WHEP viewer that decodes every frame and appends (now - stamp) ms to `samples`."""
    pc = RTCPeerConnection(RTCConfiguration(iceServers=[]))

    async def consume(track: MediaStreamTrack) -> None:
        with contextlib.suppress(Exception):  # the track ends when the run closes the peer
            while True:
                frame = await track.recv()
                age = (now_ms() - read_stamp(frame)) & 0xFFFFFFFF
                if age < 60_000:  # a misread stamp (a corrupt frame) is not a latency
                    samples.append(float(age))
                first.set()

    tasks: set[asyncio.Task[None]] = set()
    pc.on("track", lambda t: t.kind == "video" and tasks.add(asyncio.ensure_future(consume(t))))
    pc.addTransceiver("video", direction="recvonly")
    await pc.setLocalDescription(await pc.createOffer())
    answer = await post_sdp(http, f"{base}/whep/{ROOM}", pc.localDescription.sdp, "lat", "viewer")
    await pc.setRemoteDescription(RTCSessionDescription(sdp=answer, type="answer"))
    return pc


async def ingest_run(path: str, idle_window: float, window: float) -> dict[str, Any]:
    """One node with RTMP on; idle CPU, then one stamped publisher over `path` and one viewer."""
    server = bench_media.start_server("forward", ("--rtmp-port", "0"))
    encoder: asyncio.subprocess.Process | None = None
    publisher: RTCPeerConnection | None = None
    viewer: RTCPeerConnection | None = None
    try:
        rtmp_port = _rtmp_port(server)
        idle = await window_cpu(server, idle_window)
        async with aiohttp.ClientSession() as http:
            if path == "rtmp":
                url = f"rtmp://127.0.0.1:{rtmp_port}/live/{ROOM}?token={token('host', 'host')}"
                encoder = await asyncio.create_subprocess_exec(
                    sys.executable, "-m", "load_tests.bench_encoders", "--rtmp-encoder", url,
                    "--seconds", str(STEP_TIMEOUT + idle_window + window),
                    cwd=ROOT, stdout=asyncio.subprocess.DEVNULL, stderr=asyncio.subprocess.DEVNULL,
                )  # fmt: skip
            else:
                publisher = RTCPeerConnection(RTCConfiguration(iceServers=[]))
                video = publisher.addTransceiver(StampedTrack(), direction="sendonly")
                video.setCodecPreferences(only_codec("video", "H264"))
                await publisher.setLocalDescription(await publisher.createOffer())
                sdp = publisher.localDescription.sdp
                answer = await post_sdp(http, f"{server.http}/whip/{ROOM}", sdp, "host", "host")
                await publisher.setRemoteDescription(RTCSessionDescription(sdp=answer, type="answer"))
            samples: list[float] = []
            first = asyncio.Event()
            async with asyncio.timeout(STEP_TIMEOUT):
                while viewer is None:  # RTMP: the room is live once nginx called the node back
                    try:
                        viewer = await stamped_viewer(http, server.http, samples, first)
                    except RuntimeError:  # 409: not live yet
                        await asyncio.sleep(0.2)  # polling the room's state, bounded by the timeout
                await first.wait()
            await asyncio.sleep(1.0)  # the viewer's jitter buffer settles after the first keyframe
            samples.clear()
            live = await window_cpu(server, window)
            got = list(samples)
    finally:
        if viewer is not None:
            await viewer.close()
        if publisher is not None:
            await publisher.close()
        if encoder is not None and encoder.returncode is None:
            encoder.terminate()
            await encoder.wait()
        server.stop()
    return {
        "path": path,
        "idle_cpu_pct": idle,
        "live_cpu_pct": live,
        "room_cpu_pct": live - idle,
        "frames": len(got),
        "fps": len(got) / window,
        "latency_ms_p50": statistics.median(got) if got else None,
        "latency_ms_p95": _pct(got, 0.95) if got else None,
    }


def _rtmp_port(server: Server) -> int:
    """bench_media's start_server stops reading at the WHIP line; the RTMP line follows it."""
    assert server.proc.stdout is not None
    line = server.proc.stdout.readline()
    if "RTMP ingest on rtmp://" not in line:
        raise RuntimeError(f"the node did not start RTMP ingest: {line!r}")
    return int(line.split("rtmp://", 1)[1].split("/", 1)[0].rsplit(":", 1)[1])


# -- report -------------------------------------------------------------------------------------


def _pct(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, max(0, round(q * (len(ordered) - 1))))]


def _median(values: list[float | None]) -> float | None:
    present = [v for v in values if v is not None]
    return statistics.median(present) if present else None


def _ratio(a: float | None, b: float | None) -> float | None:
    return round(a / b, 2) if a is not None and b else None


async def main(args: argparse.Namespace) -> None:
    use_loopback_candidates()
    steps = [int(x) for x in args.viewers.split(",")]
    clips = {codec: bench_media.encode_clip(codec=codec) for codec in CODECS}
    cpu: dict[str, list[list[dict[str, Any]]]] = {c: [] for c in CODECS}
    ttff: dict[str, list[float]] = {c: [] for c in CODECS}
    ingest: dict[str, list[dict[str, Any]]] = {p: [] for p in PATHS}
    for run in range(args.runs):
        order = CODECS if run % 2 == 0 else CODECS[::-1]  # alternate, so a drift in load is shared
        for codec in order:
            cpu[codec].append(await bench_media.cpu_run("forward", steps, args.window, clips[codec], codec))
        for codec in order if args.joins else ():
            times = await bench_media.ttff_run(args.joins, codec)
            ttff[codec].append(1000 * statistics.median(times))
            print(json.dumps({"run": run, "codec": codec, "ttff_ms_p50": ttff[codec][-1]}), flush=True)
        for path in (PATHS if run % 2 == 0 else PATHS[::-1]) if args.latency_window else ():
            ingest[path].append(await ingest_run(path, args.window, args.latency_window))
            print(json.dumps({"run": run, **ingest[path][-1]}), flush=True)

    per_viewer = {
        codec: {
            str(n): _median([r[i]["cpu_pct_per_viewer"] for r in cpu[codec]]) for i, n in enumerate(steps)
        }
        for codec in CODECS
    }
    summary: dict[str, Any] = {
        "bench": "encoders",
        "runs": args.runs,
        "window_s": args.window,
        "cores": os.cpu_count(),
        "clip_mbps": {
            c: round(8 * sum(map(len, clips[c])) / (len(clips[c]) / bench_media.FPS) / 1e6, 2) for c in CODECS
        },
        "cpu_pct_per_viewer": per_viewer,
        "cpu_pct_per_viewer_runs": {
            c: [[s["cpu_pct_per_viewer"] for s in r] for r in cpu[c]] for c in CODECS
        },
        "baseline_cpu_pct": {c: _median([r[0]["baseline_cpu_pct"] for r in cpu[c]]) for c in CODECS},
        "viewer_fps": {c: _median([s["viewer_fps"] for r in cpu[c] for s in r]) for c in CODECS},
        "ttff_ms_p50": {c: _median(ttff[c]) for c in CODECS},
        "ttff_ms_runs": ttff,
        "ingest": {
            p: {
                k: _median([r[k] for r in ingest[p]])
                for k in ("idle_cpu_pct", "room_cpu_pct", "fps", "latency_ms_p50", "latency_ms_p95")
            }
            for p in PATHS
        },
    }
    summary["ratios"] = {
        "cpu_per_viewer_h264_over_vp8": {
            n: _ratio(per_viewer["H264"][n], per_viewer["VP8"][n]) for n in per_viewer["VP8"]
        },
        "ttff_h264_over_vp8": _ratio(summary["ttff_ms_p50"]["H264"], summary["ttff_ms_p50"]["VP8"]),
        "room_cpu_rtmp_over_whip": _ratio(
            summary["ingest"]["rtmp"]["room_cpu_pct"], summary["ingest"]["whip"]["room_cpu_pct"]
        ),
    }
    rtmp, whip = summary["ingest"]["rtmp"]["latency_ms_p50"], summary["ingest"]["whip"]["latency_ms_p50"]
    summary["ingest_added_latency_ms"] = rtmp - whip if rtmp is not None and whip is not None else None
    print(json.dumps(summary), flush=True)
    _table(summary, steps)


def _table(s: dict[str, Any], steps: list[int]) -> None:
    def f(v: float | None, digits: int = 2) -> str:
        return "-" if v is None else f"{v:.{digits}f}"

    print(f"\n| measure (median of {s['runs']} runs) | VP8 / WHIP | H.264 / RTMP | ratio |")
    print("|---|---|---|---|")
    for n in map(str, steps):
        vp8, h264 = s["cpu_pct_per_viewer"]["VP8"][n], s["cpu_pct_per_viewer"]["H264"][n]
        ratio = s["ratios"]["cpu_per_viewer_h264_over_vp8"][n]
        print(f"| node CPU per viewer at {n} viewers (% of a core) | {f(vp8)} | {f(h264)} | {f(ratio)} |")
    t = s["ttff_ms_p50"]
    print(
        f"| first decoded frame, aiortc joiner (ms, p50) | {f(t['VP8'], 0)} | {f(t['H264'], 0)} | {f(s['ratios']['ttff_h264_over_vp8'])} |"
    )
    w, r = s["ingest"]["whip"], s["ingest"]["rtmp"]
    print(
        f"| H.264 room: node tree CPU, live - idle (% of a core) | {f(w['room_cpu_pct'], 1)} | {f(r['room_cpu_pct'], 1)} | {f(s['ratios']['room_cpu_rtmp_over_whip'])} |"
    )
    print(
        f"| H.264 room: stamp to decoded frame (ms, p50) | {f(w['latency_ms_p50'], 0)} | {f(r['latency_ms_p50'], 0)} | +{f(s['ingest_added_latency_ms'], 0)} ms |"
    )
    print(
        f"| H.264 room: stamp to decoded frame (ms, p95) | {f(w['latency_ms_p95'], 0)} | {f(r['latency_ms_p95'], 0)} | |"
    )
    print(f"| H.264 room: frames decoded per s | {f(w['fps'], 1)} | {f(r['fps'], 1)} | |")


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument(
        "--runs", type=int, default=3, help="repetitions, sides alternating (median reported)"
    )
    parser.add_argument("--viewers", default="1,10", help="viewer steps of the CPU run")
    parser.add_argument("--joins", type=int, default=10, help="joins timed per codec per run (0 to skip)")
    parser.add_argument("--window", type=float, default=5.0, help="seconds of each CPU window")
    parser.add_argument(
        "--latency-window", type=float, default=10.0, help="seconds of RTMP/WHIP stamps (0 to skip)"
    )
    parser.add_argument("--quick", action="store_true", help="1 run, 1 viewer, 2 joins, 2 s windows")
    parser.add_argument("--rtmp-encoder", help=argparse.SUPPRESS)  # the FFmpeg process of measurement 3
    parser.add_argument("--seconds", type=float, default=60.0, help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.quick:
        args.runs, args.viewers, args.joins, args.window, args.latency_window = 1, "1", 2, 2.0, 2.0
    if not 1 <= args.runs <= 20 or args.window <= 0 or args.window > 60 or args.latency_window > 60:
        parser.error("--runs 1..20, windows up to 60 s (a bounded run on a shared machine)")
    return args


if __name__ == "__main__":
    arguments = parse_args()
    if arguments.rtmp_encoder:
        rtmp_encoder_main(arguments.rtmp_encoder, min(arguments.seconds, 600.0))
    else:
        with contextlib.suppress(KeyboardInterrupt):
            asyncio.run(main(arguments))
