"""Replies, question tags, pins and product edits (server/node/answers.py) over a real server."""

from __future__ import annotations

from typing import Any

import aiohttp
import msgpack
import pytest
from websockets.asyncio.client import connect

from server.config import Config
from server.node.answers import ReplyThrottle
from server.room.state import apply_pin, apply_product
from server.wire import protocol
from server.wire.fingerprint import answer_fingerprint
from server.wire.protocol import ErrorCode, ProtocolError

ADMIN = "admin-token-for-answers"


def parse(**frame: Any) -> Any:
    return protocol.parse_client_message(msgpack.packb(frame))


def test_parsing_refuses_bad_fields() -> None:
    assert parse(t="reply", text="¥129", seqs=[3, 3, 4], askers=["a"]).seqs == [3, 4]
    for frame in (
        {"t": "reply", "text": "x", "seqs": []},
        {"t": "reply", "text": "x", "seqs": [0]},
        {"t": "reply", "text": "x", "seqs": [1], "askers": ["bad id!"]},
        {"t": "reply", "text": "x", "seqs": [1], "pin": 1},
        {"t": "pin"},
        {"t": "pin", "text": "a", "product": {"id": "p", "name": "n"}},
        {"t": "pin", "product": {"id": "p"}},
        {"t": "pin", "product": {"id": "p", "name": "n", "price": "12"}},
        {"t": "product", "id": "p"},
        {"t": "product", "id": "p", "stock": -1},
        {"t": "question", "key": "", "label": "x", "seqs": [1]},
    ):
        with pytest.raises(ProtocolError) as error:
            protocol.parse_client_message(msgpack.packb(frame))
        assert error.value.code == ErrorCode.BAD_FIELD, frame
    card = parse(t="pin", product={"id": "tee", "name": "Tee", "price": 129, "secret": "x"}).product
    assert card == {"id": "tee", "name": "Tee", "price": 129}


def test_throttle_interval_and_repeat_window() -> None:
    now = [100.0]
    throttle = ReplyThrottle(3.0, 60.0, clock=lambda: now[0])
    throttle.check("r", "@a: ¥129", by_assistant=True)
    with pytest.raises(ProtocolError) as error:
        throttle.check("r", "@b: other", by_assistant=True)
    assert error.value.code == ErrorCode.RATE_LIMITED and error.value.retry_after == 3.0
    throttle.check("r2", "@b: other", by_assistant=True)  # per room
    throttle.check("r", "host says hi", by_assistant=False)  # the host is not interval-limited
    now[0] += 3.0
    with pytest.raises(ProtocolError) as error:
        throttle.check("r", "@c @d: ¥129!", by_assistant=True)  # same answer, other askers
    assert error.value.code == ErrorCode.REPEATED
    now[0] += 57.0
    throttle.check("r", "@c: ¥129", by_assistant=True)
    assert answer_fingerprint("@a @b: ¥129, S-XL") == answer_fingerprint("@c ¥129 S-XL")
    now[0] += 60.0
    throttle.sweep(now[0])
    assert not throttle._given and not throttle._last  # idle rooms are forgotten


def test_pins_keep_the_newest_three() -> None:
    pins: dict[str, Any] = {}
    for i in range(5):
        apply_pin(pins, {"t": "pin", "id": f"msg:{i}", "text": str(i)})
    assert list(pins) == ["msg:2", "msg:3", "msg:4"]
    apply_pin(pins, {"t": "pin", "id": "msg:2", "text": "again"})  # re-pinned: now the newest
    assert list(pins) == ["msg:3", "msg:4", "msg:2"]
    apply_pin(pins, {"t": "unpin", "id": "msg:4"})
    assert list(pins) == ["msg:3", "msg:2"]


@pytest.fixture
def config(config: Config) -> Config:
    config.reply_interval = 30.0
    config.reply_repeat_window = 60.0
    config.admin_token = ADMIN
    return config


def is_error(code: ErrorCode) -> Any:
    return lambda f: f["t"] == "error" and f["code"] == code


async def test_reply_pin_and_snapshot(join: Any) -> None:
    viewer = await join("vic", role="viewer")
    bot = await join("bot", role="assistant")
    host = await join("hana", role="host")
    await viewer.send(t="danmaku", text="多少钱")
    (question,) = await bot.events(lambda e: e["t"] == "danmaku", 1)
    await bot.send(t="reply", text="@vic: ¥129", seqs=[question["seq"]], askers=["vic"])
    (reply,) = await viewer.events(lambda e: e["t"] == "reply", 1)
    assert reply["from"] == "assistant" and reply["uid"] == "bot"
    assert reply["seqs"] == [question["seq"]] and reply["askers"] == ["vic"] and reply["text"] == "@vic: ¥129"

    # one assistant reply per interval; the host is not held back by it
    await bot.send(t="reply", text="@vic: S-XL", seqs=[question["seq"]], cid=7)
    error = await bot.recv_until(lambda f: f["t"] == "error")
    assert error["code"] == ErrorCode.RATE_LIMITED and error["ref"] == 7 and error["retry_after"] > 0
    await host.send(t="reply", text="@vic: ¥129", seqs=[question["seq"]], cid=8)  # same answer
    assert (await host.recv_until(lambda f: f["t"] == "error"))["code"] == ErrorCode.REPEATED
    await host.send(t="reply", text="包邮哦", seqs=[question["seq"]], pin=True)
    (host_reply,) = await viewer.events(lambda e: e["t"] == "reply", 1)
    assert host_reply["from"] == "host"

    # the assistant pins a product card: it is in the next joiner's snapshot
    card = {"id": "tee", "name": "Cotton tee", "price": 129, "stock": 40, "sizes": ["S", "M"]}
    await bot.send(t="pin", product=card, cid="p1")
    ack = await bot.recv_until(lambda f: f["t"] == "pin_ack")
    assert ack == {"t": "pin_ack", "id": "product:tee", "cid": "p1"}
    await viewer.events(lambda e: e["t"] == "pin" and e["id"] == "product:tee", 1)
    late = await join("late")
    pins = {p["id"]: p for p in late.snapshot["pins"]}
    assert pins["product:tee"]["product"] == card
    assert any(p["kind"] == "message" and p["text"] == "包邮哦" for p in pins.values())

    # the host edits the price: a product event, and the pinned card follows in every view
    await host.send(t="product", id="tee", price=99)
    (edited,) = await late.events(lambda e: e["t"] in ("product", "pin"), 1)
    assert edited == {**edited, "t": "product", "id": "tee", "price": 99}
    again = await join("later")
    assert {p["id"]: p for p in again.snapshot["pins"]}["product:tee"]["product"]["price"] == 99

    await host.send(t="unpin", id="product:tee")
    await late.events(lambda e: e["t"] == "unpin" and e["id"] == "product:tee", 1)
    assert "product:tee" not in {p["id"] for p in (await join("last")).snapshot["pins"]}
    await host.send(t="unpin", id="product:tee", cid=9)
    assert (await host.recv_until(lambda f: f["t"] == "error"))["code"] == ErrorCode.PIN_TARGET


async def test_viewers_may_not_answer_and_the_assistant_may_not_moderate(join: Any) -> None:
    viewer = await join("vic")
    bot = await join("bot", role="assistant")
    for frame in (
        {"t": "reply", "text": "x", "seqs": [1]},
        {"t": "pin", "text": "x"},
        {"t": "unpin", "id": "msg:1"},
        {"t": "product", "id": "tee", "price": 1},
        {"t": "question", "key": "k", "label": "l", "seqs": [1]},
    ):
        await viewer.send(**frame, cid="c")
        error = await viewer.recv_until(lambda f: f["t"] == "error")
        assert error["code"] == ErrorCode.FORBIDDEN, frame
    await bot.send(t="reply", text="x", seqs=[10_000], cid="future")
    error = await bot.recv_until(lambda f: f["t"] == "error")
    assert error["code"] == ErrorCode.MOD_TARGET and error["ref"] == "future"
    await bot.send(t="mod", action="mute", uid="vic", cid="m")
    assert (await bot.recv_until(lambda f: f["t"] == "error"))["code"] == ErrorCode.FORBIDDEN


async def test_questions_and_answers_reach_room_stats(app: Any, join: Any) -> None:
    viewer = await join("vic")
    other = await join("olga")
    bot = await join("bot", role="assistant")
    host = await join("hana", role="host")
    await viewer.send(t="danmaku", text="多少钱")
    await other.send(t="danmaku", text="how much")
    await other.send(t="danmaku", text="发什么快递")
    events = await bot.events(lambda e: e["t"] == "danmaku", 3)
    s1, s2, s3 = (e["seq"] for e in events)
    await bot.send(
        t="question", key="price:tee", label="price of the tee", seqs=[s1, s2], askers=["vic", "olga"]
    )
    await bot.send(t="question", key="faq:courier", label="which courier", seqs=[s3], askers=["olga"])
    tagged = await host.events(lambda e: e["t"] == "question", 2)
    assert tagged[0]["seqs"] == [s1, s2] and tagged[0]["label"] == "price of the tee"
    await bot.send(t="reply", text="@vic @olga: ¥129", seqs=[s1, s2], askers=["vic", "olga"])
    await host.events(lambda e: e["t"] == "reply", 1)
    url = f"http://127.0.0.1:{app.http_port}/api/rooms/r1/stats"
    async with (
        aiohttp.ClientSession() as http,
        http.get(url, headers={"Authorization": f"Bearer {ADMIN}"}) as r,
    ):
        assert r.status == 200
        stats = await r.json()
    questions = stats["hour"]["questions"]
    assert questions["asked"] == 3 and questions["answered_assistant"] == 2
    assert questions["answered_host"] == 0 and questions["unanswered"] == 1
    assert questions["top_unanswered"] == [{"label": "which courier", "count": 1}]
    assert questions["latency_ms"]["p95"] is not None and questions["latency_ms"]["p95"] >= 0


async def test_answers_go_through_the_banned_words(app: Any, join: Any, tmp_path: Any) -> None:
    from server.abuse.content import WordList

    path = tmp_path / "banned.txt"
    path.write_text("scam\n[mask]\ndarn\n", encoding="utf-8")
    app.guard.words = WordList(str(path))
    viewer = await join("vic")
    bot = await join("bot", role="assistant")
    await viewer.send(t="danmaku", text="how much?")
    (question,) = await bot.events(lambda e: e["t"] == "danmaku", 1)
    await bot.send(t="reply", text="@vic: a SCAM price", seqs=[question["seq"]], cid="r")
    error = await bot.recv_until(lambda f: f["t"] == "error")
    assert error["code"] == ErrorCode.CONTENT_REJECTED and error["ref"] == "r"
    await bot.send(t="pin", text="darn good deal: https://shop.example/tee")  # links allowed, words masked
    (pin,) = await viewer.events(lambda e: e["t"] == "pin", 1)
    assert pin["text"] == "**** good deal: https://shop.example/tee"


def test_product_edits_merge_field_by_field_and_edit_the_pinned_card() -> None:
    products: dict[str, Any] = {}
    pins: dict[str, Any] = {}
    apply_pin(pins, {"t": "pin", "id": "product:tee", "product": {"id": "tee", "price": 129, "stock": 40}})
    apply_pin(pins, {"t": "pin", "id": "msg:1", "text": "hi"})
    apply_product(products, pins, {"t": "product", "id": "tee", "price": 99, "seq": 3})
    apply_product(products, pins, {"t": "product", "id": "cap", "stock": 1, "seq": 4})
    apply_product(products, pins, {"t": "product", "id": "tee", "stock": 5, "seq": 5})
    assert list(products) == ["cap", "tee"]  # the product edited last comes last
    assert products["tee"] == {"t": "product", "id": "tee", "price": 99, "stock": 5, "seq": 5}
    assert list(pins) == ["product:tee", "msg:1"]  # the card keeps its place
    assert pins["product:tee"]["product"] == {"id": "tee", "price": 99, "stock": 5}
    for i in range(protocol.MAX_PRODUCT_EDITS):
        apply_product(products, pins, {"t": "product", "id": f"p{i}", "price": i, "seq": 10 + i})
    assert len(products) == protocol.MAX_PRODUCT_EDITS and "cap" not in products and "tee" not in products


async def _joined(url: str, user: str, role: str, name: str, resume: dict[str, Any] | None = None) -> Any:
    from tests.conftest import WsClient, token

    client = WsClient(await connect(url))
    join = {"t": "join", "token": token("r1", user, role, name=name)}  # type: ignore[arg-type]
    if resume is not None:
        join["resume"] = resume
    await client.send(**join)
    client.snapshot = await client.recv()
    assert client.snapshot["t"] == "snapshot", client.snapshot
    return client


async def test_host_tools_survive_a_reload(url: str, join: Any) -> None:
    """A host that reconnects gets the board (questions, names, answered state), the pins, the
    recent replies and the product edits; a late moderator too; a viewer's snapshot has none."""
    vic = await _joined(url, "vic", "viewer", "Vic Li")
    olga = await _joined(url, "olga", "viewer", "Olga K")
    bot = await join("bot", role="assistant")
    host = await _joined(url, "hana", "host", "Hana")
    opened = [vic, olga, host]
    try:
        before = host.snapshot
        assert before["qa"] == [] and before["products"] == []
        await vic.send(t="danmaku", text="T恤多少钱")
        await olga.send(t="danmaku", text="how much is the tee")
        await olga.send(t="danmaku", text="发什么快递")
        s1, s2, s3 = (e["seq"] for e in await bot.events(lambda e: e["t"] == "danmaku", 3))
        await bot.send(
            t="question", key="price:tee", label="price of the tee", seqs=[s1, s2], askers=["vic", "olga"]
        )
        await bot.send(t="question", key="faq:courier", label="which courier", seqs=[s3], askers=["olga"])
        await bot.send(t="reply", text="@Vic Li @Olga K: ¥129", seqs=[s1, s2], askers=["vic", "olga"])
        await host.send(t="pin", product={"id": "tee", "name": "Tee", "price": 129, "stock": 40})
        await host.send(t="product", id="tee", price=99)
        await host.send(t="product", id="tee", stock=5)
        await host.send(t="reply", text="@Olga K: SF Express", seqs=[s3], askers=["olga"], pin=True)
        seen = await host.events(lambda e: e["t"] in ("question", "reply", "product"), 6)
        questions = [e for e in seen if e["t"] == "question"]
        assert questions[0]["names"] == ["Vic Li", "Olga K"] and questions[1]["names"] == ["Olga K"]
        await host.close()

        again = await _joined(url, "hana", "host", "Hana")  # a reload: a fresh join
        late = await _joined(url, "mo", "moderator", "Mo")  # staff joining late
        viewer = await _joined(url, "vera", "viewer", "Vera")
        opened += [again, late, viewer]
        for snap in (again.snapshot, late.snapshot):
            assert [(e["t"], e["seq"]) for e in snap["qa"]] == [
                (e["t"], e["seq"]) for e in seen if e["t"] != "product"
            ]
            answered = {seq: e["from"] for e in snap["qa"] if e["t"] == "reply" for seq in e["seqs"]}
            assert answered == {s1: "assistant", s2: "assistant", s3: "host"}
            assert snap["qa"][0]["names"] == ["Vic Li", "Olga K"]
            assert [(p["id"], p["price"], p["stock"]) for p in snap["products"]] == [("tee", 99, 5)]
            pins = {p["id"]: p for p in snap["pins"]}
            assert (
                pins["product:tee"]["product"]["price"] == 99 and pins["product:tee"]["product"]["stock"] == 5
            )
            assert any(p["kind"] == "message" and p["text"] == "@Olga K: SF Express" for p in pins.values())
        assert "qa" not in viewer.snapshot and "products" not in viewer.snapshot

        # a resume the room can no longer recover is a fresh snapshot: the board comes with it
        stale = await _joined(url, "hana", "host", "Hana", resume={"epoch": "gone", "seq": 1})
        opened.append(stale)
        assert stale.snapshot["recovered"] is False and len(stale.snapshot["qa"]) == 4
        # a recovered resume replays what was missed, the board's events among them
        back = await _joined(
            url, "hana", "host", "Hana", resume={"epoch": before["epoch"], "seq": before["seq"]}
        )
        opened.append(back)
        assert back.snapshot["recovered"] is True
        missed = [e["t"] for e in back.snapshot["missed"] if e["t"] in ("question", "reply", "product")]
        assert missed == ["question", "question", "reply", "product", "product", "reply"]
    finally:
        for client in opened:
            await client.close()


async def test_question_names_come_from_the_danmaku_else_the_tagger(url: str, join: Any) -> None:
    """A question event names its askers: from the danmaku while the room still holds it (the
    tagger cannot rename anyone), else the display name the tagger gave, else the uid."""
    vic = await _joined(url, "vic", "viewer", "Vic Li")
    bot = await join("bot", role="assistant")
    host = await join("hana", role="host")
    await vic.send(t="danmaku", text="多少钱")
    (asked,) = await bot.events(lambda e: e["t"] == "danmaku", 1)
    await bot.send(
        t="question", key="k1", label="l", seqs=[asked["seq"]], askers=["vic"], names=["Someone Else"]
    )
    (tagged,) = await host.events(lambda e: e["t"] == "question", 1)
    assert tagged["names"] == ["Vic Li"]
    for i in range(55):  # more than recent_size (50): the question's danmaku is no longer held
        await vic.send(t="danmaku", text=f"chat {i}")
    await bot.events(lambda e: e["t"] == "danmaku", 55)
    await bot.send(t="question", key="k2", label="l", seqs=[asked["seq"]] * 2, askers=["vic", "olga"])
    await bot.send(
        t="question", key="k3", label="l", seqs=[asked["seq"]], askers=["vic"], names=["Vic\u202e Li "]
    )
    late = await host.events(lambda e: e["t"] == "question", 2)
    assert late[0]["names"] == ["vic", "olga"]  # nobody named them: the uids
    assert late[1]["names"] == ["Vic Li"]  # the tagger's, cleaned like a token's name
    await bot.send(t="question", key="k4", label="l", seqs=[1], askers=["vic"], names=["x" * 65], cid="n")
    error = await bot.recv_until(lambda f: f["t"] == "error")
    assert error["code"] == ErrorCode.BAD_FIELD and error["ref"] == "n"
    await vic.close()
