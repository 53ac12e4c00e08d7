"""The live-commerce assistant: its pure core, then the real `liveroom assistant` process
against a real server (question -> reply, chitchat -> nothing, pacing, pins in the snapshot)."""

from __future__ import annotations

import asyncio
import contextlib
import json
import subprocess
import sys
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import pytest

from server.assistant.catalogue import CatalogueError, load, parse
from server.assistant.core import Assistant, Understanding
from server.config import Config
from server.deadline import within

CATALOGUE = Path(__file__).resolve().parent.parent / "client_demo" / "catalogue.yaml"


@pytest.fixture(scope="module")
def brain() -> Understanding:
    return Understanding(load(CATALOGUE))


def test_catalogue_errors_name_the_entry() -> None:
    with pytest.raises(CatalogueError, match=r"products\[0\]: 'price'"):
        parse({"products": [{"id": "a", "name": "A", "price": "cheap"}]})
    with pytest.raises(CatalogueError, match="duplicate id"):
        parse({"products": [{"id": "a", "name": "A"}, {"id": "a", "name": "B"}]})
    with pytest.raises(CatalogueError, match=r"faq\[0\]"):
        parse({"faq": [{"id": "x", "q": [], "a": "y"}]})


@pytest.mark.parametrize(
    ("text", "current", "key"),
    [
        ("多少钱", "tee", "price:tee"),
        ("M码?", "jeans", "size:jeans:M"),
        ("how much is the floral dress?", None, "price:dress"),
        ("包邮吗", None, "faq:shipping"),
        ("pirce of the jeans?", None, "price:jeans"),
    ],
)
def test_questions_are_understood(brain: Understanding, text: str, current: str | None, key: str) -> None:
    match = brain.understand(text, current)
    assert match is not None and match.confident and match.key == key


@pytest.mark.parametrize("text", ["主播好美", "666", "这个颜色好好看", "love this dress", "已下单"])
def test_chitchat_is_not_a_question(brain: Understanding, text: str) -> None:
    match = brain.understand(text, "dress")
    assert match is None or not match.confident


def test_core_answers_first_askers_at_once_groups_later_ones_and_follows_edits(brain: Understanding) -> None:
    bot = Assistant(brain.catalogue, "bot", understanding=brain, reply_interval=3.0, gather=1.0)
    pin = {"t": "pin", "id": "product:tee", "kind": "product", "product": {"id": "tee", "name": "T"}}
    bot.on_frame({"t": "snapshot", "pins": [pin], "limits": {"reply_ms": 3000}}, 0.0)
    bot.on_frame(
        {"t": "batch", "events": [_danmaku(1, "amy", "多少钱"), _danmaku(2, "bob", "how much?")]}, 0.0
    )
    tags, reply = bot.due(0.1)  # a question nobody asked lately: answered at once, both askers
    assert {t["key"]: t["seqs"] for t in tags} == {"price:tee": [1, 2]}
    assert reply is not None and reply.frame["seqs"] == [1, 2] and reply.frame["askers"] == ["amy", "bob"]
    assert reply.frame["text"].startswith("@amy @bob: ") and "¥129" in reply.frame["text"]
    # later askers of the same question within `gather`: one follow-up, after the window
    bot.on_frame({"t": "batch", "events": [_danmaku(3, "cat", "价格?"), _danmaku(4, "dan", "主播好美")]}, 0.5)
    bot.on_frame({"t": "batch", "events": [_danmaku(5, "eli", "多少钱呀")]}, 0.9)
    assert bot.due(1.2)[1] is None  # still gathering (and the server's interval is 3 s)
    _, follow = bot.due(3.1)
    assert follow is not None and follow.frame["seqs"] == [3, 5]
    assert follow.frame["text"].startswith("@cat @eli: 同上") and "¥129" in follow.frame["text"]
    bot.on_frame({"t": "batch", "events": [_danmaku(6, "fay", "包邮吗")]}, 3.2)
    assert bot.due(5.0)[1] is None  # one reply per interval
    _, second = bot.due(6.1)
    assert second is not None and second.frame["seqs"] == [6]
    # the host edits the price: the next answer has it; the host's own reply drops its askers
    bot.on_frame({"t": "batch", "events": [{"t": "product", "id": "tee", "price": 99, "seq": 9}]}, 30.0)
    bot.on_frame({"t": "batch", "events": [_danmaku(10, "eve", "价格"), _danmaku(11, "fay", "链接")]}, 30.0)
    bot.on_frame({"t": "batch", "events": [{"t": "reply", "uid": "host", "seqs": [11], "seq": 12}]}, 30.0)
    _, third = bot.due(30.1)
    assert third is not None and "¥99" in third.frame["text"] and third.frame["seqs"] == [10]
    assert bot.due(40.0)[1] is None  # the link question was answered by the host
    # refused by the server (rate limit): the askers come back and wait for retry_after
    bot.on_frame({"t": "error", "code": 4300, "ref": third.frame["cid"], "retry_after": 5.0}, 40.0)
    assert bot.due(44.0)[1] is None
    assert bot.due(45.1)[1] is not None
    # refused for good (a seq the room does not have): dropped, not retried
    bot.on_frame({"t": "batch", "events": [_danmaku(20, "gus", "尺码?")]}, 50.0)
    _, fourth = bot.due(50.1)
    assert fourth is not None
    bot.on_frame({"t": "error", "code": 4404, "ref": fourth.frame["cid"]}, 50.2)
    assert bot.due(60.0)[1] is None
    # a new epoch (the room's stream restarted): pending askers of the old one are forgotten
    bot.on_frame({"t": "batch", "events": [_danmaku(21, "hal", "链接")]}, 70.0)
    bot.on_frame({"t": "snapshot", "epoch": "e2", "pins": [pin]}, 70.0)
    assert bot.due(80.0)[1] is None


def test_goods_the_shop_does_not_sell_are_left_to_the_host(brain: Understanding) -> None:
    """The room discussed the dress; "耳机多少钱" must not get the dress's price."""
    bot = Assistant(brain.catalogue, "bot", understanding=brain, reply_interval=0.0, gather=1.0)
    bot.on_frame({"t": "snapshot", "pins": []}, 0.0)
    bot.on_frame({"t": "batch", "events": [_danmaku(1, "amy", "碎花裙多少钱")]}, 0.0)
    assert bot.due(0.1)[1] is not None
    for seq, text in enumerate(["耳机多少钱", "how much are the sunglasses?", "主播多高", "这首歌叫什么"], 2):
        bot.on_frame({"t": "batch", "events": [_danmaku(seq, f"u{seq}", text)]}, 1.0)
    tags, reply = bot.due(5.0)
    assert reply is None
    assert len(tags) == 4 and all(not t["key"].startswith("price:") for t in tags)
    # a question with no goods at all, right after the dress was asked about: the dress
    bot.on_frame({"t": "batch", "events": [_danmaku(9, "amy", "有M码吗")]}, 6.0)
    assert bot.due(6.1)[1].match.key == "size:dress:M"
    # ... but not once the context is old
    bot.on_frame({"t": "batch", "events": [_danmaku(10, "zed", "有M码吗")]}, 200.0)
    assert bot.due(200.1)[1] is None


def _shop(products: str) -> Understanding:
    return Understanding(parse({"products": json.loads(products)}))


def test_goods_nouns_jieba_splits_are_still_seen() -> None:
    """充电宝 and 暖手宝 are split by jieba (充电 + 宝): joined back by their head character, they
    are goods the shop does not sell, so the product in context is not answered for them."""
    shop = _shop('[{"id": "nuts", "name": "每日坚果", "aliases": ["坚果"], "price": 89, "stock": 9}]')
    for text in ["充电宝多少钱", "暖手宝多少钱", "电蚊拍还有货吗"]:
        match = shop.understand(text, "nuts")
        assert match is not None and not match.confident and match.other, (text, match)
    match = shop.understand("多少钱", "nuts")  # no goods noun at all: the context answers
    assert match is not None and match.confident and match.key == "price:nuts"
    # where the compound is sold, it names the product
    sold = _shop('[{"id": "pb", "name": "10000毫安充电宝", "price": 99, "stock": 3}]')
    match = sold.understand("充电宝多少钱", None)
    assert match is not None and match.confident and match.key == "price:pb"


def test_a_bare_head_noun_inside_a_longer_name_is_left_to_the_host() -> None:
    """A shop selling 拖鞋 (slippers) does not sell 鞋 (shoes) in general: "鞋子多少钱" is
    ambiguous, so it goes to the host's board instead of the slippers' or the context's price;
    an alias that is the bare noun says otherwise."""
    products = [
        {"id": "slippers", "name": "棉拖鞋", "aliases": ["拖鞋"], "price": 35, "stock": 9},
        {"id": "lamp", "name": "护眼台灯", "aliases": ["台灯"], "price": 139, "stock": 9},
    ]
    shop = _shop(json.dumps(products))
    for text in ["鞋子多少钱", "鞋有38的吗", "灯多少钱"]:
        for context in (None, "lamp", "slippers"):
            match = shop.understand(text, context)
            assert match is not None and not match.confident, (text, context, match)
    match = shop.understand("拖鞋多少钱", "lamp")
    assert match is not None and match.confident and match.key == "price:slippers"
    products[0]["aliases"] = ["拖鞋", "鞋"]
    aliased = _shop(json.dumps(products))
    match = aliased.understand("鞋子多少钱", "lamp")
    assert match is not None and match.confident and match.key == "price:slippers"


@pytest.mark.parametrize(
    ("text", "key"),
    [
        ("鞋子多少钱", "price:sneakers"),  # alias 鞋 asked with its suffix
        ("鞋有36的吗", "size:sneakers:36"),
        ("xiaobaixie多少钱", "price:sneakers"),  # pinyin
        ("xbx有货吗", "stock:sneakers"),  # pinyin initials
        ("longjing how much", "price:tea"),  # a word of the English name
        ("is the hoodie in stock", "stock:hoodie"),
        ("does the tee come in black?", "colour:tee"),
        ("is it available in black?", "colour:tee"),  # "available" with another aspect: not stock
        ("do you ship to Canada?", "faq:overseas"),  # answered by the overseas FAQ when there is one
    ],
)
def test_products_and_topics_are_recognised(brain: Understanding, text: str, key: str) -> None:
    match = brain.understand(text, "tee")
    assert match is not None and match.confident and match.key == key, match


def test_faq_kinds_answers_without_links_and_english_fields() -> None:
    """FAQ understood by kind (not id), no link, sold out, "stick", English sizes."""
    shop = Understanding(
        parse(
            {
                "products": [
                    {
                        "id": "a",
                        "name": "复古帆布鞋",
                        "aliases": ["鞋"],
                        "price": 189,
                        "sizes": ["42"],
                        "stock": 0,
                    },
                    {
                        "id": "b",
                        "name": "真丝眼罩",
                        "name_en": "silk eye mask",
                        "sizes": ["均码"],
                        "stock": 5,
                    },
                ],
                "faq": [
                    {"id": "f1", "q": ["包邮吗", "free shipping"], "a": "包邮 / free shipping"},
                    {"id": "f2", "q": ["我该穿什么码", "what size should I get"], "a": "留身高 / tell us"},
                    {"id": "f3", "kind": "returns", "q": ["能退吗"], "a": "七天 / 7 days"},
                ],
            }
        )
    )
    assert [f.kind for f in shop.catalogue.faq] == ["shipping", "size_advice", "returns"]
    assert shop.understand("包不包邮", None).key == "faq:f1"
    assert shop.understand("170cm 60kg穿什么码", "a").key == "faq:f2"
    assert shop.understand("do you ship to Canada?", None).confident is False  # the FAQ is domestic
    buy = shop.understand("怎么买", "b")
    assert buy.confident and shop.answer(buy, "zh") == "真丝眼罩：点直播间下方的购物车下单"
    size = shop.understand("鞋子有42码吗", None)
    assert size.key == "size:a:42" and "售罄" in shop.answer(size, "zh")  # sold out, said so
    assert (
        shop.answer(shop.understand("what size is the eye mask", None), "en")
        == "silk eye mask sizes: one size"
    )
    stick = shop.understand("does it stick?", "b")
    assert stick is None or not stick.key.startswith("stock")


def test_check_command_reports_catalogue_problems_and_scores(tmp_path: Path) -> None:
    catalogue = tmp_path / "c.yaml"
    catalogue.write_text(
        "products:\n"
        "  - {id: a, name: 帆布鞋, aliases: [鞋], price: 9, sizes: [均码]}\n"
        "  - {id: b, name: 拖鞋, aliases: [鞋], price: 5}\n"
        "faq:\n  - {id: x, kind: shipping, q: [包邮吗], a: 包邮}\n",
        encoding="utf-8",
    )
    questions = tmp_path / "q.jsonl"
    questions.write_text(
        '{"q": "帆布鞋多少钱", "want": ["price:a"]}\n{"q": "包邮吗", "want": ["faq:x"]}\n'
        '{"q": "主播好美", "want": []}\n{"q": "耳机多少钱", "want": []}\n',
        encoding="utf-8",
    )
    out = subprocess.run(
        [
            *(sys.executable, "-m", "server", "assistant", "check", "--catalogue", str(catalogue)),
            *("--questions", str(questions), "--room-order", "--json"),
        ],
        capture_output=True,
        text=True,
        timeout=120,
        check=True,
    ).stdout
    assert "no link" in out and "'鞋' names product:a and product:b" in out
    figures = json.loads(out.strip().splitlines()[-1])
    assert figures["order"] == "room" and figures["precision"] == 1.0 and figures["answered"] == 1.0
    assert figures["chitchat_replied"] == 0.0


def _danmaku(seq: int, uid: str, text: str) -> dict[str, Any]:
    return {"t": "danmaku", "seq": seq, "uid": uid, "name": uid, "text": text, "ts": 0}


# -- the real assistant process against a real server ------------------------------------------


@pytest.fixture
def config(config: Config) -> Config:
    config.reply_interval = 1.5
    config.reply_repeat_window = 60.0
    return config


@contextlib.asynccontextmanager
async def running_assistant(port: int, *args: str) -> AsyncIterator[tuple[subprocess.Popen[str], str]]:
    """`liveroom assistant` for room r1 on the server at `port`: the process and its first line."""
    proc = subprocess.Popen(
        [
            *(sys.executable, "-m", "server", "assistant", "--room", "r1"),
            *("--catalogue", str(CATALOGUE), "--server", f"ws://127.0.0.1:{port}", *args),
        ],
        stdout=subprocess.PIPE,
        stderr=subprocess.DEVNULL,
        text=True,
    )
    assert proc.stdout is not None
    try:
        yield proc, await within(asyncio.to_thread(proc.stdout.readline), 60)
    finally:
        proc.terminate()
        await asyncio.to_thread(proc.wait, 10)


@pytest.fixture
async def assistant(app: Any) -> AsyncIterator[subprocess.Popen[str]]:
    async with running_assistant(app.port, "--user", "bot") as (proc, line):
        assert "answering in room 'r1'" in line, line
        yield proc


async def test_real_assistant_answers_questions_not_chitchat(assistant: Any, join: Any) -> None:
    amy, bob, host = await join("amy"), await join("bob"), await join("hana", role="host")
    await host.send(t="pin", product={"id": "dress", "name": "碎花连衣裙", "price": 259})
    await amy.events(lambda e: e["t"] == "pin", 1)
    await amy.send(t="danmaku", text="主播今天好美")
    await bob.send(t="danmaku", text="来了来了")
    chitchat = await amy.events(lambda e: e["t"] == "danmaku", 2)
    await amy.send(t="danmaku", text="多少钱")
    await bob.send(t="danmaku", text="how much is it?")
    asked = await amy.events(lambda e: e["t"] == "danmaku", 2)
    reply = (await amy.events(lambda e: e["t"] == "reply", 1))[0]
    assert reply["from"] == "assistant" and reply["uid"] == "bot"
    assert sorted(reply["seqs"]) == sorted(e["seq"] for e in asked)
    assert not {e["seq"] for e in chitchat} & set(reply["seqs"])
    assert "¥259" in reply["text"] and "@amy" in reply["text"] and "@bob" in reply["text"]
    tagged = await host.events(lambda e: e["t"] == "question", 1)
    assert tagged[0]["key"] == "price:dress"

    # a second, different question: answered no sooner than reply_interval after the first
    await bob.send(t="danmaku", text="包邮吗")
    second = (await amy.events(lambda e: e["t"] == "reply", 1))[0]
    assert "包邮" in second["text"]
    assert second["ts"] - reply["ts"] >= 1500


async def test_real_assistant_pins_the_most_asked_product(assistant: Any, join: Any) -> None:
    viewers = [await join(f"v{i}") for i in range(3)]
    for viewer in viewers:
        await viewer.send(t="danmaku", text="牛仔裤多少钱")
    pin = (await viewers[0].events(lambda e: e["t"] == "pin", 1))[0]
    assert pin["id"] == "product:jeans" and pin["uid"] == "bot" and pin["product"]["price"] == 199
    late = await join("late")
    assert [p["id"] for p in late.snapshot["pins"]] == ["product:jeans"]


def test_quality_on_the_dev_split_in_room_order() -> None:
    """The benchmark's quality figures are deterministic: keep the dev split above the targets
    (the held-out split's figures are in docs/BENCHMARKS.md; it is not a regression test)."""
    from load_tests import bench_assistant as bench

    room = bench.quality("dev")["room"]
    summary = room.summary()
    assert summary["questions"] >= 300 and summary["chitchat"] >= 200
    assert summary["precision"] >= bench.TARGETS["precision"], room.wrong + room.false_replies
    assert summary["answered"] >= bench.TARGETS["answered"], room.unanswered
    assert summary["chitchat_replied"] <= bench.TARGETS["chitchat_replied"], room.false_replies
