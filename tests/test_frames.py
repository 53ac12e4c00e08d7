"""One frame per room per tick: batches arriving within a tick of the last frame are merged."""

from __future__ import annotations

import asyncio

import msgpack

from server.deadline import within
from server.delivery.frames import RoomFrames


def _batch(room: str, seq: int) -> tuple[bytes, list[dict[str, object]]]:
    events: list[dict[str, object]] = [{"t": "danmaku", "text": f"d{seq}", "seq": seq}]
    return msgpack.packb({"t": "batch", "room": room, "events": events}), events


async def test_batches_within_a_tick_leave_as_one_frame_in_order() -> None:
    sent: list[tuple[str, dict[str, object]]] = []
    flushed = asyncio.Event()

    def send(room: str, _epoch: str, frame: bytes, _events: object) -> None:
        sent.append((room, msgpack.unpackb(frame)))
        if len(sent) == 2:
            flushed.set()

    frames = RoomFrames(0.05, send)
    for seq in (1, 2, 3):  # three nodes' batches in the same tick
        frames.offer("r", "e1", *_batch("r", seq))
    assert [f["events"][0]["seq"] for _, f in sent] == [1]  # the first at once, as it came
    await within(flushed.wait(), 10)
    assert len(sent) == 2 and frames.merged == 1
    assert [e["seq"] for e in sent[1][1]["events"]] == [2, 3]  # one frame, encoded once
    assert sent[1][1]["epoch"] == "e1"  # the merged frame names its stream


async def test_a_new_epoch_never_shares_a_frame_with_the_old_one() -> None:
    sent: list[tuple[str | None, list[int]]] = []

    def send(_room: str, _epoch: str, frame: bytes, _events: object) -> None:
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
        3600.0,
        lambda room, _e, frame, _ev: sent.append(
            (room, [e["seq"] for e in msgpack.unpackb(frame)["events"]])
        ),
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


class _Clock:
    """A loop time the test steps: offers land exactly where the test puts them."""

    def __init__(self) -> None:
        self.at = asyncio.get_running_loop().time() + 10_000.0  # timers set from it never fire here

    def __call__(self) -> float:
        return self.at


async def test_a_room_fed_by_one_node_is_never_held_even_with_jitter() -> None:
    sent: list[int] = []
    clock = _Clock()
    frames = RoomFrames(
        1.0, lambda _r, _e, frame, _ev: sent.append(msgpack.unpackb(frame)["events"][0]["seq"]), clock
    )
    start = clock.at
    # one batch per tick, each up to 0.45 tick earlier or later than the one before, drifting
    # by more than a tick over time (a loaded loop, a tick that fell behind)
    for seq, offset in enumerate((0.0, 0.45, 0.9, 0.5, 0.1, -0.3, 0.1, 0.5, 0.9, 1.3), start=1):
        clock.at = start + seq + offset
        frames.offer("r", "e1", *_batch("r", seq))
    assert sent == list(range(1, 11)) and frames.merged == 0  # every batch at once, none held


async def test_batches_of_other_nodes_leave_with_the_next_windows_first_batch() -> None:
    sent: list[list[int]] = []
    clock = _Clock()
    frames = RoomFrames(
        1.0,
        lambda _r, _e, frame, _ev: sent.append([e["seq"] for e in msgpack.unpackb(frame)["events"]]),
        clock,
    )
    start, seq = clock.at, 0
    for tick in range(4):  # node A's batch, then node B's 0.2 tick later, every tick
        for offset in (0.0, 0.2):
            seq += 1
            clock.at = start + tick + offset
            frames.offer("r", "e1", *_batch("r", seq))
    # one frame per tick: B's batch waits for A's next one, nothing waits longer, order kept
    assert sent == [[1], [2, 3], [4, 5], [6, 7]]
    clock.at = start + 4.6  # the room went quiet: the held batch leaves once its timer fires
    frames.flush("r")
    assert sent[-1] == [8]
