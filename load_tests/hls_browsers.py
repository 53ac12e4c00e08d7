"""Real headless Chromium viewers of the demo page in `?mode=hls`, for the HLS benchmarks.

`open_viewer` is one page load until the picture plays (bench_hls_latency reads the drawn
clock from it). `RealViewers` keeps a few such viewers playing while an asyncio benchmark
loads the same cache (bench_hls_cache): Playwright's sync API owns one thread of its own, so
every browser call goes through a one-thread executor and the benchmark's event loop is never
blocked by it. Per watched window each page counts the frames it presented
(requestVideoFrameCallback; beside it getVideoPlaybackQuality's frames received and dropped:
fewer presented than received is the browser, fewer received than 30 a second the stream),
its video element's `waiting` events and the time until it played again, hls.js's
buffer-stall errors and player restarts, and samples the page's own latency figure (wall
clock minus the PROGRAM-DATE-TIME of the frame shown).
"""

from __future__ import annotations

import asyncio
import statistics
from concurrent.futures import ThreadPoolExecutor
from typing import Any

from playwright import sync_api

from load_tests.bench_first_frame import CHROMIUM_ARGS, chromium_path

DEMO_FPS = 30  # client_demo/host.py's default frame rate: the frames a page should present

# Installs a fresh set of counters on the page (the previous window's stop counting).
WATCH = """
() => {
  const v = document.querySelector('#video');
  const player = window.liveroom.hls;
  const w = { t0: performance.now(), frames: 0, waiting: 0, stalledMs: 0, since: null, errors: {},
              latency: [], run0: player._run, q0: v.getVideoPlaybackQuality() };
  window.__watch = w;
  const mine = () => window.__watch === w;
  const tick = () => { if (!mine()) return; w.frames++; v.requestVideoFrameCallback(tick); };
  v.requestVideoFrameCallback(tick);
  v.addEventListener('waiting', () => {
    if (!mine()) return;
    w.waiting++;
    if (w.since === null) w.since = performance.now();
  });
  v.addEventListener('playing', () => {
    if (!mine() || w.since === null) return;
    w.stalledMs += performance.now() - w.since;
    w.since = null;
  });
  if (player.hls) player.hls.on('hlsError', (_, d) => {  // Hls.Events.ERROR
    if (mine()) w.errors[d.details] = (w.errors[d.details] || 0) + 1;
  });
  w.sampler = setInterval(() => { if (player.latencyMs !== null) w.latency.push(player.latencyMs); }, 250);
}
"""

# Ends the window: what the page saw since WATCH.
COLLECT = """
() => {
  const w = window.__watch, player = window.liveroom.hls;
  window.__watch = null;
  clearInterval(w.sampler);
  const now = performance.now();
  if (w.since !== null) w.stalledMs += now - w.since;
  const q = document.querySelector('#video').getVideoPlaybackQuality();
  return { seconds: (now - w.t0) / 1000, frames: w.frames, waiting: w.waiting, stalledMs: w.stalledMs,
           stalledAtEnd: w.since !== null, errors: w.errors, latency: w.latency,
           restarts: player._run - w.run0, playing: player.playing,
           decoded: q.totalVideoFrames - w.q0.totalVideoFrames, dropped: q.droppedVideoFrames - w.q0.droppedVideoFrames };
}
"""


def open_viewer(browser: sync_api.Browser, url: str) -> tuple[sync_api.BrowserContext, sync_api.Page, float]:
    """A fresh viewer (its own context) on the page until its video plays: the context, the page
    and its first picture in ms from navigation start. The caller closes the context."""
    context = browser.new_context(viewport={"width": 1280, "height": 720})
    try:
        page = context.new_page()
        page.goto(url)
        page.wait_for_function("document.body.dataset.stream === 'playing'", timeout=60_000)
        first = page.evaluate(
            "document.body.dataset.mode === 'hls' ? window.liveroom.hls._t0 + window.liveroom.hls.firstFrameMs"
            " : window.liveroom.media.firstFrameMs"  # WebRTC: counted from navigation start already
        )
    except BaseException:
        context.close()
        raise
    return context, page, first


def summarize(seen: dict[str, Any], first_ms: float) -> dict[str, Any]:
    """One page's window as a benchmark row (frames against DEMO_FPS over the window)."""
    latency = sorted(seen["latency"])
    expected = seen["seconds"] * DEMO_FPS
    return {
        "first_picture_ms": round(first_ms),
        "seconds": round(seen["seconds"], 2),
        "frames": seen["frames"],
        "frames_pct": round(100 * seen["frames"] / expected, 1) if expected else None,
        # the media pipeline's own count: frames it got, and those it dropped (late) instead of showing
        "decoded": seen["decoded"],
        "decoded_pct": round(100 * seen["decoded"] / expected, 1) if expected else None,
        "dropped": seen["dropped"],
        "waiting": seen["waiting"],
        "stalled_ms": round(seen["stalledMs"]),
        "stalled_at_end": seen["stalledAtEnd"],
        "buffer_stalls": seen["errors"].get("bufferStalledError", 0),
        "hls_errors": seen["errors"],
        "restarts": seen["restarts"],
        "latency_p50_ms": round(statistics.median(latency)) if latency else None,
        "latency_max_ms": round(latency[-1]) if latency else None,
    }


class RealViewers:
    """`count` Chromium viewers (one browser, a context each) playing `url` until `close`."""

    def __init__(self) -> None:
        self._pool = ThreadPoolExecutor(max_workers=1, thread_name_prefix="chromium")
        self._pw: sync_api.Playwright | None = None
        self._browser: sync_api.Browser | None = None
        self._pages: list[tuple[sync_api.BrowserContext, sync_api.Page, float]] = []

    async def _call(self, fn: Any, *args: Any) -> Any:
        return await asyncio.get_running_loop().run_in_executor(self._pool, fn, *args)

    def _open(self, urls: list[str]) -> None:
        self._pw = sync_api.sync_playwright().start()
        self._browser = self._pw.chromium.launch(executable_path=chromium_path(), args=CHROMIUM_ARGS)
        for url in urls:
            self._pages.append(open_viewer(self._browser, url))

    def _watch(self) -> None:
        for _, page, _ in self._pages:
            page.evaluate(WATCH)

    def _collect(self) -> list[dict[str, Any]]:
        return [summarize(page.evaluate(COLLECT), first) for _, page, first in self._pages]

    def _close(self) -> None:
        for context, _, _ in self._pages:
            context.close()
        self._pages.clear()
        if self._browser is not None:
            self._browser.close()
        if self._pw is not None:
            self._pw.stop()

    async def open(self, urls: list[str]) -> None:
        """One viewer per URL, each until its picture plays."""
        await self._call(self._open, urls)

    async def watch(self) -> None:
        await self._call(self._watch)

    async def collect(self) -> list[dict[str, Any]]:
        return await self._call(self._collect)

    async def close(self) -> None:
        try:
            await self._call(self._close)
        finally:
            self._pool.shutdown(wait=True)
