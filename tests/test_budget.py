"""The event budget: a big room's frame carries a fair sample of its viewers' danmaku, every
other event, each sender's own danmaku, and a `sampled` count; history keeps everything."""

from __future__ import annotations

import asyncio
import contextlib
import random
from typing import Any

from server.app import App
from server.delivery.budget import Budget, sampleable, with_own
from tests.test_core import _resume


def _events(n: int) -> list[dict[str, Any]]:
    kinds = ["danmaku", "danmaku", "danmaku", "likes", "pin", "reply", "delete", "system", "presence"]
    out: list[dict[str, Any]] = []
    for seq in range(1, n + 1):
        event: dict[str, Any] = {"t": kinds[seq % len(kinds)], "uid": f"u{seq % 7}", "seq": seq}
        if seq % 11 == 0 and event["t"] == "danmaku":
            event["role"] = "host"
        out.append(event)
    return out


def test_priority_events_survive_and_counts_add_up() -> None:
    budget = Budget(above=10, per_frame=5, rng=random.Random(7))
    events = _events(200)
    cut = budget.cut("r", events, now=100.0)
    assert cut is not None
    ordinary = [e for e in events if sampleable(e)]
    assert [e for e in events if not sampleable(e)] == [e for e in cut.events if not sampleable(e)]
    assert len([e for e in cut.events if sampleable(e)]) == 5
    assert len(cut.left) + 5 == len(ordinary) and cut.upto == 200
    assert [e["seq"] for e in cut.events] == sorted(e["seq"] for e in cut.events)
    mine = [e for e in cut.left if e["uid"] == "u3"]
    theirs = with_own(cut, mine)  # a sender's frame: its own danmaku back, in order
    assert [e["seq"] for e in theirs] == sorted(e["seq"] for e in cut.events + mine)


def test_below_the_rate_or_within_the_budget_nothing_is_left_out() -> None:
    budget = Budget(above=1000, per_frame=5)
    assert budget.cut("r", _events(200), now=1.0) is None  # ~67 danmaku in a second: under 1000
    assert Budget(above=1, per_frame=100).cut("r", _events(200), now=1.0) is None  # fits the budget
    assert Budget(above=0, per_frame=1).cut("r", _events(200), now=1.0) is None  # off


async def test_sampled_room_end_to_end(app: App, join, url) -> None:
    app.hub.budget.above, app.hub.budget.per_frame = 1, 2
    host = await join("h", role="host")
    mod = await join("m", role="moderator")
    senders = [await join(f"v{i}") for i in range(3)]
    watcher = await join("w")
    epoch, seq0 = watcher.snapshot["epoch"], watcher.snapshot["seq"]
    ticker = app.node._ticker  # the test ticks by hand: everything below lands in one frame
    assert ticker is not None
    ticker.cancel()
    with contextlib.suppress(asyncio.CancelledError):
        await ticker
    for n, sender in enumerate(senders):
        for i in range(10):
            await sender.send(t="danmaku", text=f"v{n} says {i}")
    await host.send(t="danmaku", text="welcome")
    await mod.send(t="danmaku", text="be nice")
    await host.send(t="slow_mode", seconds=0)
    await senders[0].send(t="like", count=3)
    room = app.hub.rooms["r1"]
    async with asyncio.timeout(10):  # every message handled (each handler is in its own task)
        while len(room._outbox) < 33 or not room._pending_likes:
            await asyncio.sleep(0.01)
    await app.node.tick()

    frames = {}
    for client in (host, mod, *senders, watcher):
        frames[client] = await client.recv_until(lambda f: f["t"] == "batch" and f.get("sampled"))
    published = [e for e in room.recent if e["seq"] > seq0]
    ordinary = [e for e in published if "role" not in e]
    assert len(ordinary) == 30 and len(published) == 32
    for frame in frames.values():
        got = frame["events"]
        kinds = {e["t"] for e in got}
        assert {"likes", "slow_mode"} <= kinds  # never dropped
        assert {e["text"] for e in got if e["t"] == "danmaku" and "role" in e} == {"welcome", "be nice"}
        viewers_danmaku = [e for e in got if e["t"] == "danmaku" and "role" not in e]
        assert len(viewers_danmaku) + frame["sampled"] == 30  # counts stay honest
        assert frame["upto"] == max(e["seq"] for e in got + ordinary)
    assert len([e for e in frames[watcher]["events"] if e["t"] == "danmaku" and "role" not in e]) == 2
    for n, sender in enumerate(senders):  # every sender sees all of its own danmaku
        own = [e["text"] for e in frames[sender]["events"] if e.get("uid") == f"v{n}" and e["t"] == "danmaku"]
        assert own == [f"v{n} says {i}" for i in range(10)]

    snap = await _resume(url, epoch, seq0)  # history and resume hold every event
    assert snap["recovered"] is True
    missed = [e for e in snap["missed"] if e["t"] == "danmaku"]
    assert [e["text"] for e in missed if "role" not in e] == [e["text"] for e in ordinary]
