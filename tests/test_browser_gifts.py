"""Gifts, followers and PK rounds on the demo pages, in real headless Chromium against a real
server process (the browser and pages fixtures of tests/test_browser.py): a gift combo shows
"x N" on another viewer's page and on the host console, a follower watching another room gets
the "going live" toast when the host publishes, and two linked rooms' viewers show the same
PK score. Screenshots under test-artifacts/.
"""

from __future__ import annotations

import json
import re
from collections.abc import Iterator

import pytest

from tests import test_browser as tb
from tests.test_browser import VIDEO_WAIT_MS, WAIT_MS, Pages, ServerProcess, expect, shot

browser, pages = tb.browser, tb.pages


@pytest.fixture(scope="module")
def server() -> Iterator[ServerProcess]:
    """A combo window no loaded machine outlasts between three clicks."""
    tb.ARTIFACTS.mkdir(exist_ok=True)
    srv = ServerProcess(tb._free_port(), "--tick-ms", "20", "--combo-window", "60")
    srv.start()
    yield srv
    srv.stop()


def test_gift_combo_shows_x_n_and_the_leaderboard(pages: Pages) -> None:
    host = pages.host("gifts", "gina")
    giver = pages.viewer("gifts", "gil", "Gil")
    watcher = pages.viewer("gifts", "wes", "Wes")

    rose = giver.locator("#gift-bar button[data-gift='rose']")
    expect(rose).to_be_visible(timeout=WAIT_MS)  # the catalogue came with the snapshot
    for _ in range(3):
        rose.click()
    badge = watcher.locator("#gift-layer .gift-badge[data-uid='gil']")
    expect(badge).to_have_attribute("data-count", "3", timeout=WAIT_MS)
    expect(badge).to_have_count(1)  # one streak, one badge
    expect(badge.locator(".combo")).to_have_text("x 3")
    expect(watcher.locator("#leaderboard-list li[data-uid='gil']")).to_have_attribute(
        "data-score", "30", timeout=WAIT_MS
    )
    expect(giver.locator("#gift-balance")).to_have_text("9,970 coins left", timeout=WAIT_MS)
    shot(watcher, "viewer-gift-combo")
    # the host sees the incoming gifts in its chat, one line per streak
    expect(host.locator("#chat-list li.gift-line[data-count='3']")).to_contain_text(
        "Gil sent Rose x 3", timeout=WAIT_MS
    )
    shot(host, "host-gifts")


def test_follower_in_another_room_gets_the_going_live_toast(pages: Pages) -> None:
    host = pages.host("stage", "sol")
    fan = pages.viewer("stage", "fay", "Fay")
    follow = fan.locator("#follow")
    expect(follow).to_have_attribute("data-host", "sol", timeout=WAIT_MS)
    follow.click()
    expect(follow).to_have_attribute("aria-pressed", "true", timeout=WAIT_MS)

    fan.goto(pages.base + "/room/lobby?user=fay&name=Fay")  # now watching another room
    tb.wait_live(fan)
    toast = fan.locator("#live-toast")
    expect(toast).to_be_hidden()
    host.click("#go-camera")
    expect(toast).to_be_visible(timeout=VIDEO_WAIT_MS)
    expect(toast).to_have_attribute("data-host", "sol")
    expect(toast).to_have_attribute("data-room", "stage")
    expect(toast).to_contain_text("Sol is going live")
    expect(fan.locator("#live-toast-go")).to_have_attribute("href", "/room/stage?user=fay&name=Fay")
    shot(fan, "viewer-live-toast")


def _scores(page: tb.Page) -> dict[str, int]:
    return json.loads(page.locator("#pk-bar").get_attribute("data-scores") or "{}")


def test_two_linked_rooms_show_the_same_pk_score(pages: Pages) -> None:
    red = pages.host("red", "rita")
    blue = pages.host("blue", "bo")
    fan_red = pages.viewer("red", "ray")
    fan_blue = pages.viewer("blue", "bea")

    red.fill("#link-room", "blue")
    red.click("#link-invite")
    expect(blue.locator("#link-accept")).to_be_visible(timeout=WAIT_MS)
    blue.click("#link-accept")
    expect(fan_red.locator("#pk-bar")).to_have_attribute("data-state", "linked", timeout=WAIT_MS)
    expect(red.locator("#pk-start")).to_be_enabled(timeout=WAIT_MS)
    red.select_option("#pk-seconds", "300")
    red.click("#pk-start")
    for page in (fan_red, fan_blue):
        expect(page.locator("#pk-bar")).to_have_attribute("data-state", "round", timeout=WAIT_MS)
        expect(page.locator("#pk-clock")).to_have_text(re.compile(r"^[0-5]:[0-5]\d$"))

    fan_red.locator("#gift-bar button[data-gift='star']").click()  # 50 for red
    fan_blue.locator("#gift-bar button[data-gift='rose']").click()  # 10 for blue
    expect(fan_red.locator("#pk-bar")).to_have_attribute("data-mine", "50", timeout=WAIT_MS)
    expect(fan_red.locator("#pk-bar")).to_have_attribute("data-theirs", "10", timeout=WAIT_MS)
    expect(fan_blue.locator("#pk-bar")).to_have_attribute("data-mine", "10", timeout=WAIT_MS)
    expect(fan_blue.locator("#pk-bar")).to_have_attribute("data-theirs", "50", timeout=WAIT_MS)
    assert _scores(fan_red) == _scores(fan_blue) == {"red": 50, "blue": 10}
    shot(fan_blue, "viewer-pk-bar")

    red.click("#link-end")  # ends the round first: the same result in both rooms
    for page in (fan_red, fan_blue):
        result = page.locator("#pk-result")
        expect(result).to_have_attribute("data-winner", "red", timeout=WAIT_MS)
        assert json.loads(result.get_attribute("data-scores") or "{}") == {"red": 50, "blue": 10}
        expect(page.locator("#pk-bar")).to_be_hidden(timeout=WAIT_MS)


def test_serve_demo_starts_a_pk_with_its_second_room(browser: tb.Browser) -> None:
    """`--demo`: the Python host of room demo2 accepts the demo console's invitation; a PK runs."""
    srv = ServerProcess(tb._free_port(), "--demo")
    srv.start()
    opened = Pages(browser, srv.base)
    try:
        console = opened.host("demo", "dana")
        viewer = opened.viewer("demo2", "vic")
        srv.wait_output("joined room 'demo2'")  # its Python host started (aiortc: slow to import)
        expect(viewer.locator("#host-name")).to_have_text("Test pattern 2", timeout=VIDEO_WAIT_MS)
        console.fill("#link-room", "demo2")
        console.click("#link-invite")
        expect(console.locator("#pk-start")).to_be_enabled(timeout=WAIT_MS)  # accepted by the Python host
        console.click("#pk-start")
        bar = viewer.locator("#pk-bar")
        expect(bar).to_have_attribute("data-state", "round", timeout=WAIT_MS)
        viewer.locator("#gift-bar button[data-gift='heart']").click()
        expect(bar).to_have_attribute("data-mine", "1", timeout=WAIT_MS)
        expect(console.locator("#pk-bar")).to_have_attribute("data-theirs", "1", timeout=WAIT_MS)
        shot(viewer, "viewer-demo-pk")
    finally:
        opened.close()
        srv.stop()
    assert not opened.errors, opened.errors
