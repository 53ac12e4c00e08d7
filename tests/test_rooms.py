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


def test_a_live_change_is_on_its_way_until_the_view_applies_it() -> None:
    """What the claim renewal asks before announcing a publisher again (server/media/failover.py):
    our own `live` on, drained but not yet back sequenced, must not be announced twice (#21)."""
    room: Room[str] = Room("r")
    hana = who("hana", "host")
    room.set_live(hana, True, "n1", "http://n1", now=0)
    sent = room.drain(now=0).events
    assert room.live_on_its_way("hana") and "hana" not in room.publishers  # being sequenced
    room.apply("e1", [{**sent[0], "seq": 1, "on": False, "node": "n2"}])  # not ours: still on its way
    assert room.live_on_its_way("hana")
    room.apply("e1", [{**sent[0], "seq": 2}])
    assert not room.live_on_its_way("hana") and room.publishers == {"hana": "hana"}
    room.apply("e1", [{**sent[0], "seq": 3, "on": False}])  # a reaper's `live` off for us
    assert not room.live_on_its_way("hana") and room.publishers == {}  # the renewal may announce again

    room.set_live(hana, True, "n1", "http://n1", now=0)  # the stream restarts: a drained one may be lost,
    room.drain(now=0)
    room.set_live(who("cora", "host"), True, "n1", "http://n1", now=0)  # a queued one goes into the new one
    room.forget_lost_live()
    assert not room.live_on_its_way("hana") and room.live_on_its_way("cora")
