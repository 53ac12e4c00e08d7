"""Faults a user sees on one node: DM backlog on every connection, idempotent sends (cid)."""

from __future__ import annotations

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
