"""How far an LL-HLS playlist's dates are from the moment each frame was captured, browser aside.

`python -m server serve --demo` streams the Python host's test pattern, which draws the wall
clock (HH:MM:SS.mmm, client_demo/host.py) into every frame. This client follows the room's live
edge straight from the node as hls.js does (a blocking reload for the hinted part, then the
part), noting when each part was announced; afterwards it decodes every part and reads the
drawn clock back from each frame. Per frame: its date by the playlist (the segment's
PROGRAM-DATE-TIME plus the frame's time since the segment's first frame) minus the drawn clock,
which is what a player's latency figure misses (bench_hls_latency measures the rest, in
Chromium). Per part: when the playlist announced it, after the capture of its first and of its
last frame (the node's share of glass-to-glass). Prints a JSON summary and a Markdown table.

    python -m load_tests.bench_hls_dates --seconds 20
"""

from __future__ import annotations

import argparse
import asyncio
import io
import json
import re
import time
from datetime import datetime
from typing import Any

import aiohttp
import av

from load_tests.bench import stop_process
from load_tests.bench_hls_cache import start_node, viewer_urls
from server.media.hls.fmp4 import BoxReader, track_runs
from tests.ports import free_port

# seven-segment digits by their lit segments (client_demo/host.py draws them)
DIGITS = {
    "abcdef": 0,
    "bc": 1,
    "abdeg": 2,
    "abcdg": 3,
    "bcfg": 4,
    "acdfg": 5,
    "acdefg": 6,
    "abc": 7,
    "abcdefg": 8,
    "abcdfg": 9,
}
_PART = re.compile(r'#EXT-X-PART:DURATION=[\d.]+,URI="([^"]*p(\d+)\.(\d+)\.m4s)"')
_HINT = re.compile(r'PRELOAD-HINT:TYPE=PART,URI="[^"]*p(\d+)\.(\d+)\.m4s"')


def read_clock(frame: av.VideoFrame) -> float | None:
    """Seconds since local midnight drawn in the frame (client_demo/host.py's geometry), or None."""
    gray = frame.to_ndarray(format="gray")
    height = gray.shape[0]
    s = max(1, height // 180)
    dw, dh, t, gap = 10 * s, 20 * s, 2 * s, 4 * s
    x, top = 16 + gap, 16 + gap
    mid = top + (dh - t) // 2
    digits = []
    for ch in "00:00:00.000":
        if ch != "0":
            x += t + gap
            continue
        probes = {
            "a": (x + dw // 2, top + t // 2),
            "b": (x + dw - t // 2, top + dh // 4 + t // 2),
            "c": (x + dw - t // 2, mid + dh // 4),
            "d": (x + dw // 2, top + dh - t // 2),
            "e": (x + t // 2, mid + dh // 4),
            "f": (x + t // 2, top + dh // 4 + t // 2),
            "g": (x + dw // 2, mid + t // 2),
        }
        lit = "".join(k for k, (px, py) in probes.items() if gray[py, px] > 128)
        if lit not in DIGITS:
            return None
        digits.append(DIGITS[lit])
        x += dw + gap
    h1, h2, m1, m2, s1, s2, f1, f2, f3 = digits
    return ((h1 * 10 + h2) * 60 + m1 * 10 + m2) * 60 + s1 * 10 + s2 + (f1 * 100 + f2 * 10 + f3) / 1000


def epoch_of(of_day: float, near: float) -> float:
    """The epoch time with this local time of day nearest to `near` (a run may cross midnight)."""
    local = time.localtime(near)
    midnight = time.mktime((local.tm_year, local.tm_mon, local.tm_mday, 0, 0, 0, 0, 0, -1))
    return min((midnight + d * 86400 + of_day for d in (-1, 0, 1)), key=lambda t: abs(t - near))


async def follow(http_port: int, seconds: float) -> tuple[bytes, list[dict[str, Any]], dict[int, float]]:
    """Parts as the live edge makes them: (init segment, parts with announce times, PDT by msn)."""
    media = f"http://127.0.0.1:{http_port}"
    parts: list[dict[str, Any]] = []
    dates: dict[int, float] = {}
    async with aiohttp.ClientSession() as http:
        url = None
        for _ in range(120):  # the demo host needs a few seconds to publish
            try:
                (url,) = await viewer_urls(http, media, 1)
                async with http.get(url) as r:
                    if r.status == 200:
                        text = await r.text()
                        break
            except RuntimeError:
                pass
            await asyncio.sleep(0.5)
        else:
            raise RuntimeError("the demo room's HLS never started")
        base = url.rsplit("/", 1)[0]
        init_uri = re.search(r'EXT-X-MAP:URI="([^"]+)"', text)
        assert init_uri is not None
        async with http.get(f"{base}/{init_uri.group(1)}") as r:
            init = await r.read()
        seen: set[tuple[int, int]] = set()
        hint: tuple[int, int] | None = None
        end = time.time() + seconds
        while time.time() < end:
            query = f"?_HLS_msn={hint[0]}&_HLS_part={hint[1]}" if hint else ""
            async with http.get(url + query) as r:
                text = await r.text()
            announced = time.time()
            msn = int(re.search(r"MEDIA-SEQUENCE:(\d+)", text).group(1)) - 1  # type: ignore[union-attr]
            for line in text.splitlines():
                if line.startswith("#EXT-X-PROGRAM-DATE-TIME:"):
                    msn += 1
                    dates[msn] = datetime.fromisoformat(line.split(":", 1)[1]).timestamp()
                m = _PART.match(line)
                if m and (key := (int(m.group(2)), int(m.group(3)))) not in seen:
                    seen.add(key)
                    if hint is not None:  # parts listed before we followed the edge: no timing
                        async with http.get(f"{base}/{m.group(1)}") as r:
                            parts.append(
                                {
                                    "msn": key[0],
                                    "index": key[1],
                                    "announced": announced,
                                    "data": await r.read(),
                                }
                            )
            h = _HINT.search(text)
            if h is None:
                break  # the stream ended
            hint = (int(h.group(1)), int(h.group(2)))
    return init, parts, dates


def measure(init: bytes, parts: list[dict[str, Any]], dates: dict[int, float]) -> dict[str, list[float]]:
    """Decodes the parts in order; per frame and per part, ms against the drawn clock."""
    out: dict[str, list[float]] = {"date": [], "first": [], "last": [], "unread": []}
    decoder = None
    segment_start: dict[int, int] = {}
    for part in parts:
        boxes = BoxReader().feed(part["data"])
        video_start = min(
            r.start for b in boxes if b.type == "moof" for r in track_runs(b.data) if r.track_id == 1
        )
        if part["index"] == 0:
            segment_start[part["msn"]] = video_start
        with av.open(io.BytesIO(init + part["data"])) as container:
            if decoder is None:
                decoder = av.CodecContext.create(container.streams.video[0].codec_context.name, "r")
                decoder.extradata = container.streams.video[0].codec_context.extradata
            captured = []
            for packet in container.demux(video=0):
                for frame in decoder.decode(packet) if packet.size else []:
                    of_day = read_clock(frame)
                    if of_day is None:
                        out["unread"].append(1)
                        continue
                    capture = epoch_of(of_day, part["announced"])
                    captured.append(capture)
                    if part["msn"] in segment_start and part["msn"] in dates and frame.pts is not None:
                        date = dates[part["msn"]] + (frame.pts - segment_start[part["msn"]]) / 90000
                        out["date"].append((date - capture) * 1000)
        if captured:
            out["first"].append((part["announced"] - captured[0]) * 1000)
            out["last"].append((part["announced"] - captured[-1]) * 1000)
    return out


def pct(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return round(ordered[min(len(ordered) - 1, int(q * len(ordered)))]) if ordered else float("nan")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--seconds", type=float, default=20.0)
    args = parser.parse_args()
    http_port = free_port()
    proc, _node = start_node(http_port)
    try:
        init, parts, dates = asyncio.run(follow(http_port, args.seconds))
    finally:
        stop_process(proc)
    got = measure(init, parts, dates)
    summary = {
        "parts": len(parts),
        "frames": len(got["date"]),
        "unread": len(got["unread"]),
        **{f"date_minus_capture_p{q}_ms": pct(got["date"], q / 100) for q in (5, 50, 95)},
        **{f"announced_after_first_frame_p{q}_ms": pct(got["first"], q / 100) for q in (50, 95)},
        **{f"announced_after_last_frame_p{q}_ms": pct(got["last"], q / 100) for q in (50, 95)},
    }
    print(json.dumps({"summary": summary}))
    s = summary
    print(
        "\n| frames | PDT date - capture p5 / p50 / p95 ms | part announced after its first / last frame p50 (p95) ms |"
    )
    print("|---|---|---|")
    print(
        f"| {s['frames']} | {s['date_minus_capture_p5_ms']} / {s['date_minus_capture_p50_ms']} / "
        f"{s['date_minus_capture_p95_ms']} | {s['announced_after_first_frame_p50_ms']} "
        f"({s['announced_after_first_frame_p95_ms']}) / {s['announced_after_last_frame_p50_ms']} "
        f"({s['announced_after_last_frame_p95_ms']}) |"
    )


if __name__ == "__main__":
    main()
