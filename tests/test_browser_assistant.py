"""The live-commerce assistant in real headless Chromium: a real server, a real
`liveroom assistant` process, the viewer page and the host console (pins, answers, the
question board, a price edit reaching the pinned card, all of it intact after a reload)."""

from __future__ import annotations

import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.ports import free_port
from tests.test_browser import (
    ARTIFACTS,
    WAIT_MS,
    Pages,
    ServerProcess,
    browser,  # noqa: F401 (fixture)
    expect,
    send_chat,
    shot,
)

ROOT = Path(__file__).resolve().parent.parent
CATALOGUE = ROOT / "client_demo" / "catalogue.yaml"


def _assistant(srv: ServerProcess, room: str) -> subprocess.Popen[str]:
    bot = subprocess.Popen(
        [
            *(sys.executable, "-m", "server", "assistant", "--room", room),
            *("--catalogue", str(CATALOGUE), "--server", f"ws://127.0.0.1:{srv.port}"),
        ],
        cwd=ROOT,
        stdout=subprocess.PIPE,
        stderr=subprocess.DEVNULL,
        text=True,
    )
    assert bot.stdout is not None
    line = bot.stdout.readline()  # blocks until the assistant joined
    assert f"answering in room '{room}'" in line, line
    return bot


@pytest.fixture(scope="module")
def shop_server() -> Iterator[ServerProcess]:
    ARTIFACTS.mkdir(exist_ok=True)
    srv = ServerProcess(free_port(), "--tick-ms", "20", "--reply-interval", "1")
    srv.start()
    bots = [_assistant(srv, "shop"), _assistant(srv, "reload")]
    yield srv
    for bot in bots:
        bot.terminate()
        bot.wait(10)
    srv.stop()


def test_viewer_sees_answers_and_pins_host_uses_the_board(browser, shop_server: ServerProcess) -> None:  # noqa: F811
    pages = Pages(browser, shop_server.base)
    try:
        host = pages.host("shop")
        viewer = pages.viewer("shop", "vera", "Vera")

        # the host pins a product card: the viewer sees it above the chat
        host.fill("#pin-pid", "dress")
        host.fill("#pin-pname", "碎花连衣裙")
        host.fill("#pin-pprice", "259")
        host.click("#pin-product-form button")
        card = viewer.locator("#pins .pin.product")
        expect(card).to_contain_text("碎花连衣裙", timeout=WAIT_MS)
        expect(card).to_contain_text("¥259")

        # a question in the chat: the assistant's answer appears, addressed to the viewer
        send_chat(viewer, "多少钱")
        reply = viewer.locator("#chat-list li.reply.from-assistant.to-me")
        expect(reply).to_contain_text("@Vera", timeout=WAIT_MS)
        expect(reply).to_contain_text("¥259")
        row = host.locator('#board-list li[data-key="price:dress"]')
        expect(row).to_contain_text("answered by assistant", timeout=WAIT_MS)

        # the host edits the price on the pinned card: the viewer's card follows at once
        host.locator("#pins .pin.product .pin-edit input[aria-label=Price]").fill("199")
        host.locator("#pins .pin.product .pin-edit button").click()
        expect(viewer.locator("#pins .pin.product")).to_contain_text("¥199", timeout=WAIT_MS)
        host.fill("#edit-pid", "dress")  # or by product id, pinned or not
        host.fill("#edit-stock", "0")
        host.click("#product-edit-form button")
        expect(viewer.locator("#pins .pin.product")).to_contain_text("sold out", timeout=WAIT_MS)

        # a question the catalogue cannot answer: left open on the board; the host answers it
        send_chat(viewer, "能寄到火星吗？")
        open_row = host.locator("#board-list li.board-row.open")
        expect(open_row).to_contain_text("能寄到火星吗", timeout=WAIT_MS)
        open_row.locator("button", has_text="Answer").click()
        open_row.locator(".board-answer input").fill("火星暂不发货")
        open_row.locator(".board-answer button").click()
        host_reply = viewer.locator("#chat-list li.reply.from-host")
        expect(host_reply).to_contain_text("火星暂不发货", timeout=WAIT_MS)
        expect(viewer.locator("#pins .pin.message")).to_contain_text("火星暂不发货", timeout=WAIT_MS)
        expect(host.locator('#board-list li.board-row:has-text("能寄到火星吗")')).to_contain_text(
            "answered by host", timeout=WAIT_MS
        )
        shot(viewer, "viewer-assistant-pins")
        shot(host, "host-question-board")
    finally:
        pages.close()
    assert not pages.errors, pages.errors


def test_host_console_reload_keeps_the_board_pins_and_answers(browser, shop_server: ServerProcess) -> None:  # noqa: F811
    """The host reloads the console: the question board (asked, by whom, answered or open), the
    pins with an edited price and the answers in the chat come back from the staff snapshot."""
    pages = Pages(browser, shop_server.base)
    try:
        host = pages.host("reload")
        viewer = pages.viewer("reload", "vera", "Vera Wang")
        send_chat(viewer, "T恤多少钱")  # the assistant answers this one
        send_chat(viewer, "主播今天几点下播？")  # off-catalogue: left open on the board
        answered = host.locator('#board-list li[data-key="price:tee"]')
        expect(answered).to_contain_text("answered by assistant", timeout=WAIT_MS)
        expect(answered).to_contain_text("asked by Vera Wang")
        open_row = host.locator("#board-list li.board-row.open")
        expect(open_row).to_have_count(1, timeout=WAIT_MS)
        expect(open_row).to_contain_text("asked by Vera Wang")
        assistant_line = host.locator("#chat-list li.reply.from-assistant")
        expect(assistant_line).to_contain_text("@Vera Wang", timeout=WAIT_MS)
        expect(assistant_line).to_contain_text("¥129")
        host.fill("#pin-pid", "tee")
        host.fill("#pin-pname", "纯棉圆领T恤")
        host.fill("#pin-pprice", "129")
        host.click("#pin-product-form button")
        host.fill("#pin-text", "今晚8点抽奖")
        host.click("#pin-form button")
        expect(host.locator("#pins .pin")).to_have_count(2, timeout=WAIT_MS)
        host.locator("#pins .pin.product .pin-edit input[aria-label=Price]").fill("99")
        host.locator("#pins .pin.product .pin-edit button").click()
        expect(viewer.locator("#pins .pin.product")).to_contain_text("¥99", timeout=WAIT_MS)
        # the host answers the open question from the board: by display name, like the assistant
        open_row.locator("button", has_text="Answer").click()
        open_row.locator(".board-answer input").fill("十点下播")
        open_row.locator(".board-answer button").click()
        host_line = viewer.locator("#chat-list li.reply.from-host")
        expect(host_line).to_contain_text("@Vera Wang: 十点下播", timeout=WAIT_MS)
        expect(host.locator("#pins .pin")).to_have_count(3, timeout=WAIT_MS)  # the answer, pinned
        rows = host.locator("#board-list li.board-row")
        expect(rows).to_have_count(2)
        expect(host.locator("#board-list li.board-row.open")).to_have_count(0, timeout=WAIT_MS)
        before = {
            "rows": rows.evaluate_all("(rs) => rs.map((r) => r.innerText)"),
            "pins": host.locator("#pins .pin").evaluate_all("(ps) => ps.map((p) => p.dataset.id)"),
        }
        shot(host, "host-console-before-reload")

        host.reload()
        host.wait_for_function("document.body.dataset.conn === 'live'", timeout=WAIT_MS)
        expect(host.locator("#board-list li.board-row")).to_have_count(2, timeout=WAIT_MS)
        after_rows = host.locator("#board-list li.board-row").evaluate_all(
            "(rs) => rs.map((r) => r.innerText)"
        )
        assert after_rows == before["rows"]
        expect(host.locator('#board-list li[data-key="price:tee"]')).to_contain_text("answered by assistant")
        expect(host.locator("#board-list")).to_contain_text("answered by host")
        expect(host.locator("#board-empty")).to_be_hidden()
        pins = host.locator("#pins .pin")
        expect(pins).to_have_count(3)
        assert pins.evaluate_all("(ps) => ps.map((p) => p.dataset.id)") == before["pins"]
        expect(host.locator("#pins .pin.product")).to_contain_text("¥99")
        expect(host.locator("#pins .pin.message", has_text="今晚8点抽奖")).to_have_count(1)
        expect(host.locator("#chat-list li.reply.from-assistant")).to_contain_text("@Vera Wang")
        expect(host.locator("#chat-list li.reply.from-host")).to_contain_text("@Vera Wang: 十点下播")
        expect(host.locator("#chat-list li.msg", has_text="T恤多少钱")).to_have_count(1)
        shot(host, "host-console-after-reload")
    finally:
        pages.close()
    assert not pages.errors, pages.errors


def test_serve_demo_assistant_answers_in_room_demo(browser) -> None:  # noqa: F811
    """`serve --demo` (what scripts/serve.sh runs) starts the assistant: the tee is pinned and
    a viewer's "多少钱" gets its answer on the page."""
    srv = ServerProcess(free_port(), "--demo")
    srv.start()
    pages = Pages(browser, srv.base)
    try:
        viewer = pages.viewer("demo", "dee", "Dee")
        # the assistant pins the tee when it joins, and joins only after loading its dictionary
        # (over 15 s on a loaded machine): wait for that, then the pin has WAIT_MS to show
        srv.wait_output("assistant: answering in room 'demo'")
        expect(viewer.locator('#pins .pin.product[data-id="product:tee"]')).to_contain_text(
            "¥129", timeout=WAIT_MS
        )
        send_chat(viewer, "多少钱")
        reply = viewer.locator("#chat-list li.reply.from-assistant.to-me")
        expect(reply).to_contain_text("¥129", timeout=WAIT_MS)
        expect(reply).to_contain_text("@Dee")
        shot(viewer, "viewer-demo-assistant")
    finally:
        pages.close()
        srv.stop()
    assert not pages.errors, pages.errors
