"""WebRTC media relay benchmark: server CPU per viewer, and time to first frame for a joiner.

Not a test: it measures, prints one JSON line and a markdown table, and asserts nothing.

* CPU per viewer: the server runs in its own process (``python -m server serve``); one WHIP
  publisher sends a 640x480 30 fps ~1 Mbps VP8 stream (pre-encoded once with libvpx, looped,
  keyframe every second, so the publisher costs almost nothing); WHEP viewers are added in
  steps (1, 10, 50) and the server's CPU is read from /proc/PID/stat over a fixed window at
  each step. Viewers do not decode (their receivers are tapped like the server's), so the
  benchmark process stays light enough to leave the server its share of a 2-core machine.
  ``--relay`` runs the same steps against a small aiortc ``MediaRelay`` server (decode once,
  re-encode per viewer) started from this script, for comparison.
* Time to first frame: a live publisher (a real aiortc encoder, which answers PLI with a
  keyframe) publishes over the room WebSocket; 50 viewers join one after the other, each
  timed from sending ``subscribe`` to its first *decoded* frame.

Usage: python load_tests/bench_media.py [--runs 3] [--viewers 1,10,50] [--relay-viewers 1,10]
       [--joins 50] [--window 10] [--quick]
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import fractions
import json
import os
import statistics
import subprocess
import sys
import time
from dataclasses import dataclass, field
from typing import Any

import aiohttp
import av
import msgpack
import numpy as np
from aiortc import (
    RTCConfiguration,
    RTCPeerConnection,
    RTCRtpCodecParameters,
    RTCRtpSender,
    RTCSessionDescription,
    VideoStreamTrack,
)
from aiortc.mediastreams import MediaStreamTrack

from load_tests.bench import stop_process
from server.config import DEFAULT_SECRET
from server.deadline import within
from server.media import use_loopback_candidates
from server.media.forward import EncodedFrame, install_receiver_tap
from server.wire import auth

WIDTH, HEIGHT, FPS, BITRATE = 640, 480, 30, 1_000_000
STEP_TIMEOUT = 120.0  # seconds for a step's viewers to all receive media (bounded run)
ROOM = "bench"


# -- the stream -------------------------------------------------------------------------------


def _pattern(i: int, noise: np.ndarray) -> np.ndarray:
    """A moving gradient with a band of moving noise: ~1 Mbps of real VP8 at 640x480."""
    yy, xx = np.mgrid[0:HEIGHT, 0:WIDTH]
    y = ((xx + yy + i * 6) % 256).astype(np.uint8)
    y[200 : 200 + noise.shape[0]] = np.roll(noise, i * 5, axis=1)
    return y


def encode_clip(seconds: int = 3, codec: str = "VP8") -> list[bytes]:
    """Pre-encode a looping clip (~1.2 Mbps, keyframe every second): libvpx CBR, or for "H264"
    libx264 baseline/zerolatency CBR (Annex B, no B-frames: what a WHIP encoder sends)."""
    ctx = av.CodecContext.create("libx264" if codec == "H264" else "libvpx", "w")
    ctx.width, ctx.height, ctx.pix_fmt = WIDTH, HEIGHT, "yuv420p"
    ctx.bit_rate = BITRATE
    ctx.framerate = fractions.Fraction(FPS, 1)
    ctx.time_base = fractions.Fraction(1, FPS)
    ctx.gop_size = FPS
    if codec == "H264":  # CBR (HRD filler) at libvpx's actual ~1.2 Mbps, so both clips cost the same bytes
        kbps = int(1.2 * BITRATE / 1000)
        ctx.bit_rate = int(1.2 * BITRATE)
        vbv = f"nal-hrd=cbr:vbv-maxrate={kbps}:vbv-bufsize={kbps // 2}"
        ctx.options = {
            "profile": "baseline",
            "tune": "zerolatency",
            "preset": "veryfast",
            "bf": "0",
            "x264-params": vbv,
        }
    else:
        ctx.options = {"deadline": "realtime", "cpu-used": "8", "lag-in-frames": "0", "end-usage": "cbr"}
    noise = np.random.default_rng(1).integers(0, 255, (32, WIDTH), dtype=np.uint8)
    packets: list[bytes] = []
    for i in range(seconds * FPS):
        img = np.full((HEIGHT * 3 // 2, WIDTH), 128, dtype=np.uint8)
        img[:HEIGHT] = _pattern(i, noise)
        frame = av.VideoFrame.from_ndarray(img, format="yuv420p")
        frame.pts = i
        packets += [bytes(p) for p in ctx.encode(frame)]
    packets += [bytes(p) for p in ctx.encode(None)]
    return packets


class ClipTrack(MediaStreamTrack):
    """Plays pre-encoded VP8 or H.264 frames at 30 fps; the sender packs them (no encoding at run time)."""

    kind = "video"

    def __init__(self, clip: list[bytes]) -> None:
        super().__init__()
        self.clip = clip
        self.index = 0
        self.start: float | None = None

    async def recv(self) -> av.Packet:  # type: ignore[override]
        loop = asyncio.get_running_loop()
        if self.start is None:
            self.start = loop.time()
        due = self.start + self.index / FPS
        await asyncio.sleep(max(0.0, due - loop.time()))  # pacing the stream, not waiting for an event
        packet = av.Packet(self.clip[self.index % len(self.clip)])
        packet.pts = self.index * (90000 // FPS)
        packet.time_base = fractions.Fraction(1, 90000)
        self.index += 1
        return packet


class LiveTrack(VideoStreamTrack):
    """Raw frames for aiortc's own encoder: answers PLI with a keyframe, like a camera app."""

    def __init__(self) -> None:
        super().__init__()
        self.count = 0
        self.noise = np.random.default_rng(2).integers(0, 255, (32, WIDTH), dtype=np.uint8)

    async def recv(self) -> av.VideoFrame:
        pts, time_base = await self.next_timestamp()
        img = np.full((HEIGHT * 3 // 2, WIDTH), 128, dtype=np.uint8)
        img[:HEIGHT] = _pattern(self.count, self.noise)
        frame = av.VideoFrame.from_ndarray(img, format="yuv420p")
        frame.pts, frame.time_base = pts, time_base
        self.count += 1
        return frame


# -- servers ----------------------------------------------------------------------------------


@dataclass
class Server:
    proc: subprocess.Popen[str]
    http: str
    ws: str | None = None

    def cpu_seconds(self) -> float:
        with open(f"/proc/{self.proc.pid}/stat") as f:
            fields = f.read().rsplit(")", 1)[1].split()
        return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")  # utime + stime

    def stop(self) -> None:
        stop_process(self.proc)


def start_server(mode: str, extra: tuple[str, ...] = ()) -> Server:
    """The liveroom node (forwarding) or the MediaRelay comparison server, in its own process;
    `extra` are more `serve` flags (e.g. --rtmp-port 0)."""
    env = {**os.environ, "LIVEROOM_RATE_LIMITS": "off", "LIVEROOM_REPEAT_MAX": "0"}
    if mode == "forward":
        cmd = [sys.executable, "-m", "server", "serve", "--port", "0", "--http-port", "0"]
        cmd += ["--media-max-viewers", "1000", "--log-level", "WARNING"]
        cmd += [
            "--media-sessions-per-ip",
            "0",
            "--media-ice-timeout",
            "60",
            *extra,
        ]  # all viewers on 127.0.0.1, a busy CPU
    else:
        cmd = [sys.executable, os.path.abspath(__file__), "--relay-server"]
    proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True, env=env)
    assert proc.stdout is not None
    ws = http = None
    for line in proc.stdout:
        if "listening on http://" in line:
            ws = "ws://" + line.split("http://", 1)[1].split()[0] + "/ws"
        if "on http://" in line and ("WHIP" in line or "relay" in line):
            http = "http://" + line.split("on http://", 1)[1].split()[0]
            break
    if http is None:
        proc.kill()
        raise RuntimeError(f"{mode} server did not start")
    return Server(proc, http, ws)


async def relay_server() -> None:
    """aiortc MediaRelay: decode the publisher once, encode once per viewer (the usual aiortc way)."""
    from aiohttp import web
    from aiortc.contrib.media import MediaRelay

    use_loopback_candidates()
    relay = MediaRelay()
    source: dict[str, MediaStreamTrack] = {}
    pcs: set[RTCPeerConnection] = set()
    got_track = asyncio.Event()

    async def whip(request: web.Request) -> web.Response:
        pc = RTCPeerConnection(RTCConfiguration(iceServers=[]))
        pcs.add(pc)

        @pc.on("track")
        def on_track(track: MediaStreamTrack) -> None:
            source["video"] = track
            got_track.set()

        await pc.setRemoteDescription(RTCSessionDescription(sdp=await request.text(), type="offer"))
        await pc.setLocalDescription(await pc.createAnswer())
        return web.Response(status=201, text=pc.localDescription.sdp, content_type="application/sdp")

    async def whep(request: web.Request) -> web.Response:
        await within(got_track.wait(), STEP_TIMEOUT)
        pc = RTCPeerConnection(RTCConfiguration(iceServers=[]))
        pcs.add(pc)
        await pc.setRemoteDescription(RTCSessionDescription(sdp=await request.text(), type="offer"))
        for transceiver in pc.getTransceivers():
            if transceiver.kind == "video":
                transceiver.sender.replaceTrack(relay.subscribe(source["video"]))
                transceiver.direction = "sendonly"
        await pc.setLocalDescription(await pc.createAnswer())
        return web.Response(status=201, text=pc.localDescription.sdp, content_type="application/sdp")

    app = web.Application()
    app.router.add_post("/whip/{room}", whip)
    app.router.add_post("/whep/{room}", whep)
    runner = web.AppRunner(app, access_log=None)
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", 0)
    await site.start()
    port = site._server.sockets[0].getsockname()[1]  # type: ignore[union-attr]
    print(f"relay on http://127.0.0.1:{port}", flush=True)
    await asyncio.Event().wait()


# -- clients ----------------------------------------------------------------------------------


def token(user: str, role: auth.Role = "viewer") -> str:
    return auth.mint(DEFAULT_SECRET, room=ROOM, user=user, role=role)


@dataclass
class TappedViewer:
    """A WHEP viewer that counts received encoded frames without decoding them."""

    pc: RTCPeerConnection
    frames: int = 0
    bytes: int = 0
    first: asyncio.Event = field(default_factory=asyncio.Event)

    def on_frame(self, frame: EncodedFrame) -> None:
        self.frames += 1
        self.bytes += len(frame.data)
        self.first.set()


async def post_sdp(http: aiohttp.ClientSession, url: str, sdp: str, user: str, role: auth.Role) -> str:
    headers = {"Content-Type": "application/sdp", "Authorization": f"Bearer {token(user, role)}"}
    async with http.post(url, data=sdp, headers=headers) as resp:
        if resp.status != 201:
            raise RuntimeError(f"POST {url}: {resp.status} {await resp.text()}")
        return await resp.text()


def only_codec(kind: str, name: str) -> list[RTCRtpCodecParameters]:
    """aiortc's capabilities for `kind` restricted to one codec (and RTX): an encoder that has only it."""
    caps = RTCRtpSender.getCapabilities(kind).codecs
    return [c for c in caps if c.name.upper() == name.upper() or c.name == "rtx"]


async def whip_publish(
    http: aiohttp.ClientSession, base: str, clip: list[bytes], codec: str = "VP8"
) -> RTCPeerConnection:
    pc = RTCPeerConnection(RTCConfiguration(iceServers=[]))
    pc.addTransceiver(ClipTrack(clip), direction="sendonly").setCodecPreferences(only_codec("video", codec))
    await pc.setLocalDescription(await pc.createOffer())
    answer = await post_sdp(http, f"{base}/whip/{ROOM}", pc.localDescription.sdp, "host", "host")
    await pc.setRemoteDescription(RTCSessionDescription(sdp=answer, type="answer"))
    return pc


async def whep_view(http: aiohttp.ClientSession, base: str, n: int) -> TappedViewer:
    pc = RTCPeerConnection(RTCConfiguration(iceServers=[]))
    viewer = TappedViewer(pc)
    transceiver = pc.addTransceiver("video", direction="recvonly")
    install_receiver_tap(transceiver.receiver, viewer.on_frame, lambda: None)
    await pc.setLocalDescription(await pc.createOffer())
    answer = await post_sdp(http, f"{base}/whep/{ROOM}", pc.localDescription.sdp, f"v{n}", "viewer")
    await pc.setRemoteDescription(RTCSessionDescription(sdp=answer, type="answer"))
    return viewer


async def cpu_run(
    mode: str, steps: list[int], window: float, clip: list[bytes], codec: str = "VP8"
) -> list[dict[str, Any]]:
    """One server process; publisher (of `clip`, in `codec`), then viewers added step by step;
    CPU over `window` at each."""
    server = start_server(mode)
    viewers: list[TappedViewer] = []
    results: list[dict[str, Any]] = []
    publisher: RTCPeerConnection | None = None
    try:
        async with aiohttp.ClientSession() as http:
            publisher = await whip_publish(http, server.http, clip, codec)
            for target in [0, *steps]:
                while len(viewers) < target:
                    batch = min(5, target - len(viewers))
                    viewers += await asyncio.gather(
                        *(whep_view(http, server.http, len(viewers) + i) for i in range(batch))
                    )
                async with asyncio.timeout(STEP_TIMEOUT):
                    await asyncio.gather(*(v.first.wait() for v in viewers))
                count = len(viewers)
                frames0, bytes0 = sum(v.frames for v in viewers), sum(v.bytes for v in viewers)
                cpu0, t0 = server.cpu_seconds(), time.monotonic()
                await asyncio.sleep(window)  # the measurement window
                cpu1, t1 = server.cpu_seconds(), time.monotonic()
                elapsed = t1 - t0
                frames = sum(v.frames for v in viewers) - frames0
                received = sum(v.bytes for v in viewers) - bytes0
                results.append(
                    {
                        "mode": mode,
                        "codec": codec,
                        "viewers": count,
                        "cpu_pct": 100 * (cpu1 - cpu0) / elapsed,
                        "viewer_fps": frames / elapsed / count if count else 0.0,
                        "viewer_mbps": 8 * received / elapsed / count / 1e6 if count else 0.0,
                    }
                )
                print(json.dumps(results[-1]), file=sys.stderr, flush=True)
    finally:
        for v in viewers:
            await v.pc.close()
        if publisher is not None:
            await publisher.close()
        server.stop()
    baseline = results[0]["cpu_pct"]  # publisher only: receiving (and, for relay, nothing decoded yet)
    for r in results:
        r["baseline_cpu_pct"] = baseline
        r["cpu_pct_per_viewer"] = (r["cpu_pct"] - baseline) / r["viewers"] if r["viewers"] else None
    return results[1:]


async def ttff_run(joins: int, codec: str = "VP8") -> list[float]:
    """Seconds from `subscribe` to the first decoded frame, for `joins` sequential viewers
    (the live publisher encodes `codec`)."""
    from websockets.asyncio.client import connect

    server = start_server("forward")
    times: list[float] = []
    try:
        async with connect(f"{server.ws}?token={token('host', 'host')}") as host:
            msgpack.unpackb(await host.recv())
            publisher = RTCPeerConnection(RTCConfiguration(iceServers=[]))
            video = publisher.addTransceiver(LiveTrack(), direction="sendonly")
            video.setCodecPreferences(only_codec("video", codec))
            await publisher.setLocalDescription(await publisher.createOffer())
            await host.send(msgpack.packb({"t": "publish", "sdp": publisher.localDescription.sdp}))
            while (frame := msgpack.unpackb(await within(host.recv(), STEP_TIMEOUT)))["t"] != "answer":
                pass
            await publisher.setRemoteDescription(RTCSessionDescription(sdp=frame["sdp"], type="answer"))
            async with asyncio.timeout(STEP_TIMEOUT):  # joiners' snapshots must say live
                live = False
                while not live:
                    events = msgpack.unpackb(await host.recv()).get("events", ())
                    live = any(e["t"] == "live" and e["on"] for e in events)
            for i in range(joins):
                times.append(await _one_join(server.ws or "", i))
            await publisher.close()
    finally:
        server.stop()
    return times


async def _one_join(ws_url: str, i: int) -> float:
    from websockets.asyncio.client import connect

    async with connect(f"{ws_url}?token={token(f'j{i}')}") as ws:
        snapshot = msgpack.unpackb(await ws.recv())
        assert snapshot["live"], "the publisher is not live"
        pc = RTCPeerConnection(RTCConfiguration(iceServers=[]))
        video: asyncio.Future[MediaStreamTrack] = asyncio.get_running_loop().create_future()
        pc.on("track", lambda t: t.kind == "video" and not video.done() and video.set_result(t))
        try:
            start = time.perf_counter()
            await ws.send(msgpack.packb({"t": "subscribe"}))
            async with asyncio.timeout(STEP_TIMEOUT):
                while (frame := msgpack.unpackb(await ws.recv()))["t"] != "offer":
                    pass
                await pc.setRemoteDescription(RTCSessionDescription(sdp=frame["sdp"], type="offer"))
                await pc.setLocalDescription(await pc.createAnswer())
                await ws.send(msgpack.packb({"t": "answer", "sdp": pc.localDescription.sdp}))
                decoded = await (await video).recv()
            assert isinstance(decoded, av.VideoFrame)
            return time.perf_counter() - start
        finally:
            await pc.close()


# -- report -----------------------------------------------------------------------------------


def _pct(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, max(0, round(q * (len(ordered) - 1))))]


def _median_by_viewers(runs: list[list[dict[str, Any]]]) -> list[dict[str, Any]]:
    out = []
    for step in zip(*runs, strict=True):
        merged = dict(step[0])
        for key in ("cpu_pct", "cpu_pct_per_viewer", "viewer_fps", "viewer_mbps", "baseline_cpu_pct"):
            values = [s[key] for s in step if s[key] is not None]
            merged[key] = statistics.median(values) if values else None
        merged["runs"] = len(step)
        out.append(merged)
    return out


async def main(args: argparse.Namespace) -> None:
    use_loopback_candidates()
    steps = [int(x) for x in args.viewers.split(",")]
    relay_steps = [int(x) for x in args.relay_viewers.split(",")] if args.relay_viewers else []
    clip = encode_clip()
    clip_mbps = 8 * sum(map(len, clip)) / (len(clip) / FPS) / 1e6
    forward = _median_by_viewers(
        [await cpu_run("forward", steps, args.window, clip) for _ in range(args.runs)]
    )
    relay = await cpu_run("relay", relay_steps, args.window, clip) if relay_steps else []
    ttff = await ttff_run(args.joins) if args.joins else []
    result = {
        "bench": "media",
        "stream": {"width": WIDTH, "height": HEIGHT, "fps": FPS, "mbps": round(clip_mbps, 2), "codec": "VP8"},
        "window_s": args.window,
        "cpu_forward": forward,
        "cpu_relay": relay,
        "ttff_ms": {
            "joins": len(ttff),
            "p50": round(1000 * statistics.median(ttff), 1) if ttff else None,
            "p95": round(1000 * _pct(ttff, 0.95), 1) if ttff else None,
            "max": round(1000 * max(ttff), 1) if ttff else None,
        },
        "cores": os.cpu_count(),
    }
    print(json.dumps(result))
    print()
    print("| mode | viewers | server CPU (% of a core) | per viewer (%) | viewer fps | viewer Mbps |")
    print("|---|---|---|---|---|---|")
    for r in [*forward, *relay]:
        per = f"{r['cpu_pct_per_viewer']:.2f}" if r["cpu_pct_per_viewer"] is not None else "-"
        print(
            f"| {r['mode']} | {r['viewers']} | {r['cpu_pct']:.1f} | {per} | "
            f"{r['viewer_fps']:.1f} | {r['viewer_mbps']:.2f} |"
        )
    if ttff:
        t = result["ttff_ms"]
        print(f"\ntime to first decoded frame over {t['joins']} joins: p50 {t['p50']} ms, p95 {t['p95']} ms")


def parse_args() -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--runs", type=int, default=3, help="forwarding runs (median reported)")
    parser.add_argument("--viewers", default="1,10,50", help="viewer steps")
    parser.add_argument("--relay-viewers", default="1,10", help="MediaRelay steps ('' to skip)")
    parser.add_argument("--joins", type=int, default=50, help="joins timed for first frame (0 to skip)")
    parser.add_argument("--window", type=float, default=10.0, help="seconds of CPU measurement per step")
    parser.add_argument("--quick", action="store_true", help="1 run, steps 1,5, relay 1, 10 joins, 3 s")
    parser.add_argument("--relay-server", action="store_true", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.quick:
        args.runs, args.viewers, args.relay_viewers, args.joins, args.window = 1, "1,5", "1", 10, 3.0
    return args


if __name__ == "__main__":
    arguments = parse_args()
    with contextlib.suppress(KeyboardInterrupt):
        asyncio.run(relay_server() if arguments.relay_server else main(arguments))
