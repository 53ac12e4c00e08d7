"""A browser viewer on node B watches a host publishing on node A; node A is SIGKILLed.

Real parts: three node processes on a real redis-server, the Python host
(`client_demo.host --server A,C`) in its own process, and headless Chromium on node B's
viewer page. B pulls the media from A (cascading); when A dies, B drops A's `live` state
within the claim TTL, the host republishes on C, B pulls from C and re-offers to the page,
whose video plays again without a reload. Every wait is a condition with a timeout.
"""

from __future__ import annotations

from collections.abc import Iterator

import pytest

from tests.redis_fixtures import *  # noqa: F403 - the fixtures
from tests.redis_fixtures import NodeProc, RedisServer, failover_host, media_failover_nodes, requires_redis
from tests.test_browser import (  # noqa: F401 - `browser` is a fixture
    ROOT,
    VIDEO_WAIT_MS,
    Pages,
    browser,
    wait_live,
)

pytestmark = requires_redis
FRAMES = "document.querySelector('#video').getVideoPlaybackQuality().totalVideoFrames"


@pytest.fixture
def nodes(redis_server: RedisServer) -> Iterator[dict[str, NodeProc]]:
    with media_failover_nodes(redis_server.url, "1.5") as started:
        yield started


@pytest.fixture
def host(nodes: dict[str, NodeProc]) -> Iterator[None]:
    with failover_host([nodes["a"].ws_url, nodes["c"].ws_url], "fo", 320, 240):
        yield


def frames_grow(page, by: int) -> None:
    start = page.evaluate(FRAMES)
    page.wait_for_function(f"{FRAMES} > {start + by}", timeout=VIDEO_WAIT_MS)


def test_viewer_on_edge_gets_video_back_after_origin_sigkill(
    browser,  # noqa: F811
    nodes: dict[str, NodeProc],
    host: None,
) -> None:
    pages = Pages(browser, f"http://127.0.0.1:{nodes['b'].port}")
    try:
        page = pages.open("/room/fo?user=vera&name=Vera")
        wait_live(page)
        page.wait_for_function("document.querySelector('#video').videoWidth > 0", timeout=VIDEO_WAIT_MS)
        frames_grow(page, 10)
        negotiations = page.evaluate("window.liveroom.media.negotiations")

        nodes["a"].kill()  # SIGKILL: the origin goes away without a word

        page.wait_for_function(f"window.liveroom.media.negotiations > {negotiations}", timeout=VIDEO_WAIT_MS)
        frames_grow(page, 10)  # frames from the new origin (C), through B
        assert page.evaluate("document.body.dataset.conn") == "live"  # the page never reconnected
    finally:
        pages.close()
    assert not pages.errors, pages.errors
