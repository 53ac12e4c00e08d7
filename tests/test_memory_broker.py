"""MemoryBroker: the room stream through the sequencing rule, its epoch on every batch, and a
room's history freed once nobody follows it (history_ttl after its last event, as in Redis)."""

from __future__ import annotations

import asyncio
from typing import Any

import msgpack

from server.broker.base import Publish
from server.broker.memory import MemoryBroker
from server.wire import protocol

WAIT = 30.0


async def test_batches_name_their_epoch_and_presence_follows_the_rule() -> None:
    broker = MemoryBroker()
    frames: list[dict[str, Any]] = []
    state = await broker.subscribe(
        "r1", lambda room, epoch, frame, events: frames.append(msgpack.unpackb(frame))
    )
    await broker.publish(Publish("r1", [], 0, 1, 1, joined=["a"]))
    await broker.publish(Publish("r1", [], 0, 1, 2, joined=["a"]))  # same online, same unique: no event
    await broker.publish(
        Publish("r1", [{"t": "danmaku", "uid": "a", "name": "A", "ts": 3, "text": "x"}], 2, None, 3)
    )
    assert [[(e["t"], e["seq"]) for e in f["events"]] for f in frames] == [
        [("presence", 1)],
        [("danmaku", 2), ("likes", 3)],
    ]
    assert all(f["epoch"] == state.epoch for f in frames)


async def test_history_of_an_unfollowed_room_expires() -> None:
    broker = MemoryBroker(history_ttl=0.05)
    state = await broker.subscribe("r1", lambda *_: None)
    await broker.publish(
        Publish("r1", [{"t": "danmaku", "uid": "a", "name": "A", "ts": 1, "text": "x"}], 0, None, 1)
    )
    await broker.unsubscribe("r1")
    async with asyncio.timeout(WAIT):
        while broker.rooms_kept:
            await asyncio.sleep(0.01)
    assert await broker.history_since("r1", state.epoch, 0) is None
    again = await broker.subscribe("r1", lambda *_: None)
    assert again.epoch != state.epoch and again.seq == 0  # a new stream: resumes cannot match it


async def test_a_followed_room_is_kept() -> None:
    broker = MemoryBroker(history_ttl=0.01)
    state = await broker.subscribe("r1", lambda *_: None)
    await broker.publish(
        Publish(
            "r1",
            [{"t": "danmaku", "uid": "a", "name": "A", "ts": protocol.now_ms(), "text": "x"}],
            0,
            None,
            1,
        )
    )
    await broker.unsubscribe("r1")
    await broker.subscribe("r1", lambda *_: None)  # followed again before the timer ran
    assert broker.stream._rooms["r1"].expiry is None  # no expiry pending while followed
    assert (await broker.subscribe("r1", lambda *_: None)).epoch == state.epoch
