"""The viewer page plays LL-HLS (hls.js) in real headless Chromium, through a real nginx cache.

`python -m server serve --demo` (the Python host streams a test pattern in room `demo`), an
nginx caching proxy in front of its media port (tests/nginx_fixtures.py), and the page opened
with `?mode=hls&hls=<nginx>`: the picture plays (frames advance), the page says it is in HLS
mode with its latency (from PROGRAM-DATE-TIME), the files came through the cache, and a
danmaku from the WebSocket is held by that latency before it flies over the picture. A node
that refuses every WebRTC viewer (`--media-max-viewers 0`: 4611) sends the page, opened
without `?mode=hls`, to HLS by itself, read straight from the node's `media_url`; so does a
page whose peer connection cannot connect (relay-only ICE and no TURN server: no candidate).
Every wait is a Playwright condition with a generous timeout; nothing asserts a duration.
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import msgpack
import pytest
from playwright import sync_api
from websockets.sync.client import connect

from tests.nginx_fixtures import NginxCache, requires_nginx
from tests.ports import free_port
from tests.test_browser import (
    VIDEO_WAIT_MS,
    WAIT_MS,
    ServerProcess,
    browser,  # noqa: F401 (fixture)
    shot,
    wait_live,
)

pytestmark = requires_nginx

Browser, expect = sync_api.Browser, sync_api.expect


@pytest.fixture
def demo(tmp_path: Path) -> Iterator[tuple[ServerProcess, NginxCache]]:
    http_port = free_port()
    srv = ServerProcess(free_port(), "--demo", "--http-port", str(http_port))
    srv.start()
    cache = NginxCache(tmp_path / "nginx", http_port)
    try:
        cache.start()
        yield srv, cache
    finally:
        cache.stop()
        srv.stop()


def test_viewer_page_plays_ll_hls_through_nginx(
    browser: Browser,  # noqa: F811
    demo: tuple[ServerProcess, NginxCache],
) -> None:
    srv, cache = demo
    context = browser.new_context(viewport={"width": 1280, "height": 720})
    errors: list[str] = []
    page = context.new_page()
    page.on("pageerror", lambda exc: errors.append(str(exc)))
    try:
        page.goto(f"{srv.base}/room/demo?user=hugo&mode=hls&hls={cache.base}")
        wait_live(page)
        page.wait_for_function("document.body.dataset.stream === 'playing'", timeout=VIDEO_WAIT_MS)
        # frames advance: a run of new video frames with growing media times
        times = page.evaluate(
            """() => new Promise((resolve) => {
                const v = document.querySelector('#video'), seen = [];
                const tick = (_, meta) => {
                    seen.push(meta.mediaTime);
                    if (seen.length >= 10) resolve(seen); else v.requestVideoFrameCallback(tick);
                };
                v.requestVideoFrameCallback(tick);
            })"""
        )
        assert times == sorted(times) and times[-1] > times[0], times
        assert page.evaluate("document.body.dataset.mode") == "hls"
        assert page.evaluate("document.querySelector('#video').srcObject") is None  # not WebRTC
        page.wait_for_function("document.body.dataset.latencyMs !== ''", timeout=WAIT_MS)
        expect(page.locator("#mode")).to_contain_text("latency")
        latency = int(page.evaluate("document.body.dataset.latencyMs"))
        assert latency > 0
        # the player's files came through the cache
        assert any(" 200 " in line and ".m4s" in line for line in cache.cache_statuses())
        # a danmaku from the WebSocket waits for the picture: held by the measured latency
        with connect(f"ws://127.0.0.1:{srv.port}/ws?room=demo&dev_user=dora&name=Dora") as ws:
            assert msgpack.unpackb(ws.recv(timeout=30))["t"] == "snapshot"
            ws.send(msgpack.packb({"t": "danmaku", "text": "in step with the picture", "cid": "c1"}))
            expect(page.locator("#danmaku")).to_contain_text("in step with the picture", timeout=WAIT_MS)
        assert page.evaluate("window.liveroom.state.lastHoldMs") > 0
        shot(page, "viewer-hls-nginx")
    finally:
        context.close()
    assert not errors, errors


def test_viewer_page_falls_back_to_hls_when_webrtc_is_full(browser: Browser) -> None:  # noqa: F811
    falls_back_to_hls(
        browser, ServerProcess(free_port(), "--demo", "--media-max-viewers", "0"), "full", why="video is full"
    )


def test_viewer_page_falls_back_to_hls_when_webrtc_cannot_connect(browser: Browser) -> None:  # noqa: F811
    # relay-only ICE (`?ice=relay`) on a node that names no TURN server: not one candidate,
    # the peer connection cannot connect, as where UDP is blocked; the page sees its answer has
    # no candidate and moves at once (not after the 20 s wait for a connection)
    falls_back_to_hls(
        browser, ServerProcess(free_port(), "--demo"), "no-connect", "&ice=relay", why="no ICE candidate"
    )


def falls_back_to_hls(
    browser: Browser,  # noqa: F811
    srv: ServerProcess,
    name: str,
    query: str = "",
    why: str = "",
) -> None:
    """The page, opened without ?mode=hls, ends up playing HLS from the node's media_url."""
    srv.start()
    context = browser.new_context(viewport={"width": 1280, "height": 720})
    errors: list[str] = []
    page = context.new_page()
    page.on("pageerror", lambda exc: errors.append(str(exc)))
    try:
        page.goto(f"{srv.base}/room/demo?user=fred{query}")
        wait_live(page)
        page.wait_for_function("document.body.dataset.mode === 'hls'", timeout=VIDEO_WAIT_MS)
        page.wait_for_function("document.body.dataset.stream === 'playing'", timeout=VIDEO_WAIT_MS)
        start = page.evaluate("document.querySelector('#video').currentTime")
        page.wait_for_function(
            f"document.querySelector('#video').currentTime > {start} + 0.5", timeout=VIDEO_WAIT_MS
        )
        expect(page.locator("#mode")).to_contain_text("HLS")
        assert why in page.evaluate("document.body.dataset.fallback")  # the page says why it moved
        assert page.evaluate("window.liveroom.hls.fixedBase") is None  # the node's media_url
        shot(page, f"viewer-hls-fallback-{name}")
    finally:
        context.close()
        srv.stop()
    assert not errors, errors
