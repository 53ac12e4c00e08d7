"""Room logic without sockets: outbox, presence pacing, view."""

from __future__ import annotations

from server.room.state import Room
from server.wire.auth import Identity


def who(uid: str, role: str = "viewer") -> Identity:
    return Identity(uid=uid, name=uid, room="r", role=role)  # type: ignore[arg-type]


def test_presence_reported_at_most_once_per_interval() -> None:
    room: Room[str] = Room("r")
    room.add_member("c1", who("a"), now=0)
    first = room.drain(now=0, presence_ms=1000)
    assert first.local_online == 1 and first.joined == ["a"]
    for i, uid in enumerate(["b", "c", "d"]):  # a join storm within the interval
        room.add_member(f"c{i + 2}", who(uid), now=100)
    held = room.drain(now=500, presence_ms=1000)
    assert held.local_online is None and held.joined == [] and room.presence_pending
    due = room.drain(now=1000, presence_ms=1000)
    assert due.local_online == 4 and due.joined == ["b", "c", "d"]
    assert not room.presence_pending and not room.dirty


def test_drain_takes_danmaku_and_likes_every_tick() -> None:
    room: Room[str] = Room("r")
    room.add_member("c1", who("h", "host"), now=0)
    room.drain(now=0, presence_ms=1000)
    room.add_danmaku(who("h", "host"), "hi", cid=7, now=10)
    room.add_likes(3)
    out = room.drain(now=20, presence_ms=1000)
    assert [e["text"] for e in out.events] == ["hi"] and out.events[0]["cid"] == 7
    assert out.likes_delta == 3 and out.local_online is None
    assert not room.dirty


def test_view_applies_sequenced_events() -> None:
    room: Room[str] = Room("r", recent_size=2)
    events = [
        {"t": "danmaku", "seq": 1, "text": "a", "uid": "u", "name": "u", "ts": 1},
        {"t": "danmaku", "seq": 2, "text": "b", "uid": "u", "name": "u", "ts": 1},
        {"t": "danmaku", "seq": 3, "text": "c", "uid": "u", "name": "u", "ts": 1},
        {"t": "likes", "seq": 4, "total": 9, "delta": 9, "uid": "sys", "name": "sys", "ts": 1},
        {"t": "presence", "seq": 5, "online": 2, "uid": "sys", "name": "sys", "ts": 1},
        {"t": "host", "seq": 6, "live": True, "uid": "h", "name": "H", "ts": 1},
    ]
    room.apply("e1", events)
    assert room.seq == 6 and room.epoch == "e1"
    assert [e["text"] for e in room.recent] == ["b", "c"]
    assert (room.likes_total, room.online, room.hosts) == (9, 2, {"h": "H"})
