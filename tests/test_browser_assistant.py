"""The live-commerce assistant in real headless Chromium: a real server, a real
`liveroom assistant` process, the viewer page and the host console (pins, answers, the
question board, a price edit reaching the pinned card)."""

from __future__ import annotations

import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.test_browser import (
    ARTIFACTS,
    WAIT_MS,
    Pages,
    ServerProcess,
    _free_port,
    browser,  # noqa: F401 (fixture)
    expect,
    send_chat,
    shot,
)

ROOT = Path(__file__).resolve().parent.parent
CATALOGUE = ROOT / "client_demo" / "catalogue.yaml"


@pytest.fixture(scope="module")
def shop_server() -> Iterator[ServerProcess]:
    ARTIFACTS.mkdir(exist_ok=True)
    srv = ServerProcess(_free_port(), "--tick-ms", "20", "--reply-interval", "1")
    srv.start()
    bot = subprocess.Popen(
        [
            *(sys.executable, "-m", "server", "assistant", "--room", "shop"),
            *("--catalogue", str(CATALOGUE), "--server", f"ws://127.0.0.1:{srv.port}"),
        ],
        cwd=ROOT,
        stdout=subprocess.PIPE,
        stderr=subprocess.DEVNULL,
        text=True,
    )
    assert bot.stdout is not None
    line = bot.stdout.readline()  # blocks until the assistant joined
    assert "answering in room 'shop'" in line, line
    yield srv
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


def test_serve_demo_assistant_answers_in_room_demo(browser) -> None:  # noqa: F811
    """`serve --demo` (what scripts/serve.sh runs) starts the assistant: the tee is pinned and
    a viewer's "多少钱" gets its answer on the page."""
    srv = ServerProcess(_free_port(), "--demo")
    srv.start()
    pages = Pages(browser, srv.base)
    try:
        viewer = pages.viewer("demo", "dee", "Dee")
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
