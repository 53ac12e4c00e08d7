"""Host console and room controls in real headless Chromium: slow mode, the viewer list, the
camera preview, device picker and mic/camera mute. Same server and browser fixtures as
tests/test_browser.py; one screenshot per state under test-artifacts/.
"""

from __future__ import annotations

import re

from server.wire.protocol import ErrorCode
from tests import test_browser as tb
from tests.ports import free_port
from tests.test_browser import VIDEO_WAIT_MS, WAIT_MS, Pages, expect, send_chat, shot

# the browser, server and pages fixtures of tests/test_browser.py (module-scoped there: here too)
browser, server, pages = tb.browser, tb.server, tb.pages


def test_slow_mode_and_viewer_list(pages: Pages) -> None:
    host = pages.host("slow")
    viewer = pages.viewer("slow", "sam", "Sam")

    host.select_option("#slow-mode", "300")
    expect(viewer.locator("#slow-note")).to_have_text("Slow mode: one message every 300 s.", timeout=WAIT_MS)
    send_chat(viewer, "first one")
    expect(viewer.locator("#chat-list li.msg:not(.pending)", has_text="first one")).to_have_count(
        1, timeout=WAIT_MS
    )
    send_chat(viewer, "second one")
    error = viewer.locator("#chat-error")
    expect(error).to_have_attribute("data-code", str(int(ErrorCode.SLOW_MODE)), timeout=WAIT_MS)
    expect(error).to_contain_text("every 300 s")
    shot(viewer, "viewer-slow-mode")

    late = pages.viewer("slow", "lou")  # a joiner learns it from the snapshot
    expect(late.locator("#slow-note")).to_be_visible()

    # the viewer list: everyone connected, names open the user card
    host.click("#tab-viewers")
    expect(host.locator("#viewer-list li")).to_have_count(3, timeout=WAIT_MS)
    expect(host.locator("#viewer-list li[data-uid='sam'] .who")).to_have_text("Sam")
    host.locator("#viewer-list li[data-uid='sam'] .who").click()
    expect(host.locator("#user-card")).to_have_attribute("data-uid", "sam")
    # a DM from the card reaches the viewer
    host.fill("#user-card .card-dm input", "thanks for watching")
    host.press("#user-card .card-dm input", "Enter")
    expect(viewer.locator("#dm-badge")).to_have_text("1", timeout=WAIT_MS)
    shot(host, "host-viewer-list")

    host.click("#tab-chat")
    host.select_option("#slow-mode", "0")
    expect(viewer.locator("#slow-note")).to_be_hidden(timeout=WAIT_MS)


def test_host_preview_devices_and_mute(pages: Pages) -> None:
    host = pages.host("gear")
    host.click("#preview-btn")
    host.wait_for_function("document.querySelector('#preview').videoWidth > 0", timeout=VIDEO_WAIT_MS)
    expect(host.locator("body")).to_have_attribute("data-preview", "on")
    expect(host.locator("#offline")).to_be_hidden()
    expect(host.locator("#pub-state")).to_have_attribute("data-state", "off")  # nobody sees it yet
    # the fake devices are listed once the camera was opened
    expect(host.locator("#pick-video option")).not_to_have_count(1, timeout=WAIT_MS)
    expect(host.locator("#pick-audio option")).not_to_have_count(1, timeout=WAIT_MS)
    shot(host, "host-preview")

    viewer = pages.viewer("gear", "gus")
    host.click("#go-camera")
    host.wait_for_function(
        "document.querySelector('#pub-state').dataset.state === 'live'", timeout=VIDEO_WAIT_MS
    )
    viewer.wait_for_function("document.querySelector('#video').videoWidth > 0", timeout=VIDEO_WAIT_MS)

    host.click("#mute-mic")
    host.click("#mute-cam")
    expect(host.locator("body")).to_have_attribute("data-mic", "muted")
    expect(host.locator("#mute-cam")).to_have_text("Camera off")
    enabled = host.evaluate("window.liveroom.publisher.stream.getTracks().map((t) => [t.kind, t.enabled])")
    assert sorted(enabled) == [["audio", False], ["video", False]]
    shot(host, "host-muted")
    # another camera while live: the sender switches tracks, still live, no renegotiation
    options = host.locator("#pick-video option").evaluate_all("(os) => os.map((o) => o.value)")
    host.select_option("#pick-video", options[-1])
    host.wait_for_function(
        f"window.liveroom.publisher.stream.getVideoTracks()[0].getSettings().deviceId === {options[-1]!r}",
        timeout=WAIT_MS,
    )
    expect(host.locator("#pub-state")).to_have_attribute("data-state", "live")
    host.click("#mute-cam")
    expect(host.locator("body")).to_have_attribute("data-cam", "on")


def test_dashboard_without_parameters_prompts_for_a_token(pages: Pages) -> None:
    page = pages.open("/dashboard.html")
    expect(page.locator("#prompt")).to_be_visible()
    expect(page.locator("#prompt")).to_contain_text("--role host")
    expect(page.locator("#charts")).to_be_hidden()
    expect(page.locator("#status")).to_have_text("waiting for a token")
    shot(page, "dashboard-prompt")
    page.click("#dev-token")  # dev mode: a host token of the room from /api/dev/token
    page.wait_for_function("document.querySelector('#token').value.split('.').length === 3", timeout=WAIT_MS)
    # the stats come from the server's HTTP port, wherever --http-port put it (here: a random one)
    expect(page.locator("#windows")).to_be_visible(timeout=WAIT_MS)
    expect(page.locator("#status")).to_have_text("")
    assert page.input_value("#api") == page.evaluate("fetch('/api/config').then((r) => r.json())")["http_url"]
    # one sample: the viewers chart spans minutes, not years
    page.wait_for_function("window.dashboard.viewers.data[0].length >= 1", timeout=WAIT_MS)
    span = page.evaluate("window.dashboard.viewers.scales.x.max - window.dashboard.viewers.scales.x.min")
    assert 60 <= span <= 3600, span
    page.locator("#firstframe").scroll_into_view_if_needed()
    shot(page, "dashboard-one-sample")


def test_without_dev_tokens_the_page_asks_for_a_token(browser: tb.Browser) -> None:
    """The early dev join is refused (4100): the page falls back to asking, then joins with it."""
    srv = tb.ServerProcess(free_port(), "--no-dev-tokens")
    srv.start()
    opened = Pages(browser, srv.base)
    try:
        page = opened.open("/room/closed?user=pia")
        expect(page.locator("#token-dialog")).to_be_visible(timeout=WAIT_MS)
        expect(page.locator("#blocked")).to_be_hidden()
        shot(page, "viewer-token-dialog")
        page.fill("#token-input", tb.token("closed", "pia"))
        page.click("#token-dialog button[type=submit]")
        tb.wait_live(page)
        expect(page.locator("#me")).to_contain_text("pia")
    finally:
        opened.close()
        srv.stop()
    assert not opened.errors, opened.errors


def test_dashboard_says_when_the_stats_api_is_unreachable(pages: Pages) -> None:
    page = pages.open("/dashboard.html?api=http://127.0.0.1:9&room=x&token=t")  # nothing listens on 9
    expect(page.locator("#status")).to_have_text(
        "stats: cannot reach http://127.0.0.1:9 (is the stats API base right?)", timeout=WAIT_MS
    )
    shot(page, "dashboard-unreachable")


def test_chat_keeps_following_after_switching_tabs(browser: tb.Browser) -> None:
    """Lines that came while another tab was open: back on the chat, the list is at the newest
    line, and it goes on following the lines after (viewer page and host console alike)."""
    srv = tb.ServerProcess(free_port(), "--tick-ms", "20", "--rate-limits", "off")  # a burst of lines
    srv.start()
    pages = Pages(browser, srv.base)
    try:
        _follow_after_tabs(pages)
    finally:
        pages.close()
        srv.stop()
    assert not pages.errors, pages.errors


def _follow_after_tabs(pages: Pages) -> None:
    viewer = pages.viewer("follow", "fay", "Fay")
    host = pages.host("follow")
    talker = pages.viewer("follow", "tom", "Tom")
    for page, other_tab in ((viewer, "#tab-dm"), (host, "#tab-viewers")):
        for i in range(30):  # more than the list shows: it scrolls
            send_chat(talker, f"line {i} for {other_tab}")
        expect(page.locator("#chat-list li.msg", has_text=f"line 29 for {other_tab}")).to_have_count(
            1, timeout=WAIT_MS
        )
        page.click(other_tab)
        for i in range(30, 35):
            send_chat(talker, f"line {i} for {other_tab}")
        expect(page.locator("#chat-list li.msg", has_text=f"line 34 for {other_tab}")).to_have_count(
            1, timeout=WAIT_MS
        )
        page.click("#tab-chat")
        expect(page.locator("#chat-list li.msg", has_text=f"line 34 for {other_tab}")).to_be_in_viewport()
        send_chat(talker, f"line 35 for {other_tab}")
        newest = page.locator("#chat-list li.msg", has_text=f"line 35 for {other_tab}")
        expect(newest).to_have_count(1, timeout=WAIT_MS)
        expect(newest).to_be_in_viewport()
    shot(viewer, "viewer-chat-after-tabs")


def test_reconnect_overlay_says_one_clean_thing(browser: tb.Browser) -> None:
    """Server gone: the reconnecting overlay covers the "not streaming yet" card (one message on
    the stage) and says why in plain words, not the fetch error; back when the server is."""
    srv = tb.ServerProcess(free_port(), "--tick-ms", "20")
    srv.start()
    pages = Pages(browser, srv.base)
    try:
        pages.host("gone")  # in the room, not streaming
        viewer = pages.viewer("gone", "vic")
        expect(viewer.locator("#offline-title")).to_contain_text("not streaming yet", timeout=WAIT_MS)
        srv.stop()
        # the token fetch fails while the server is down: the raw detail goes to the tooltip only
        expect(viewer.locator("#conn")).to_have_attribute(
            "title", re.compile("cannot reach"), timeout=WAIT_MS
        )
        expect(viewer.locator("#reconnecting")).to_be_visible()
        expect(viewer.locator("#offline-title")).to_be_hidden()
        sub = viewer.locator("#reconnecting-sub")
        expect(sub).to_have_text(re.compile(r"^The server cannot be reached right now\. Trying again"))
        expect(sub).not_to_contain_text("Failed to fetch")
        expect(sub).not_to_contain_text("token")
        shot(viewer, "viewer-reconnect-overlay")
        srv.start()
        tb.wait_live(viewer)
        expect(viewer.locator("#reconnecting")).to_be_hidden()
        expect(viewer.locator("#offline-title")).to_be_visible()
    finally:
        pages.close()
        srv.stop()
    assert not pages.errors, pages.errors


def test_first_frame_badge_keeps_the_tap_time_after_a_reconnect(pages: Pages) -> None:
    """The badge's first-frame time is the wait since the tap; a reconnect (same stream) does not
    replace it with its own, it is shown apart, labelled."""
    pages.host("badge", autostart=True)
    viewer = pages.viewer("badge", "bea")
    tb.wait_video_playing(viewer)
    badge = viewer.locator("#first-frame")
    expect(badge).to_have_text(re.compile(r"^first frame in \d+ ms$"), timeout=WAIT_MS)
    tapped = badge.get_attribute("data-ms")
    viewer.evaluate("window.liveroom.conn.resync('test: drop the socket')")  # a lost connection
    viewer.wait_for_function("Number(document.body.dataset.reconnects) >= 1", timeout=WAIT_MS)
    tb.wait_live(viewer)
    expect(badge).not_to_have_attribute("data-again-ms", "", timeout=VIDEO_WAIT_MS)
    expect(badge).to_have_attribute("data-ms", tapped or "")
    expect(badge).to_have_text(re.compile(rf"^first frame in {tapped} ms · back \d+ ms after reconnecting$"))
    tb.wait_video_playing(viewer)
    shot(viewer, "viewer-first-frame-after-reconnect")
