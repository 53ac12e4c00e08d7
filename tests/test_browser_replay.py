"""A recording replays in the viewer page (`?replay=<id>`), in real headless Chromium with hls.js.

`python -m server serve --demo --record DIR` records the demo host's test pattern; a danmaku
is sent over the WebSocket while it records; SIGTERM ends the stream (the graceful stop
finishes the recording). A second server on the same directory, with nobody live, serves the
page: the recording plays (frames advance) and the recorded danmaku flies over the picture
when the replay reaches its moment. Every wait is a condition with a generous timeout.
"""

from __future__ import annotations

import json
from collections.abc import Callable
from pathlib import Path

import msgpack
from playwright import sync_api
from websockets.sync.client import connect

from tests.ports import free_port
from tests.redis_fixtures import poll
from tests.test_browser import (
    VIDEO_WAIT_MS,
    ServerProcess,
    browser,  # noqa: F401 (fixture)
    shot,
    wait_live,
)

Browser, expect = sync_api.Browser, sync_api.expect
TEXT = "said while recording"


def wait_for(condition: Callable[[], bool], what: str) -> None:
    """A condition on the recording directory (the server writes it in another process)."""
    poll(condition, VIDEO_WAIT_MS / 1000, what)


def segments(folder: Path) -> int:
    return len([f for f in folder.glob("s*.m4s")])


def record_demo(root: Path) -> Path:
    """Record the demo room with one danmaku in it; the recording's folder once finished."""
    srv = ServerProcess(free_port(), "--demo", "--record", str(root))
    srv.start()
    try:
        rooms = root / "demo"
        wait_for(lambda: rooms.is_dir() and any(segments(f) >= 1 for f in rooms.iterdir()), "a first segment")
        folder = next(f for f in rooms.iterdir() if segments(f) >= 1)
        with connect(f"ws://127.0.0.1:{srv.port}/ws?room=demo&dev_user=dora&name=Dora") as ws:
            assert msgpack.unpackb(ws.recv(timeout=30))["t"] == "snapshot"
            ws.send(msgpack.packb({"t": "danmaku", "text": TEXT, "cid": "c1"}))
            while True:  # its echo: sequenced, so recorded
                frame = msgpack.unpackb(ws.recv(timeout=30))
                if frame["t"] == "batch" and any(e.get("text") == TEXT for e in frame["events"]):
                    break
        after = segments(folder)
        wait_for(lambda: segments(folder) >= after + 2, "two more segments")
    finally:
        srv.stop()  # SIGTERM: the demo host stops, the stream ends, the recording is finished
    assert (folder / "recording.json").is_file(), list(folder.iterdir())
    return folder


def test_replay_page_plays_the_recording_with_its_danmaku(
    browser: Browser,  # noqa: F811
    tmp_path: Path,
) -> None:
    folder = record_demo(tmp_path / "rec")
    meta = json.loads((folder / "recording.json").read_text())
    assert meta["danmaku"] == 1 and meta["segments"] >= 3
    srv = ServerProcess(free_port(), "--record", str(tmp_path / "rec"))  # nobody live now
    srv.start()
    context = browser.new_context(viewport={"width": 1280, "height": 720})
    errors: list[str] = []
    page = context.new_page()
    page.on("pageerror", lambda exc: errors.append(str(exc)))
    try:
        page.goto(f"{srv.base}/room/demo?user=rita&replay={meta['id']}")
        wait_live(page)
        assert page.evaluate("document.body.dataset.mode") == "replay"
        page.wait_for_function("document.body.dataset.stream === 'playing'", timeout=VIDEO_WAIT_MS)
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
        assert page.evaluate("document.querySelector('#video').srcObject") is None  # not WebRTC
        expect(page.locator("#mode")).to_contain_text("Replay")
        # the danmaku flies when the picture reaches the moment it was sent, not before
        expect(page.locator("#danmaku")).to_contain_text(TEXT, timeout=VIDEO_WAIT_MS)
        shown_at = page.evaluate("window.liveroom.replay.lastShownAt")
        sent = json.loads((folder / "danmaku.json").read_text())["danmaku"][0]["ts"]
        assert shown_at >= sent  # not before its moment (e.g. all at once when the replay starts)
        assert page.evaluate("window.liveroom.replay.shown") == 1
        shot(page, "viewer-replay")
    finally:
        context.close()
        srv.stop()
    assert not errors, errors
