"""H.264 rooms in real headless Chromium: the viewer page plays what H.264 encoders publish.

Two publishers, each its own process, against `python -m server serve` (real sockets): an aiortc
WHIP publisher whose offer has H.264 only (tests/media/whip_host.py: what OBS's WHIP output or a
hardware encoder sends), and FFmpeg's RTMP client (PyAV, tests/media/encoders.py) pushing to
`--rtmp-port` with the publish key the host console shows (`POST /rtmp/<room>/key`). For each, the page's video
advances frame after frame (requestVideoFrameCallback: presented frames and media time grow),
the page shows the room's codec from the snapshot (body `data-codec`), and Chromium's own
decoder says H.264 (getStats: `data-decoded-codec`). Every wait is a Playwright
condition or a child's output line, bounded; nothing asserts a duration.
"""

from __future__ import annotations

import contextlib
import re
import subprocess
import sys
from collections.abc import Iterator
from typing import Any

import pytest
from playwright import sync_api

from tests.conftest import token
from tests.media.encoders import rtmp_key_encoder
from tests.ports import free_port
from tests.test_browser import (
    ROOT,
    VIDEO_WAIT_MS,
    WAIT_MS,
    Pages,
    ServerProcess,
    browser,  # noqa: F401 (fixture)
    shot,
)

Browser, Page, expect = sync_api.Browser, sync_api.Page, sync_api.expect
FRAMES = 20  # presented frames counted by requestVideoFrameCallback (about 2/3 s at 30 fps)


class H264Server(ServerProcess):
    """A node with a known media port (WHIP, publish keys) and RTMP ingest."""

    def __init__(self) -> None:
        self.http_port, self.rtmp_port = free_port(), free_port()
        super().__init__(free_port(), "--http-port", str(self.http_port), "--rtmp-port", str(self.rtmp_port))

    @property
    def media(self) -> str:
        return f"http://127.0.0.1:{self.http_port}"


@pytest.fixture(scope="module")
def node() -> Iterator[H264Server]:
    srv = H264Server()
    srv.start()
    yield srv
    srv.stop()


@pytest.fixture
def pages(browser: Browser, node: H264Server) -> Iterator[Pages]:  # noqa: F811
    opened = Pages(browser, node.base)
    yield opened
    opened.close()
    assert not opened.errors, opened.errors


def frames_advance(page: Page) -> dict[str, Any]:
    """Count FRAMES presented frames of the page's video with requestVideoFrameCallback; the
    frame counter and the media time must both have moved (a frozen or black video does not)."""
    page.wait_for_function("document.querySelector('#video').videoWidth > 0", timeout=VIDEO_WAIT_MS)
    page.evaluate(
        """() => {
          const v = document.querySelector('#video');
          const seen = (window.__rvfc = {n: 0, first: null, last: null});
          const tick = (now, m) => {
            const meta = {presented: m.presentedFrames, media: m.mediaTime, width: m.width, height: m.height};
            seen.n++;
            seen.first = seen.first || meta;
            seen.last = meta;
            v.requestVideoFrameCallback(tick);
          };
          v.requestVideoFrameCallback(tick);
        }"""
    )
    page.wait_for_function(f"window.__rvfc.n >= {FRAMES}", timeout=VIDEO_WAIT_MS)
    seen = page.evaluate("window.__rvfc")
    assert seen["last"]["presented"] - seen["first"]["presented"] >= FRAMES - 1, seen
    assert seen["last"]["media"] > seen["first"]["media"], seen
    return seen


def plays_h264(page: Page, size: tuple[int, int]) -> None:
    """The page plays H.264: frames advance at the encoder's size, the room's codec is shown, and
    the codec Chromium decodes (getStats' inbound video codec) is H.264. (Chromium leaves
    `decoderImplementation` empty for a page without camera permission: not asserted.)"""
    seen = frames_advance(page)
    assert (seen["last"]["width"], seen["last"]["height"]) == size, seen
    body = page.locator("body")
    expect(body).to_have_attribute("data-codec", "H264", timeout=WAIT_MS)  # snapshot media_codec
    expect(body).to_have_attribute("data-decoded-codec", "H264", timeout=WAIT_MS)  # getStats
    expect(page.locator("#video-stats")).to_contain_text(re.compile(r"^H264 · 320\u00d7240"), timeout=WAIT_MS)


@contextlib.contextmanager
def whip_h264_host(node: H264Server, room: str) -> Iterator[None]:
    """tests/media/whip_host.py live in `room` (user `obs`, H.264 only) for the block."""
    host = subprocess.Popen(
        [sys.executable, "-m", "tests.media.whip_host", node.media, room, token(room, "obs", "host"), "H264"],
        cwd=ROOT,
        stdout=subprocess.PIPE,
        text=True,
    )
    try:
        assert host.stdout is not None
        assert host.stdout.readline().strip() == "live"  # the WHIP session is connected
        yield
    finally:
        host.terminate()
        host.wait(30)


def test_chromium_plays_an_h264_whip_room(pages: Pages, node: H264Server) -> None:
    room = "whip-h264"
    with whip_h264_host(node, room):
        viewer = pages.viewer(room, "vic")
        plays_h264(viewer, (320, 240))
        shot(viewer, "viewer-h264-whip")


def test_chromium_plays_an_h264_rtmp_room_published_with_a_key(pages: Pages, node: H264Server) -> None:
    """The host console gets a publish key (its "Stream from OBS" button), FFmpeg pushes RTMP
    with it as OBS would (Server + Stream Key), and a viewer page plays the H.264."""
    room = "rtmp-h264"
    console = pages.host(room, "studio")
    console.click("#rtmp-key-btn")
    expect(console.locator("#rtmp-note")).to_have_attribute("data-state", "ready", timeout=WAIT_MS)
    server = console.locator("#rtmp-server").input_value()
    key = console.locator("#rtmp-key").input_value()
    assert server == f"rtmp://127.0.0.1:{node.rtmp_port}/live" and len(key) < 100
    encoder = rtmp_key_encoder(node.rtmp_port, key, width=320, height=240)
    try:
        encoder.start()
        assert encoder.proc is not None and encoder.proc.stdout is not None
        assert encoder.proc.stdout.readline().strip() == "sending", encoder.proc.stderr
        viewer = pages.viewer(room, "rita")
        plays_h264(viewer, (320, 240))
        # the publisher is named as the key says (the host token's name, carried in the key)
        assert viewer.evaluate("window.liveroom.media.publishers.get('studio')") == "Studio"
        expect(console.locator("#chat-list li.sys", has_text="Studio went live")).to_have_count(
            1, timeout=WAIT_MS
        )
        shot(console, "host-rtmp-key")
        shot(viewer, "viewer-h264-rtmp")
    finally:
        encoder.stop()


def test_a_browser_cohost_joins_an_h264_room(pages: Pages, node: H264Server) -> None:
    """An H.264-only encoder made the room H.264; a viewer the host invites goes live from the
    page with Chromium's camera (the page offers VP8 and H.264; the room's codec is chosen, not a
    4608 refusal), and another viewer plays both pictures."""
    room = "cohost-h264"
    with whip_h264_host(node, room):
        console = pages.host(room, "hana")
        lea = pages.viewer(room, "lea")
        vic = pages.viewer(room, "vic")
        plays_h264(vic, (320, 240))
        console.fill("#invite-uid", "lea")
        console.press("#invite-uid", "Enter")
        expect(lea.locator("#invite-toast")).to_be_visible(timeout=WAIT_MS)
        lea.click("#cohost-go")
        lea.wait_for_function("document.body.dataset.cohost === 'live'", timeout=VIDEO_WAIT_MS)
        tile = "document.querySelector(\"#tiles .tile[data-uid='lea'] video\")"
        vic.wait_for_function(f"{tile} !== null && {tile}.videoWidth > 0", timeout=VIDEO_WAIT_MS)
        sent = lea.evaluate(
            """async () => {
              const report = await window.liveroom.cohost.pc.getStats();
              let codec = null;
              report.forEach((s) => {
                if (s.type === "outbound-rtp" && s.kind === "video" && s.codecId) codec = report.get(s.codecId).mimeType;
              });
              return codec;
            }"""
        )
        assert sent == "video/H264", sent  # Chromium encodes the room's codec
        shot(vic, "viewer-h264-cohost")
