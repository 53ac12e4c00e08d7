"""CPU per room of the LL-HLS output: VP8 transcode (libx264) vs H.264 remux, Opus -> AAC in both.

What one room's HLS costs the node that holds its media, whatever its audience (the playlist
and files are served from memory; a CDN carries the viewers). A pattern is encoded once per
codec (`--width`x`--height`, `--fps`, `--seconds`), then fed through
`server.media.hls.segmenter.Segmenter` as fast as it goes; CPU seconds (process time) per
second of media is the fraction of one core a live room takes. `--runs` repeats, medians are
reported, with the transcode/remux ratio. Prints one JSON line per run, a JSON summary and a
Markdown table.

    python -m load_tests.bench_hls --runs 5
"""

from __future__ import annotations

import argparse
import json
import statistics
import time
from fractions import Fraction
from typing import Any

import av
import numpy as np

from server.media.hls.segmenter import Segmenter


def encode_pattern(
    codec: str, width: int, height: int, fps: int, seconds: float
) -> list[tuple[bytes, float, bool]]:
    """(bytes, seconds, keyframe) of a moving pattern, as a publisher's encoder would send them."""
    enc = av.CodecContext.create(codec, "w")
    enc.width, enc.height, enc.pix_fmt = width, height, "yuv420p"
    enc.time_base = Fraction(1, 90000)
    enc.framerate = fps
    enc.bit_rate = 1_000_000
    if codec == "libx264":
        enc.options = {"preset": "ultrafast", "tune": "zerolatency", "x264-params": f"keyint={2 * fps}"}
    else:
        enc.options = {"deadline": "realtime", "cpu-used": "8", "g": str(2 * fps)}
    out = []
    ys = np.arange(height, dtype=np.int32)[:, None]
    xs = np.arange(width, dtype=np.int32)[None, :]
    for i in range(int(seconds * fps)):
        luma = ((xs + ys + 4 * i) % 256).astype(np.uint8)
        frame = av.VideoFrame.from_ndarray(np.stack([luma, luma, luma], axis=2), format="rgb24")
        frame = frame.reformat(format="yuv420p")
        frame.pts = i * 90000 // fps
        for packet in enc.encode(frame):
            out.append((bytes(packet), packet.pts / 90000, packet.is_keyframe))
    for packet in enc.encode(None):
        out.append((bytes(packet), packet.pts / 90000, packet.is_keyframe))
    return out


def encode_opus(seconds: float) -> list[tuple[bytes, float]]:
    enc = av.CodecContext.create("libopus", "w")
    enc.sample_rate, enc.layout, enc.format = 48000, "stereo", "s16"
    enc.time_base = Fraction(1, 48000)
    out = []
    t = np.arange(960) / 48000
    for i in range(int(seconds * 50)):
        tone = (np.sin(2 * np.pi * 440 * (t + i * 0.02)) * 8000).astype(np.int16)
        frame = av.AudioFrame.from_ndarray(np.repeat(tone, 2)[None, :], format="s16", layout="stereo")
        frame.sample_rate, frame.pts = 48000, i * 960
        out += [(bytes(p), i * 0.02) for p in enc.encode(frame)]
    return out


def run_once(
    codec: str, video: list[tuple[bytes, float, bool]], audio: list[tuple[bytes, float]]
) -> dict[str, Any]:
    seg = Segmenter(codec, with_audio=True)
    events = sorted(
        [(at, 0, v) for v in video for at in [v[1]]] + [(a[1], 1, a) for a in audio],
        key=lambda e: (e[0], e[1]),
    )
    parts = 0
    start = time.process_time()
    for _at, kind, item in events:
        if kind == 0:
            data, at, key = item
            parts += len(seg.video(data, at, key))
        else:
            data, at = item
            parts += len(seg.audio(data, at))
    parts += len(seg.close())
    cpu = time.process_time() - start
    media = video[-1][1] - video[0][1]
    return {
        "path": "transcode" if codec == "vp8" else "remux",
        "cpu_s": round(cpu, 3),
        "media_s": round(media, 3),
        "core_fraction": round(cpu / media, 4),
        "parts": parts,
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--runs", type=int, default=5)
    parser.add_argument("--seconds", type=float, default=10.0)
    parser.add_argument("--width", type=int, default=640)
    parser.add_argument("--height", type=int, default=360)
    parser.add_argument("--fps", type=int, default=30)
    args = parser.parse_args()
    inputs = {
        "vp8": encode_pattern("libvpx", args.width, args.height, args.fps, args.seconds),
        "h264": encode_pattern("libx264", args.width, args.height, args.fps, args.seconds),
    }
    audio = encode_opus(args.seconds)
    results: dict[str, list[float]] = {"transcode": [], "remux": []}
    for _ in range(args.runs):
        for codec in ("h264", "vp8"):  # interleaved: the machine's noise hits both alike
            row = run_once(codec, inputs[codec], audio)
            print(json.dumps(row))
            results[row["path"]].append(row["core_fraction"])
    summary = {
        "video": f"{args.width}x{args.height}@{args.fps}",
        "runs": args.runs,
        "remux_core_fraction_median": statistics.median(results["remux"]),
        "transcode_core_fraction_median": statistics.median(results["transcode"]),
    }
    summary["transcode_over_remux"] = round(
        summary["transcode_core_fraction_median"] / max(1e-9, summary["remux_core_fraction_median"]), 1
    )
    print(json.dumps(summary))
    print("\n| path | CPU per room (fraction of one core, median) | rooms per core |")
    print("|---|---|---|")
    for path in ("remux", "transcode"):
        frac = summary[f"{path}_core_fraction_median"]
        print(f"| {path} | {frac:.4f} | {1 / frac:.0f} |")


if __name__ == "__main__":
    main()
