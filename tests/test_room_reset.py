"""A room reset resyncs its connections in-band (#23): each member gets a fresh snapshot on its
live connection (`reset: true`, `recovered: false`, its own `you`, the staff fields for the
staff) and stays connected; only a reset whose next batch would pass for a continuation of
the stream the viewers followed, without being one, falls back to 1012. Real in-process node and WebSocket clients; the
reset enters where the Redis stream calls it (`broker.on_room_reset`, real-Redis cases in
tests/test_redis_outage_told.py)."""

from __future__ import annotations

import dataclasses

import msgpack
import pytest
from websockets.exceptions import ConnectionClosed

from server.app import App
from server.broker.base import RoomState
from server.broker.redis_stream import _state_of as state_of_view
from server.deadline import within
from server.wire import protocol
from tests.conftest import TIMEOUT


def _state_of(app: App, room_id: str, **changes: object) -> RoomState:
    """The room's state as the Redis stream hands it to the hub on a reset (its own reader)."""
    return dataclasses.replace(state_of_view(app.hub.rooms[room_id]), **changes)  # type: ignore[arg-type]


async def test_a_reset_sends_every_member_a_snapshot_on_its_connection(app: App, join) -> None:
    host = await join("hana", role="host")
    viewer = await join("vic")
    await host.send(t="danmaku", text="before")
    await viewer.events(lambda e: e.get("text") == "before", 1)
    joined = {"hana": host.snapshot, "vic": viewer.snapshot}

    recent = [e for e in app.hub.rooms["r1"].recent if e.get("text") == "before"]
    app.broker.on_room_reset("r1", _state_of(app, "r1", recent=recent, likes_total=41), "")

    snaps = {}
    for who, client in (("hana", host), ("vic", viewer)):
        snaps[who] = await client.recv_until(lambda f: f["t"] == "snapshot")
    for who, snap in snaps.items():
        before = joined[who]
        assert before is not None
        assert snap["reset"] is True and snap["recovered"] is False, snap
        assert snap["you"]["uid"] == who and snap["room"] == "r1"
        assert snap["likes"] == 41 and [e["text"] for e in snap["recent"]] == ["before"]
        assert snap["ice_servers"] is not None and snap["gifts"] == before["gifts"]
        # the same fields as a join's snapshot, plus the marker
        assert set(snap) - set(before) == {"reset", "recovered"}, set(snap) ^ set(before)
    assert "qa" in snaps["hana"] and "products" in snaps["hana"]  # the staff's tools
    assert "qa" not in snaps["vic"] and "products" not in snaps["vic"]

    await host.send(t="danmaku", text="after")  # the same connections carry on
    for client in (host, viewer):
        (got,) = await client.events(lambda e: e.get("text") == "after", 1)
        assert got["seq"] > snaps["vic"]["seq"]
    assert app.hub.rooms["r1"].members  # nobody left


async def test_a_reset_that_would_look_contiguous_closes_with_1012(app: App, join) -> None:
    """A new stream (not the viewers' renamed) starts right after the seq they stand at: a
    client ignoring the snapshot would take the next batch (new epoch, seq + 1) for a
    continuation (PROTOCOL.md, *Stream identity*), so it is told by a close instead."""
    viewer = await join("vic")
    room = app.hub.rooms["r1"]
    state = _state_of(app, "r1", epoch="another-epoch")
    assert state.seq == room.seq
    app.broker.on_room_reset("r1", state, "some-other-epoch>another-epoch")
    with pytest.raises(ConnectionClosed) as info:
        await viewer.recv_until(lambda f: f["t"] == "snapshot")
    assert info.value.rcvd is not None and info.value.rcvd.code == 1012


async def test_a_renamed_stream_at_the_same_seq_is_in_band(app: App, join) -> None:
    """Another node retired the epoch the viewers follow: the new one is the same events seq
    for seq, so a client taking the next batch for a continuation is right (no close)."""
    viewer = await join("vic")
    room = app.hub.rooms["r1"]
    app.broker.on_room_reset("r1", _state_of(app, "r1", epoch="renamed"), f"{room.epoch}>renamed")
    snap = await viewer.recv_until(lambda f: f["t"] == "snapshot")
    assert snap["reset"] is True and snap["epoch"] == "renamed" and snap["seq"] == room.seq


async def test_a_new_stream_past_the_viewers_seq_is_in_band(app: App, join) -> None:
    """A new stream already past the viewers' seq: the next batch jumps, so the snapshot alone
    tells the client (no close)."""
    viewer = await join("vic")
    room = app.hub.rooms["r1"]
    app.broker.on_room_reset("r1", _state_of(app, "r1", epoch="another", seq=room.seq + 5), "")
    snap = await viewer.recv_until(lambda f: f["t"] == "snapshot")
    assert snap["reset"] is True and snap["epoch"] == "another" and snap["seq"] == room.seq


async def test_shared_fields_pack_as_one_map() -> None:
    shared = {f"k{i}": [i] * i for i in range(20)}  # a map16 header, as a snapshot's
    fields = protocol.SharedFields(shared)
    for extra in ([], [{"you": {"uid": "u"}}], [{"a": 1}, {"b": None, "c": "x"}]):
        merged = {k: v for e in extra for k, v in e.items()}
        assert msgpack.unpackb(fields.pack(*extra)) == {**shared, **merged}
    small = protocol.SharedFields({"t": "x"})  # a fixmap header
    assert msgpack.unpackb(small.pack({"n": 2})) == {"t": "x", "n": 2}


async def test_a_member_closing_gets_no_snapshot(app: App, join) -> None:
    """A connection already closing (e.g. kicked) is skipped; the others still get theirs."""
    first = await join("a")
    second = await join("b")
    peers = {w.uid: p for p, w in app.hub.rooms["r1"].members.items()}
    peers["a"].close(4403, "kicked")
    app.broker.on_room_reset("r1", _state_of(app, "r1"), "")
    snap = await within(second.recv_until(lambda f: f["t"] == "snapshot"), TIMEOUT)
    assert snap["you"]["uid"] == "b"
    with pytest.raises(ConnectionClosed):
        await first.recv_until(lambda f: f["t"] == "snapshot")
