"""Third-party encoders for the interop tests: FFmpeg (bundled with PyAV) publishing a test pattern.

FFmpeg's own `whip` muxer and its RTMP client are independent implementations of WHIP and
RTMP (not ours, not aiortc): what OBS and hardware encoders do. Each runs in its own process, paced
at real time like a camera, with libx264 baseline, zerolatency, no B-frames, a keyframe every
second, and Opus (WHIP) or AAC (RTMP) audio: the settings docs/PROTOCOL.md recommends.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import os
import subprocess
import sys
import time
from dataclasses import dataclass, field
from fractions import Fraction
from pathlib import Path
from typing import Any

import av

from server.deadline import within

FPS = 30
SAMPLE_RATE = 48000


def pattern_frame(width: int, height: int, count: int) -> av.VideoFrame:
    """A moving bar (every frame differs); the frame number is in the top-left 8 luma rows."""
    frame = av.VideoFrame(width, height, "yuv420p")
    luma = frame.planes[0]
    band = max(1, height // 12)
    shift = (count * 4) % height
    bright, dark = bytes([235]) * luma.line_size, bytes([16]) * luma.line_size
    luma.update(b"".join(bright if (y + shift) % (3 * band) < band else dark for y in range(height)))
    for chroma in frame.planes[1:]:
        chroma.update(bytes([128]) * chroma.buffer_size)
    return frame


def publish(url: str, fmt: str, options: dict[str, str], width: int, height: int, seconds: float) -> None:
    """Encode and send the pattern until `seconds` pass (or the process is stopped)."""
    out = av.open(url, mode="w", format=fmt, options=options)
    try:
        video = out.add_stream("libx264", rate=FPS)
        video.width, video.height, video.pix_fmt = width, height, "yuv420p"
        video.codec_context.options = {
            "profile": "baseline",
            "tune": "zerolatency",
            "preset": "ultrafast",
            "bf": "0",
            "g": str(FPS),
            "keyint_min": str(FPS),
        }
        audio_codec = "libopus" if fmt == "whip" else "aac"
        audio = out.add_stream(audio_codec, rate=SAMPLE_RATE)
        audio.layout = "stereo"
        samples = 960 if audio_codec == "libopus" else 1024
        start = time.monotonic()
        audio_pts = count = 0
        while time.monotonic() - start < seconds:
            delay = start + count / FPS - time.monotonic()
            if delay > 0:
                time.sleep(delay)  # a live source: one frame per 1/FPS, never faster
            frame = pattern_frame(width, height, count)
            frame.pts, frame.time_base = count, Fraction(1, FPS)
            for packet in video.encode(frame):
                out.mux(packet)
            while audio_pts < (count + 1) * SAMPLE_RATE // FPS:
                sound = av.AudioFrame(format="fltp", layout="stereo", samples=samples)
                for plane in sound.planes:
                    plane.update(bytes(plane.buffer_size))
                sound.sample_rate, sound.pts = SAMPLE_RATE, audio_pts
                sound.time_base = Fraction(1, SAMPLE_RATE)
                audio_pts += samples
                for packet in audio.encode(sound):
                    out.mux(packet)
            if count == 0:
                print("sending", flush=True)  # the header (WHIP POST, RTMP publish) went through
            count += 1
    finally:
        with contextlib.suppress(Exception):
            out.close()


@dataclass
class Encoder:
    """FFmpeg in its own process (PyAV holds the GIL while the muxer's header is written, and
    a real encoder is another process anyway); `stop()` ends it."""

    url: str
    format: str  # "whip" or "flv"
    options: dict[str, str] = field(default_factory=dict)
    width: int = 320
    height: int = 240
    seconds: float = 120.0  # bounded: stops by itself
    proc: subprocess.Popen[str] | None = None

    def start(self) -> Encoder:
        args = [sys.executable, "-m", "tests.media.encoders", self.url, self.format, json.dumps(self.options)]
        args += [str(self.width), str(self.height), str(self.seconds)]
        root = Path(__file__).resolve().parents[2]
        self.proc = subprocess.Popen(
            args, cwd=root, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True
        )
        return self

    async def sending(self, timeout: float) -> None:
        """Wait until the encoder sent its first frame; raise with its stderr if it failed."""
        assert self.proc is not None and self.proc.stdout is not None
        line = await within(asyncio.to_thread(self.proc.stdout.readline), timeout)
        if line.strip() != "sending":
            self.proc.wait(10)
            raise RuntimeError(f"encoder failed: {self.proc.stderr.read() if self.proc.stderr else ''}")

    def stop(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(10)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()


def whip_encoder(base_url: str, room: str, token: str, **kw: Any) -> Encoder:
    """FFmpeg's `whip` muxer publishing to POST {base_url}/whip/{room} with a bearer token."""
    return Encoder(
        f"{base_url}/whip/{room}", "whip", {"authorization": token, "whip_flags": "dtls_active"}, **kw
    )


def rtmp_encoder(port: int, room: str, token: str, **kw: Any) -> Encoder:
    """FFmpeg's RTMP client publishing rtmp://127.0.0.1:{port}/live/{room}?token=... (FLV)."""
    return Encoder(f"rtmp://127.0.0.1:{port}/live/{room}?token={token}", "flv", {}, **kw)


def rtmp_key_encoder(port: int, token: str, **kw: Any) -> Encoder:
    """OBS's way: server rtmp://127.0.0.1:{port}/live, stream key = the host token."""
    return Encoder(f"rtmp://127.0.0.1:{port}/live/{token}", "flv", {}, **kw)


if __name__ == "__main__":
    url, fmt, options, width, height, seconds = sys.argv[1:7]
    if os.environ.get("ENCODER_VERBOSE"):  # FFmpeg's own log lines on stderr (debugging)
        logging.basicConfig(level=logging.DEBUG)
        av.logging.set_level(av.logging.VERBOSE)
    publish(url, fmt, json.loads(options), int(width), int(height), float(seconds))
