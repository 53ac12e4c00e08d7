"""The interaction core end to end: real server, real WebSocket clients."""

from __future__ import annotations

import asyncio
import socket

import msgpack
import pytest
from websockets.asyncio.client import connect
from websockets.exceptions import ConnectionClosed

from server.app import App
from server.deadline import within
from server.wire import auth
from server.wire.protocol import ErrorCode
from tests.conftest import SECRET, WsClient, token


async def test_snapshot_contents(join) -> None:
    host = await join("hana", role="host")
    await host.send(t="danmaku", text="welcome!")
    await host.send(t="like", count=3)
    await host.events(lambda e: e["t"] == "likes", 1)
    viewer = await join("vic")
    snap = viewer.snapshot
    assert snap["v"] == 1 and snap["room"] == "r1"
    assert snap["you"] == {"uid": "vic", "name": "vic", "role": "viewer"}
    assert [e["text"] for e in snap["recent"]] == ["welcome!"]
    assert snap["likes"] == 3
    assert snap["online"] == 1  # the host; the new viewer is counted in the next tick
    assert snap["hosts"] == [{"uid": "hana", "name": "hana"}]
    assert snap["live"] is False
    assert snap["seq"] >= 3 and snap["epoch"]


async def test_join_with_first_frame(url) -> None:
    async with connect(url) as ws:
        await ws.send(msgpack.packb({"t": "join", "token": token(user="bob")}))
        snap = msgpack.unpackb(await within(ws.recv(), 10))
        assert snap["t"] == "snapshot" and snap["you"]["uid"] == "bob"


async def test_snapshot_keeps_last_n_danmaku(join, config) -> None:
    a = await join("a")
    total = config.recent_size + 5
    for i in range(total):
        await a.send(t="danmaku", text=f"m{i}")
    await a.events(lambda e: e["t"] == "danmaku", total)
    late = await join("late")
    texts = [e["text"] for e in late.snapshot["recent"]]
    assert texts == [f"m{i}" for i in range(5, total)]


async def test_danmaku_reaches_everyone_in_order(join) -> None:
    a, b, c = await join("a"), await join("b"), await join("c")
    for i in range(30):
        await a.send(t="danmaku", text=f"hello {i}", cid=i)
    for client in (a, b, c):
        got = await client.events(lambda e: e["t"] == "danmaku", 30)
        assert [e["text"] for e in got] == [f"hello {i}" for i in range(30)]
        seqs = [e["seq"] for e in got]
        assert seqs == sorted(seqs) and len(set(seqs)) == 30
        assert all(e["uid"] == "a" and e["name"] == "a" and e["ts"] > 0 for e in got)


async def test_other_rooms_do_not_see_danmaku(join) -> None:
    a = await join("a", room="r1")
    other = await join("o", room="r2")
    await a.send(t="danmaku", text="only r1")
    await a.events(lambda e: e["t"] == "danmaku" and e["text"] == "only r1", 1)  # r1's batch is out
    await other.send(t="danmaku", text="only r2")
    got = await other.events(lambda e: e["t"] == "danmaku", 1)
    assert got[0]["text"] == "only r2"  # r1's earlier batch never reached r2
    await a.send(t="danmaku", text="r1 again")
    got = await a.events(lambda e: e["t"] == "danmaku", 1)
    assert got[0]["text"] == "r1 again"  # and r2's never reached r1, though it went out first


async def test_danmaku_control_characters_stripped(join) -> None:
    a = await join("a")
    await a.send(t="danmaku", text="  hi\x00\x07\u202e there\n ")
    (event,) = await a.events(lambda e: e["t"] == "danmaku", 1)
    assert event["text"] == "hi there"


async def test_likes_are_aggregated(join) -> None:
    clients = [await join(f"u{i}") for i in range(10)]
    watcher = await join("watcher")
    for _ in range(10):
        for c in clients:
            await c.send(t="like", count=10)  # 1,000 likes in all
    events = []
    async with asyncio.timeout(20):
        while not events or events[-1]["total"] < 1000:
            events += await watcher.events(lambda e: e["t"] == "likes", 1)
    assert events[-1]["total"] == 1000
    assert sum(e["delta"] for e in events) == 1000
    assert len(events) < 100  # batched per tick, never one frame per like


async def test_dm_to_every_connection_with_ack(join) -> None:
    a = await join("a")
    b1, b2 = await join("b"), await join("b", room="r2")
    await a.send(t="dm", to="b", text="psst", cid="c1")
    ack = await a.recv_until(lambda f: f["t"] == "dm_ack")
    assert ack["cid"] == "c1" and ack["delivered"] is True and ack["id"]
    for b in (b1, b2):
        dm = await b.recv_until(lambda f: f["t"] == "dm")
        assert (dm["from"], dm["text"], dm["id"]) == ("a", "psst", ack["id"])


async def test_offline_dm_delivered_on_connect(join) -> None:
    a = await join("a")
    for text in ("one", "two"):
        await a.send(t="dm", to="carol", text=text)
        ack = await a.recv_until(lambda f: f["t"] == "dm_ack")
        assert ack["delivered"] is False
    carol = await join("carol", room="elsewhere")
    dms = [await carol.recv_until(lambda f: f["t"] == "dm") for _ in range(2)]
    assert [d["text"] for d in dms] == ["one", "two"]


async def test_presence_counts(join) -> None:
    a = await join("a")
    b = await join("b")
    await a.recv_until(lambda f: f["t"] == "batch" and any(e.get("online") == 2 for e in f["events"]))
    await b.close()
    await a.recv_until(lambda f: f["t"] == "batch" and any(e.get("online") == 1 for e in f["events"]))


async def test_ping_pong(join) -> None:
    a = await join("a")
    await a.send(t="ping", ts=123)
    pong = await a.recv_until(lambda f: f["t"] == "pong")
    assert pong["ts"] == 123 and pong["server_ts"] > 0


async def test_leave_closes_normally(join) -> None:
    a = await join("a")
    await a.send(t="leave")
    with pytest.raises(ConnectionClosed) as info:
        await a.recv_until(lambda frame: False)  # a batch sent before the leave may come first
    assert info.value.rcvd.code == 1000


# -- bad input: each gets its code, nobody else is disturbed ---------------------------


@pytest.mark.parametrize(
    ("frame", "code"),
    [
        (b"\xc1", ErrorCode.BAD_FRAME),
        (msgpack.packb([1, 2]), ErrorCode.BAD_FRAME),
        (msgpack.packb({"t": "nope"}), ErrorCode.UNKNOWN_TYPE),
        (msgpack.packb({"x": 1}), ErrorCode.BAD_FIELD),
        (msgpack.packb({"t": "danmaku", "text": 5}), ErrorCode.BAD_FIELD),
        (msgpack.packb({"t": "danmaku", "text": " \x00 "}), ErrorCode.TEXT_EMPTY),
        (msgpack.packb({"t": "danmaku", "text": "x" * 201}), ErrorCode.TEXT_TOO_LONG),
        (msgpack.packb({"t": "like", "count": 0}), ErrorCode.BAD_FIELD),
        (msgpack.packb({"t": "like", "count": "5"}), ErrorCode.BAD_FIELD),
        (msgpack.packb({"t": "dm", "to": "bad id!", "text": "x"}), ErrorCode.BAD_RECIPIENT),
        (msgpack.packb({"t": "dm", "to": "a", "text": "me"}), ErrorCode.BAD_RECIPIENT),
        (msgpack.packb({"t": "join", "token": "x"}), ErrorCode.ALREADY_JOINED),
        (msgpack.packb({"t": "join", "token": "x", "v": 2}), ErrorCode.UNSUPPORTED_VERSION),
        ("text frame", ErrorCode.BAD_FRAME),
    ],
)
async def test_bad_frames_get_error_and_others_unaffected(join, frame, code) -> None:
    a, b = await join("a"), await join("b")
    await a.ws.send(frame)
    err = await a.recv_until(lambda f: f["t"] == "error")
    assert err["code"] == code and err["msg"]
    # the connection and the room keep working
    await a.send(t="danmaku", text="still here")
    for c in (a, b):
        (event,) = await c.events(lambda e: e["t"] == "danmaku", 1)
        assert event["text"] == "still here"


async def test_error_ref_echoes_cid(join) -> None:
    a = await join("a")
    await a.send(t="danmaku", text="", cid="abc")
    err = await a.recv_until(lambda f: f["t"] == "error")
    assert err["ref"] == "abc" and err["code"] == ErrorCode.TEXT_EMPTY


async def test_oversized_frame_closes_1009(join, config) -> None:
    a, b = await join("a"), await join("b")
    await a.ws.send(b"\x00" * (config.max_frame + 1))
    with pytest.raises(ConnectionClosed) as info:
        await a.recv_until(lambda f: False)
    assert info.value.rcvd.code == 1009
    await b.send(t="danmaku", text="fine")
    await b.events(lambda e: e["t"] == "danmaku", 1)


@pytest.mark.parametrize(
    ("make_token", "code"),
    [
        (lambda: None, ErrorCode.AUTH_REQUIRED),
        (lambda: "garbage", ErrorCode.TOKEN_INVALID),
        (
            lambda: auth.mint("another-secret-of-sufficient-length!!", room="r1", user="m"),
            ErrorCode.TOKEN_INVALID,
        ),
        (lambda: auth.mint(SECRET, room="r1", user="m", ttl=-3600), ErrorCode.TOKEN_EXPIRED),
        (lambda: auth.mint(SECRET, room="r2", user="m"), ErrorCode.WRONG_ROOM),
    ],
)
async def test_bad_tokens_rejected_with_close_code(url, make_token, code) -> None:
    async with connect(url) as ws:
        await ws.send(msgpack.packb({"t": "join", "token": make_token(), "room": "r1"}))
        err = msgpack.unpackb(await within(ws.recv(), 10))
        assert err["t"] == "error" and err["code"] == code
        with pytest.raises(ConnectionClosed) as info:
            await within(ws.recv(), 10)
        assert info.value.rcvd.code == code


async def test_wrong_room_in_query_string(url) -> None:
    async with connect(f"{url}?token={token(room='r2')}&room=r1") as ws:
        err = msgpack.unpackb(await within(ws.recv(), 10))
        assert err["code"] == ErrorCode.WRONG_ROOM


async def test_first_frame_not_join(url) -> None:
    async with connect(url) as ws:
        await ws.send(msgpack.packb({"t": "danmaku", "text": "hi"}))
        err = msgpack.unpackb(await within(ws.recv(), 10))
        assert err["code"] == ErrorCode.AUTH_REQUIRED


async def test_join_with_unsupported_version_closes(url) -> None:
    async with connect(url) as ws:
        await ws.send(msgpack.packb({"t": "join", "token": token(), "v": 2}))
        err = msgpack.unpackb(await within(ws.recv(), 10))
        assert err["code"] == ErrorCode.UNSUPPORTED_VERSION
        with pytest.raises(ConnectionClosed) as info:
            await within(ws.recv(), 10)
        assert info.value.rcvd.code == ErrorCode.UNSUPPORTED_VERSION


async def test_join_timeout(url) -> None:
    async with connect(url) as ws:
        err = msgpack.unpackb(await within(ws.recv(), 20))
        assert err["code"] == ErrorCode.AUTH_TIMEOUT


async def _resume(url: str, epoch: str, seq: int) -> dict:
    async with connect(url) as ws:
        resume = {"epoch": epoch, "seq": seq}
        await ws.send(msgpack.packb({"t": "join", "token": token(user="b"), "resume": resume}))
        return msgpack.unpackb(await within(ws.recv(), 10))


async def test_resume_replays_missed_events(url, join) -> None:
    a = await join("a")
    b = await join("b")
    epoch, seq = b.snapshot["epoch"], b.snapshot["seq"]
    await b.close()
    for i in range(3):
        await a.send(t="danmaku", text=f"m{i}")
    await a.events(lambda e: e["t"] == "danmaku", 3)
    snap = await _resume(url, epoch, seq)
    assert snap["recovered"] is True
    assert [e["text"] for e in snap["missed"] if e["t"] == "danmaku"] == ["m0", "m1", "m2"]
    assert [e["seq"] for e in snap["missed"]] == list(range(seq + 1, seq + 1 + len(snap["missed"])))


async def test_resume_refused_for_unknown_epoch(url, join) -> None:
    await join("a")
    snap = await _resume(url, "old-epoch", 1)
    assert snap["recovered"] is False and "missed" not in snap
    assert snap["t"] == "snapshot"  # a fresh snapshot instead


async def _slow_reader(app: App, join, user: str) -> WsClient:
    """A client that stops reading, on a link with small kernel buffers (so the server's fills fast)."""
    sock = socket.create_connection(("127.0.0.1", app.port))
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
    client = await join(user, sock=sock, max_queue=1)
    client.ws.transport.pause_reading()
    server_side = next(c for c in app.hub.rooms["r1"].members if c.identity.uid == user)
    server_side.ws.transport.get_extra_info("socket").setsockopt(socket.SOL_SOCKET, socket.SO_SNDBUF, 4096)
    return client


async def _flood_until(app: App, fast: WsClient, done) -> None:
    async with asyncio.timeout(60):
        while not done():
            for _ in range(20):
                await fast.send(t="danmaku", text="x" * 200)
            await fast.events(lambda e: e["t"] == "danmaku", 20)


@pytest.mark.both_loops
async def test_slow_consumer_does_not_block_others(app: App, join) -> None:
    """A reader that never reads: its buffer stays bounded, others keep receiving."""
    app.config.write_buffer_limit = 64 * 1024
    app.config.max_dropped_batches = 10_000
    slow = await _slow_reader(app, join, "slow")
    fast = await join("fast")
    server_side = next(c for c in app.hub.rooms["r1"].members if c.identity.uid == "slow")
    await _flood_until(app, fast, lambda: server_side.dropped >= 5)
    # its buffer never grew far past the limit (one batch of slack at most)
    assert server_side.buffered() < app.config.write_buffer_limit + 64 * 1024
    slow.ws.transport.resume_reading()

    async def keep_talking() -> None:  # the notice rides on the next batch it can take
        while True:
            await fast.send(t="danmaku", text="after")
            await asyncio.sleep(0.05)

    talker = asyncio.create_task(keep_talking())
    try:
        frame = await slow.recv_until(lambda f: f["t"] == "dropped")
    finally:
        talker.cancel()
    assert frame["count"] >= 5


@pytest.mark.both_loops
async def test_slow_consumer_closed_with_code(app: App, join) -> None:
    app.config.write_buffer_limit = 16 * 1024
    app.config.max_dropped_batches = 3
    slow = await _slow_reader(app, join, "slow")
    fast = await join("fast")
    room = app.hub.rooms["r1"]
    await _flood_until(app, fast, lambda: len(room.members) == 1 or any(c.dropped >= 3 for c in room.members))
    slow.ws.transport.resume_reading()
    with pytest.raises(ConnectionClosed) as info:
        await slow.recv_until(lambda f: False, timeout=30)
    assert info.value.rcvd is not None and info.value.rcvd.code == ErrorCode.SLOW_CONSUMER


@pytest.mark.both_loops
async def test_graceful_shutdown_closes_with_1012(config) -> None:
    config.tick_ms = 1000  # the danmaku below is still queued when shutdown starts
    app = App(config)
    await app.start()
    ws = await connect(f"ws://127.0.0.1:{app.port}/ws?token={token()}")
    client = WsClient(ws)
    await client.recv()
    await client.send(t="danmaku", text="last words")
    await client.send(t="ping")
    await client.recv_until(lambda f: f["t"] == "pong")  # frames are handled in order
    assert app.hub.rooms["r1"].dirty
    await app.stop()
    frames = []
    with pytest.raises(ConnectionClosed) as info:
        while True:
            frames.append(await client.recv())
    assert info.value.rcvd.code == 1012
    # the pending batch was flushed before the close
    assert any(e.get("text") == "last words" for f in frames if f["t"] == "batch" for e in f["events"])
