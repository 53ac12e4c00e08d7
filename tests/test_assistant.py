"""The live-commerce assistant: its pure core, then the real `liveroom assistant` process
against a real server (question -> reply, chitchat -> nothing, pacing, pins in the snapshot)."""

from __future__ import annotations

import asyncio
import contextlib
import subprocess
import sys
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import pytest

from server.assistant.catalogue import CatalogueError, load, parse
from server.assistant.core import Assistant, Understanding
from server.config import Config

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


def test_core_groups_askers_paces_replies_and_follows_edits(brain: Understanding) -> None:
    bot = Assistant(brain.catalogue, "bot", understanding=brain, reply_interval=3.0, gather=1.0)
    pin = {"t": "pin", "id": "product:tee", "kind": "product", "product": {"id": "tee", "name": "T"}}
    bot.on_frame({"t": "snapshot", "pins": [pin], "limits": {"reply_ms": 3000}}, 0.0)
    bot.on_frame(
        {"t": "batch", "events": [_danmaku(1, "amy", "多少钱"), _danmaku(2, "bob", "how much?")]}, 0.0
    )
    bot.on_frame(
        {"t": "batch", "events": [_danmaku(3, "cat", "包邮吗"), _danmaku(4, "dan", "主播好美")]}, 0.2
    )
    tags, reply = bot.due(0.5)
    assert reply is None  # still gathering askers
    assert {t["key"]: t["seqs"] for t in tags} == {"price:tee": [1, 2], "faq:shipping": [3]}
    _, reply = bot.due(1.0)
    assert reply is not None and reply.frame["seqs"] == [1, 2] and reply.frame["askers"] == ["amy", "bob"]
    assert reply.frame["text"].startswith("@amy @bob: ") and "¥129" in reply.frame["text"]
    assert bot.due(2.0)[1] is None  # one reply per interval
    _, second = bot.due(4.0)
    assert second is not None and second.frame["seqs"] == [3]
    # the host edits the price: the next answer has it; the host's own reply drops its askers
    bot.on_frame({"t": "batch", "events": [{"t": "product", "id": "tee", "price": 99, "seq": 9}]}, 30.0)
    bot.on_frame({"t": "batch", "events": [_danmaku(10, "eve", "价格"), _danmaku(11, "fay", "链接")]}, 30.0)
    bot.on_frame({"t": "batch", "events": [{"t": "reply", "uid": "host", "seqs": [11], "seq": 12}]}, 30.1)
    _, third = bot.due(31.5)
    assert third is not None and "¥99" in third.frame["text"] and third.frame["seqs"] == [10]
    assert bot.due(40.0)[1] is None  # the link question was answered by the host
    # refused by the server (rate limit): the askers come back and wait for retry_after
    bot.on_frame({"t": "error", "code": 4300, "ref": third.frame["cid"], "retry_after": 5.0}, 40.0)
    assert bot.due(44.0)[1] is None
    assert bot.due(45.1)[1] is not None
    # refused for good (a seq the room does not have): dropped, not retried
    bot.on_frame({"t": "batch", "events": [_danmaku(20, "gus", "尺码?")]}, 50.0)
    _, fourth = bot.due(51.5)
    assert fourth is not None
    bot.on_frame({"t": "error", "code": 4404, "ref": fourth.frame["cid"]}, 51.6)
    assert bot.due(60.0)[1] is None
    # a new epoch (the room's stream restarted): pending askers of the old one are forgotten
    bot.on_frame({"t": "batch", "events": [_danmaku(21, "hal", "链接")]}, 70.0)
    bot.on_frame({"t": "snapshot", "epoch": "e2", "pins": [pin]}, 70.1)
    assert bot.due(80.0)[1] is None


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
        yield proc, await asyncio.wait_for(asyncio.to_thread(proc.stdout.readline), 60)
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


@pytest.mark.parametrize("split", ["test", "dev"])
def test_quality_targets_on_the_evaluation_set(brain: Understanding, split: str) -> None:
    """The benchmark's quality figures are deterministic: keep them above the issue's targets."""
    import yaml

    from load_tests import bench_assistant as bench

    prefix = "test_" if split == "test" else ""
    questions = yaml.safe_load((bench.HERE / f"{prefix}questions.yaml").read_text(encoding="utf-8"))
    chitchat = yaml.safe_load((bench.HERE / f"{prefix}chitchat.yaml").read_text(encoding="utf-8"))
    assert len(questions) >= 150 and len(chitchat) >= 100
    result = bench.evaluate(brain, questions, chitchat)
    assert result["entries"] >= 30
    assert result["precision"] >= bench.TARGETS["precision"], result["wrong"]
    assert result["answered"] >= bench.TARGETS["answered"], result["unanswered"]
    assert result["chitchat_answered"] <= bench.TARGETS["chitchat_answered"], result["false_answers"]
