"""A browser viewer stays connected through a room reset (#23): node A numbers the room's chat
alone while Redis is down; once Redis is back, the viewer page on node B gets the in-band
snapshot (`reset: true`) and redraws the room from it (client_demo/live.js), with no
reconnect, and the chat goes on.

Real parts: two node processes on a real redis-server (stopped and restarted with its AOF),
headless Chromium on both nodes' viewer pages. Every wait is a condition with a timeout.
"""

from __future__ import annotations

from tests.redis_fixtures import *  # noqa: F403 - the fixtures
from tests.redis_fixtures import RedisServer, poll, requires_redis
from tests.test_browser import (  # noqa: F401 - `browser` is a fixture
    WAIT_MS,
    Pages,
    browser,
    send_chat,
    wait_live,
)

pytestmark = requires_redis
CHAT = "[...document.querySelectorAll('#chat-list li.msg .text')].map((n) => n.textContent)"


def shown(page, text: str) -> None:
    page.wait_for_function(f"{CHAT}.includes({text!r})", timeout=WAIT_MS)


def test_viewer_page_redraws_from_an_in_band_snapshot_without_reconnecting(
    browser,  # noqa: F811
    persistent_redis: RedisServer,
    start_nodes,
) -> None:
    a, b = start_nodes(persistent_redis.url, 2)
    talker_pages = Pages(browser, f"http://127.0.0.1:{a.port}")
    watcher_pages = Pages(browser, f"http://127.0.0.1:{b.port}")
    try:
        talker = talker_pages.viewer("rs", "tara")
        watcher = watcher_pages.viewer("rs", "walt")
        send_chat(talker, "before the outage")
        shown(watcher, "before the outage")

        persistent_redis.stop()
        poll(lambda: not a.ready() and not b.ready(), what="both nodes see Redis down")
        send_chat(talker, "numbered alone")  # under A's local epoch: B never gets it
        shown(talker, "numbered alone")
        persistent_redis.start()
        poll(lambda: a.ready() and b.ready(), what="both nodes back on Redis")

        watcher.wait_for_function("document.body.dataset.resets === '1'", timeout=WAIT_MS)
        chat = watcher.evaluate(CHAT)
        assert chat.count("before the outage") == 1, chat  # redrawn, not appended twice
        assert "numbered alone" not in chat, chat
        send_chat(talker, "after the outage")
        shown(watcher, "after the outage")
        assert watcher.evaluate("window.liveroom.conn.connects") == 1  # never reconnected
        assert watcher.evaluate("document.body.dataset.reconnects") is None
        wait_live(watcher)
    finally:
        talker_pages.close()
        watcher_pages.close()
    assert not talker_pages.errors and not watcher_pages.errors, (talker_pages.errors, watcher_pages.errors)
