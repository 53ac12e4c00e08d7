"""Faults a user sees on one node: DM backlog on every connection, idempotent sends (cid)."""

from __future__ import annotations

from server.wire import protocol
from tests.conftest import WsClient


async def _dm(sender: WsClient, to: str, text: str, cid: object = None) -> dict:
    frame = {"t": "dm", "to": to, "text": text}
    if cid is not None:
        frame["cid"] = cid
    await sender.send(**frame)
    return await sender.recv_until(lambda f: f["t"] in ("dm_ack", "error"))


async def _drain_acks(client: WsClient) -> None:
    """Frames are handled in order: once the pong is back, everything sent before it was handled."""
    await client.send(t="ping", ts=1)
    await client.recv_until(lambda f: f["t"] == "pong")


async def test_second_connection_on_same_node_gets_the_backlog(join) -> None:
    alice = await join("alice")
    dead = await join("bob")  # the phone's old connection: still open, nobody reads it
    acks = [await _dm(alice, "bob", f"m{i}") for i in range(3)]
    assert all(a["delivered"] for a in acks)  # went live to the dead connection only
    fresh = await join("bob", room="r2")
    got = [await fresh.recv_until(lambda f: f["t"] == "dm") for _ in range(3)]
    assert [d["id"] for d in got] == [a["id"] for a in acks]
    later = await _dm(alice, "bob", "m3")  # and live ones follow, once each
    nxt = await fresh.recv_until(lambda f: f["t"] == "dm")
    assert nxt["id"] == later["id"]
    assert dead.snapshot is not None


async def test_dm_seen_cannot_drop_dms_the_connection_never_got(join) -> None:
    alice = await join("alice")
    await join("bob")  # gets m0 live
    first = await _dm(alice, "bob", "m0")
    other = await join("bob", room="r2")  # gets m0 in its backlog
    assert (await other.recv_until(lambda f: f["t"] == "dm"))["id"] == first["id"]
    # a client claims to have read far ahead: the server only drops what this connection got
    await other.send(t="dm_seen", id="99999999999999-0")
    await _drain_acks(other)
    second = await _dm(alice, "bob", "m1")
    third = await join("bob", room="r3")
    got = await third.recv_until(lambda f: f["t"] == "dm")
    assert got["id"] == second["id"]  # m0 acknowledged, m1 (never sent to `other` first) kept


async def test_dm_retry_with_cid_returns_the_original_ack(join) -> None:
    alice = await join("alice")
    bob = await join("bob")
    ack = await _dm(alice, "bob", "once", cid="k1")
    await alice.close()  # the reset: the client cannot know the DM was stored
    again = await join("alice")
    retry = await _dm(again, "bob", "once", cid="k1")
    assert retry == ack  # the same id, ts and delivered flag: not stored twice
    other = await _dm(again, "bob", "twice", cid="k2")
    assert other["id"] != ack["id"]
    texts = [(await bob.recv_until(lambda f: f["t"] == "dm"))["text"] for _ in range(2)]
    assert texts == ["once", "twice"]  # "once" arrived once
    fresh = await join("bob", room="r2")  # and the backlog holds one copy
    backlog = [(await fresh.recv_until(lambda f: f["t"] == "dm"))["text"] for _ in range(2)]
    assert backlog == ["once", "twice"]


async def test_cids_are_per_sender_and_typed(join) -> None:
    alice, carol = await join("alice"), await join("carol")
    a = await _dm(alice, "bob", "x", cid=7)
    c = await _dm(carol, "bob", "y", cid=7)  # another sender, same cid: a different DM
    s = await _dm(alice, "bob", "z", cid="7")  # the string "7" is not the integer 7
    assert len({a["id"], c["id"], s["id"]}) == 3


async def test_danmaku_retry_with_cid_is_sequenced_once(join) -> None:
    talker = await join("talker")
    watcher = await join("watcher")
    await talker.send(t="danmaku", text="hello", cid="d1")
    first = await watcher.events(lambda e: e["t"] == "danmaku", 1)
    await talker.send(t="danmaku", text="hello", cid="d1")  # the retry
    await talker.send(t="danmaku", text="next", cid="d2")
    nxt = await watcher.events(lambda e: e["t"] == "danmaku", 1)
    assert first[0]["text"] == "hello" and nxt[0]["text"] == "next"


async def test_danmaku_copies_within_one_tick_are_sequenced_once(join) -> None:
    talker = await join("talker")
    watcher = await join("watcher")
    for frame in ({"text": "a", "cid": "d1"}, {"text": "a", "cid": "d1"}, {"text": "b", "cid": 1}):
        await talker.send(t="danmaku", **frame)
    await talker.send(t="danmaku", text="c", cid="1")  # typed: not the integer 1
    got = await watcher.events(lambda e: e["t"] == "danmaku", 3)
    assert [(e["text"], e["cid"]) for e in got] == [("a", "d1"), ("b", 1), ("c", "1")]
    await talker.send(t="danmaku", text="d")  # no cid: never taken for a retry
    await talker.send(t="danmaku", text="d")
    assert [e["text"] for e in await watcher.events(lambda e: e["t"] == "danmaku", 2)] == ["d", "d"]


async def test_retry_after_the_first_send_was_orphaned(join, app, monkeypatch) -> None:
    """The sender's node died between storing a DM and recording its ack: the claim is orphaned.
    The retry takes the claim over and the store, which recorded the send with the DM, answers
    with the first copy's id, even though the recipient has read and acknowledged it since (the
    backlog no longer holds it); an orphan whose DM never got stored is stored by the retry."""
    from server.broker import idempotency

    alice = await join("alice")
    monkeypatch.setattr(idempotency, "CLAIM_TTL", -1.0)  # claims made now are already past due
    ts = 1_700_000_000_000
    await app.node.sends.claim("alice", "dm", "k-stored", {"to": "bob", "ts": ts})
    dm = {"t": "dm", "from": "alice", "name": "alice", "to": "bob", "text": "hi", "ts": ts}
    receipt = await app.broker.store_dm("bob", dm, idempotency.dm_send("alice", "k-stored"))
    bob = await join("bob", room="r2")
    got = await bob.recv_until(lambda f: f["t"] == "dm")
    await bob.send(t="dm_seen", id=got["id"])  # read: dropped from the backlog
    await _drain_acks(bob)
    assert await app.broker.dm_backlog("bob") == []
    await app.node.sends.claim("alice", "dm", "k-lost", {"to": "bob", "ts": ts + 1})  # never stored
    monkeypatch.setattr(idempotency, "CLAIM_TTL", 12.0)
    retry = await _dm(alice, "bob", "hi", cid="k-stored")
    assert (retry["t"], retry["id"], retry["ts"]) == ("dm_ack", receipt.id, ts)
    lost = await _dm(alice, "bob", "hello", cid="k-lost")
    assert lost["t"] == "dm_ack" and lost["id"] != receipt.id
    assert await _dm(alice, "bob", "hi", cid="k-stored") == retry  # remembered from now on
    texts = [protocol.unpack(f)["text"] for f in await app.broker.dm_backlog("bob")]
    assert texts == ["hello"]  # "hi" was not stored a second time
    nxt = await bob.recv_until(lambda f: f["t"] == "dm")  # in order: a second "hi" would come first
    assert (nxt["text"], nxt["id"]) == ("hello", lost["id"])


async def test_a_redis_connection_closed_under_uvloop_is_an_outage_not_a_bug() -> None:
    """redis-py on uvloop raises a plain RuntimeError for a command written to a connection
    Redis just closed (a soak's Redis restart): the send log falls back to this node's memory
    as for any outage, where it answered 4500 with a traceback; any other RuntimeError raises."""
    import pytest

    from server.broker.idempotency import RedisSendLog

    class Closing:  # what redis.asyncio did on uvloop while Redis restarted (the error's own text)
        def __init__(self, text: str) -> None:
            self.text = text

        async def set(self, *args: object, **kwargs: object) -> None:
            raise RuntimeError(self.text)

    closed = "unable to perform operation on <TCPTransport closed=True reading=False 0x55ca5883cba0>; the handler is closed"
    log = RedisSendLog(Closing(closed))
    assert (await log.claim("u", "dm", "c1")).answer is None  # claimed here, this node's memory
    await log.answer("u", "dm", "c1", b"ack")
    assert (await log.claim("u", "dm", "c1")).answer == b"ack"
    with pytest.raises(RuntimeError, match="a bug"):
        await RedisSendLog(Closing("a bug")).claim("u", "dm", "c2")


def test_what_redis_py_raises_for_a_closed_connection_is_told_from_bugs() -> None:
    from server.broker.redis_sturdy import closed_under_us

    closed = (
        "unable to perform operation on <TCPTransport closed=True reading=False 0x5>; the handler is closed"
    )
    assert closed_under_us(RuntimeError(closed))
    assert not closed_under_us(RuntimeError("Event loop is closed"))
    writer = None
    try:
        writer.writelines([b"PING"])  # type: ignore[attr-defined]  # what redis-py's torn-down connection does
    except AttributeError as exc:
        assert closed_under_us(exc)
    try:
        print(writer.room_id)  # type: ignore[attr-defined]  # a bug of ours
    except AttributeError as exc:
        assert not closed_under_us(exc)
