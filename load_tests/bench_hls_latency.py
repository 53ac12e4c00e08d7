"""Glass-to-glass latency of LL-HLS in Chromium with hls.js, and an HLS viewer's first picture.

`python -m server serve --demo` streams the Python host's test pattern, which draws the wall
clock (HH:MM:SS.mmm, seven-segment digits, client_demo/host.py) into every frame. The viewer
page opens with `?mode=hls` (through an nginx cache, tests/nginx_fixtures.py, unless
`--direct`) in headless Chromium; for `--seconds` the page reads the clock out of each frame
it presents (requestVideoFrameCallback, canvas, the digits' segments) and compares it with
its own wall clock: capture -> VP8 encode -> WebRTC to the node -> transcode -> CMAF part ->
cache -> hls.js -> screen. It also records hls.js's figure ("PDT latency": now minus
`playingDate`, the PROGRAM-DATE-TIME at `currentTime`) and the page's own (`latencyMs`: what
it shows and holds danmaku by, the date of the frame presented), and per frame the gap between
the drawn clock's latency and the page's: what the danmaku hold misses. First picture:
navigation start to the first video frame. `--webrtc`: the same page and clock over WebRTC,
the baseline (capture to node included in both). `--loads` fresh page loads; p50/p95 over all
samples.
Prints one JSON line per load, a JSON summary and a Markdown table.

    python -m load_tests.bench_hls_latency --loads 5 --seconds 15
"""

from __future__ import annotations

import argparse
import json
import statistics
import tempfile
from pathlib import Path
from typing import Any

from playwright import sync_api

from load_tests.bench import stop_process
from load_tests.bench_first_frame import CHROMIUM_ARGS, chromium_path
from load_tests.bench_hls_cache import start_node
from load_tests.hls_browsers import open_viewer
from tests.nginx_fixtures import NginxCache
from tests.ports import free_port

# Reads client_demo/host.py's clock: same geometry (x0 = y0 = 16, scale = height // 180,
# digit 10x20 * scale, stroke 2 * scale, gap 4 * scale), one luma sample per segment.
READ_CLOCK = """
(seconds) => new Promise((resolve) => {
  const v = document.querySelector('#video');
  const canvas = document.createElement('canvas');
  const ctx = canvas.getContext('2d', { willReadFrequently: true });
  const DIGITS = { abcdef: 0, bc: 1, abdeg: 2, abcdg: 3, bcfg: 4, acdfg: 5, acdefg: 6, abc: 7, abcdefg: 8, abcdfg: 9 };
  const out = { clock: [], pdt: [], page: [], gap: [], unread: 0 };
  const end = performance.now() + seconds * 1000;
  const read = (img, w, h) => {
    const s = Math.max(1, Math.floor(h / 180)), dw = 10 * s, dh = 20 * s, t = 2 * s, gap = 4 * s;
    let x = 16 + gap;
    const top = 16 + gap, mid = top + Math.floor((dh - t) / 2);
    const lit = (px, py) => img[(py * w + px) * 4] > 128;
    const digits = [];
    for (const ch of "00:00:00.000") {
      if (ch !== "0") { x += t + gap; continue; }
      const probes = {
        a: [x + dw / 2, top + t / 2], b: [x + dw - t / 2, top + dh / 4 + t / 2], c: [x + dw - t / 2, mid + dh / 4],
        d: [x + dw / 2, top + dh - t / 2], e: [x + t / 2, mid + dh / 4], f: [x + t / 2, top + dh / 4 + t / 2],
        g: [x + dw / 2, mid + t / 2],
      };
      const on = Object.entries(probes).filter(([, [px, py]]) => lit(Math.floor(px), Math.floor(py))).map(([k]) => k).join("");
      if (!(on in DIGITS)) return null;
      digits.push(DIGITS[on]);
      x += dw + gap;
    }
    const [h1, h2, m1, m2, s1, s2, f1, f2, f3] = digits;
    return (((h1 * 10 + h2) * 60 + m1 * 10 + m2) * 60 + s1 * 10 + s2) * 1000 + f1 * 100 + f2 * 10 + f3;
  };
  const tick = () => {
    const now = new Date();
    const w = v.videoWidth, h = v.videoHeight;
    canvas.width = w; canvas.height = h;
    ctx.drawImage(v, 0, 0, w, h);
    const shown = read(ctx.getImageData(0, 0, w, Math.min(h, 120)).data, w, h);
    const midnight = new Date(now); midnight.setHours(0, 0, 0, 0);
    const clock = shown === null ? null : (((now - midnight) - shown) % 86400000 + 86400000) % 86400000;
    if (clock === null) out.unread++;
    else out.clock.push(clock);
    const date = window.liveroom.hls.hls?.playingDate;
    if (date) out.pdt.push(Date.now() - date.getTime());
    const page = window.liveroom.hls.latencyMs;  // what the page shows and holds danmaku by
    if (page !== null && page !== undefined) {
      out.page.push(page);
      if (clock !== null) out.gap.push(clock - page);
    }
    if (performance.now() > end) resolve(out); else v.requestVideoFrameCallback(tick);
  };
  v.requestVideoFrameCallback(tick);
})
"""


def pct(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return round(ordered[min(len(ordered) - 1, int(q * len(ordered)))], 0) if ordered else float("nan")


def one_load(browser: sync_api.Browser, url: str, seconds: float) -> dict[str, Any]:
    context, page, first = open_viewer(browser, url)
    try:
        out = page.evaluate(READ_CLOCK, seconds)
        return {"first_picture_ms": round(first), **out}
    finally:
        context.close()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--loads", type=int, default=5)
    parser.add_argument("--seconds", type=float, default=15.0)
    parser.add_argument("--direct", action="store_true", help="no nginx: the page reads the node")
    parser.add_argument("--webrtc", action="store_true", help="the baseline: the same page over WebRTC")
    args = parser.parse_args()
    http_port = free_port()
    proc, node = start_node(http_port)
    cache = (
        None
        if args.direct or args.webrtc
        else NginxCache(Path(tempfile.mkdtemp(prefix="bench-hls-nginx-")), http_port)
    )
    clock: list[float] = []
    pdt: list[float] = []
    page: list[float] = []
    gap: list[float] = []
    firsts: list[float] = []
    try:
        if cache is not None:
            cache.start()
        url = f"{node}/room/demo?user=lat" + ("" if args.webrtc else "&mode=hls")
        url += f"&hls={cache.base}" if cache else ""
        with sync_api.sync_playwright() as pw:
            browser = pw.chromium.launch(executable_path=chromium_path(), args=CHROMIUM_ARGS)
            one_load(browser, url, 2)  # warm-up: the room's HLS stream starts with its first viewer
            for load in range(args.loads):
                row = one_load(browser, url, args.seconds)
                clock += row["clock"]
                pdt += row["pdt"]
                page += row["page"]
                gap += row["gap"]
                firsts.append(row["first_picture_ms"])
                print(
                    json.dumps(
                        {
                            "load": load,
                            "first_picture_ms": row["first_picture_ms"],
                            "frames_read": len(row["clock"]),
                            "unread": row["unread"],
                            "clock_p50_ms": pct(row["clock"], 0.5),
                            "pdt_p50_ms": pct(row["pdt"], 0.5),
                            "page_p50_ms": pct(row["page"], 0.5),
                            "gap_p50_ms": pct(row["gap"], 0.5),
                        }
                    ),
                    flush=True,
                )
            browser.close()
    finally:
        if cache is not None:
            cache.stop()
        stop_process(proc)
    summary = {
        "via": "webrtc" if args.webrtc else "direct" if args.direct else "nginx",
        "glass_to_glass_p50_ms": pct(clock, 0.5),
        "glass_to_glass_p95_ms": pct(clock, 0.95),
        "pdt_latency_p50_ms": pct(pdt, 0.5),
        "pdt_latency_p95_ms": pct(pdt, 0.95),
        "page_latency_p50_ms": pct(page, 0.5),
        "page_latency_p95_ms": pct(page, 0.95),
        "gap_p5_ms": pct(gap, 0.05),
        "gap_p50_ms": pct(gap, 0.5),
        "gap_p95_ms": pct(gap, 0.95),
        "first_picture_p50_ms": pct(firsts, 0.5),
        "first_picture_p95_ms": pct(firsts, 0.95),
        "first_picture_median_ms": round(statistics.median(firsts)),
        "frames": len(clock),
    }
    print(json.dumps({"summary": summary}))
    print(
        "\n| via | glass-to-glass p50 / p95 ms | PDT latency p50 / p95 ms | page's latency p50 / p95 ms "
        "| gap p5 / p50 / p95 ms | first picture p50 / p95 ms | frames |"
    )
    print("|---|---|---|---|---|---|---|")
    s = summary
    print(
        f"| {s['via']} | {s['glass_to_glass_p50_ms']} / {s['glass_to_glass_p95_ms']} "
        f"| {s['pdt_latency_p50_ms']} / {s['pdt_latency_p95_ms']} "
        f"| {s['page_latency_p50_ms']} / {s['page_latency_p95_ms']} "
        f"| {s['gap_p5_ms']} / {s['gap_p50_ms']} / {s['gap_p95_ms']} "
        f"| {s['first_picture_p50_ms']} / {s['first_picture_p95_ms']} | {s['frames']} |"
    )


if __name__ == "__main__":
    main()
