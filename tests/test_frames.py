"""One frame per room per tick: batches arriving within a tick of the last frame are merged."""

from __future__ import annotations

import asyncio

import msgpack

from server.delivery.frames import RoomFrames


def _batch(room: str, seq: int) -> tuple[bytes, list[dict[str, object]]]:
    events: list[dict[str, object]] = [{"t": "danmaku", "text": f"d{seq}", "seq": seq}]
    return msgpack.packb({"t": "batch", "room": room, "events": events}), events


async def test_batches_within_a_tick_leave_as_one_frame_in_order() -> None:
    sent: list[tuple[str, dict[str, object]]] = []
    flushed = asyncio.Event()

    def send(room: str, frame: bytes) -> None:
        sent.append((room, msgpack.unpackb(frame)))
        if len(sent) == 2:
            flushed.set()

    frames = RoomFrames(0.05, send)
    for seq in (1, 2, 3):  # three nodes' batches in the same tick
        frames.offer("r", "e1", *_batch("r", seq))
    assert [f["events"][0]["seq"] for _, f in sent] == [1]  # the first at once, as it came
    await asyncio.wait_for(flushed.wait(), 10)
    assert len(sent) == 2 and frames.merged == 1
    assert [e["seq"] for e in sent[1][1]["events"]] == [2, 3]  # one frame, encoded once
    assert sent[1][1]["epoch"] == "e1"  # the merged frame names its stream


async def test_a_new_epoch_never_shares_a_frame_with_the_old_one() -> None:
    sent: list[tuple[str | None, list[int]]] = []

    def send(_room: str, frame: bytes) -> None:
        obj = msgpack.unpackb(frame)
        sent.append((obj.get("epoch"), [e["seq"] for e in obj["events"]]))

    frames = RoomFrames(3600.0, send)
    frames.offer("r", "old", *_batch("r", 1))
    frames.offer("r", "old", *_batch("r", 2))  # held
    frames.offer("r", "new", *_batch("r", 1))  # another stream: the held batch leaves first
    # the held batch leaves first, named by its own epoch; then the new stream's batch as it came
    assert sent == [(None, [1]), ("old", [2]), (None, [1])]


async def test_rooms_are_gated_separately_and_flush_sends_what_is_held() -> None:
    sent: list[tuple[str, list[int]]] = []
    frames = RoomFrames(
        3600.0, lambda room, frame: sent.append((room, [e["seq"] for e in msgpack.unpackb(frame)["events"]]))
    )
    frames.offer("a", "e1", *_batch("a", 1))
    frames.offer("b", "e1", *_batch("b", 1))  # another room: not held back by room a
    frames.offer("a", "e1", *_batch("a", 2))
    assert sent == [("a", [1]), ("b", [1])]
    frames.flush("a")  # a join reads the room now: the held batch goes first
    assert sent[-1] == ("a", [2])
    frames.offer("b", "e1", *_batch("b", 2))
    frames.drop("b")  # a reset room forgets what it held
    frames.flush_all()
    assert sent == [("a", [1]), ("b", [1]), ("a", [2])]
