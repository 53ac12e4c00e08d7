"""The broker's own connections (server/broker/redis_resp3.py) against a real Redis."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import redis
from redis.exceptions import NoScriptError, ResponseError

from server.broker.base import Publish
from server.broker.redis import RedisBroker
from server.broker.redis_resp3 import Resp3Connection, open_resp3
from server.broker.shards import MAIN, Shards
from server.deadline import within
from tests.conftest import TIMEOUT
from tests.redis_fixtures import *  # noqa: F403 - the fixtures
from tests.redis_fixtures import RedisServer, RedisTarget, apoll, requires_redis

pytestmark = requires_redis


@pytest.fixture
def locked_redis(tmp_path: Path) -> Iterator[RedisServer]:
    server = RedisServer(tmp_path, password="s3cret")
    server.start()
    try:
        yield server
    finally:
        server.stop()


class Recorder:
    def __init__(self) -> None:
        self.pushes: list[tuple[bytes, bytes, Any]] = []
        self.lost: list[BaseException] = []

    async def open(self, url: str) -> Resp3Connection:
        endpoint = Shards(url, False, {}).endpoint(MAIN)
        return await open_resp3(
            **endpoint, timeout=TIMEOUT, on_push=lambda *p: self.pushes.append(p), on_lost=self.lost.append
        )


async def test_a_command_after_a_subscription_answers_in_order_and_messages_are_pushed(
    redis_server: RedisServer,
) -> None:
    rec = Recorder()
    conn = await rec.open(redis_server.url)
    other = redis_server.client()
    other.xadd("s", {"f": "v"}, id="1-0")
    [reply] = conn.send([("SUBSCRIBE", "a", "b")], [("XRANGE", "s", "-", "+")])
    entries = await within(reply, TIMEOUT)
    assert entries == [[b"1-0", [b"f", b"v"]]]  # the read's reply, not a push
    assert rec.pushes == [(b"subscribe", b"a", 1), (b"subscribe", b"b", 2)]  # confirmed before it
    assert other.publish("a", "hello") == 1
    await apoll(lambda: len(rec.pushes) == 3, what="the message")
    assert rec.pushes[2] == (b"message", b"a", b"hello")
    conn.send([("UNSUBSCRIBE", "a")])
    await apoll(lambda: len(rec.pushes) == 4, what="the unsubscribe confirmation")
    assert rec.pushes[3] == (b"unsubscribe", b"a", 1)
    assert other.publish("a", "gone") == 0
    conn.close()
    assert rec.lost == []  # closed on purpose: not reported as lost
    other.close()


async def test_error_replies_fail_their_command_only(redis_server: RedisServer) -> None:
    rec = Recorder()
    conn = await rec.open(redis_server.url)
    missing, wrong, fine = conn.send(
        [], [("EVALSHA", "0" * 40, 0), ("XRANGE", "s", "not-an-id", "+"), ("XRANGE", "s", "-", "+")]
    )
    with pytest.raises(NoScriptError):  # the stream script path reloads the script on this
        await within(missing, TIMEOUT)
    with pytest.raises(ResponseError):
        await within(wrong, TIMEOUT)
    assert await within(fine, TIMEOUT) == []
    conn.close()


async def test_an_error_on_a_subscribing_connection_ends_it(redis_server: RedisServer) -> None:
    """Its reply could answer the (un)subscribe or the command: no guessing, the connection ends."""
    rec = Recorder()
    conn = await rec.open(redis_server.url)
    first, second = conn.send(
        [("SUBSCRIBE", "a")], [("XRANGE", "s", "not-an-id", "+"), ("XRANGE", "s", "-", "+")]
    )
    for fut in (first, second):
        with pytest.raises(ConnectionError):
            await within(fut, TIMEOUT)
    assert len(rec.lost) == 1 and conn.closed


async def test_a_dead_server_fails_waiting_commands_and_reports_once(tmp_path: Path) -> None:
    server = RedisServer(tmp_path)
    server.start()
    rec = Recorder()
    conn = await rec.open(server.url)
    [blocked] = conn.send([], [("BLPOP", "nothing", 0)])  # waits until the server goes away
    server.stop()
    with pytest.raises(ConnectionError):
        await within(blocked, TIMEOUT)
    await apoll(lambda: rec.lost, what="the loss report")
    assert len(rec.lost) == 1 and conn.closed
    with pytest.raises(ConnectionError):
        conn.send([("SUBSCRIBE", "a")])


async def test_password_and_db_from_the_url(locked_redis: RedisServer) -> None:
    client = locked_redis.client()
    client.execute_command("SELECT", 3)
    client.xadd("dms", {"b": "x"}, id="5-0")  # in db 3 only
    rec = Recorder()
    conn = await rec.open(locked_redis.url.removesuffix("/0") + "/3")
    [reply] = conn.send([("SUBSCRIBE", "u")], [("XRANGE", "dms", "-", "+")])
    assert await within(reply, TIMEOUT) == [[b"5-0", [b"b", b"x"]]]
    conn.close()
    client.close()
    with pytest.raises(ResponseError):  # a wrong password is refused at HELLO
        await rec.open(locked_redis.url.replace("s3cret", "wrong"))


async def test_broker_runs_on_a_password_protected_redis(locked_redis: RedisServer) -> None:
    broker = RedisBroker(locked_redis.url, "n1")
    await broker.start()
    try:
        assert broker.ready
        got: list[bytes] = []
        assert await broker.inbox.subscribe_user("bob", lambda _u, frame: got.append(frame)) == []
        dm = {"t": "dm", "from": "alice", "name": "alice", "to": "bob", "text": "hi", "ts": 1}
        receipt = await broker.inbox.store_dm("bob", dm)
        assert receipt.delivered
        await apoll(lambda: got, what="the live DM")
    finally:
        await broker.close()


async def test_broker_pipelines_keep_call_order_and_reload_flushed_scripts(redis_any: RedisTarget) -> None:
    """The tick's pipelines: results in call order over every shard, a failed command as its
    exception, and after SCRIPT FLUSH (a promoted replica has no scripts) the publish still runs."""
    broker = RedisBroker(redis_any.url, "n1", cluster=redis_any.cluster)
    await broker.start()
    try:
        assert broker.ready
        keys = [f"lr:{{r:room{i}}}:probe" for i in range(12)]  # spread over the slots
        calls = [(k, ("INCRBY", k, i)) for i, k in enumerate(keys)] + [(keys[0], ("HGET", keys[0], "x"))]
        results = await broker.pipelined(calls)
        assert results[:-1] == list(range(12))
        assert isinstance(results[-1], ResponseError)  # WRONGTYPE: that command only
        ports = redis_any.server.primaries() if redis_any.cluster else [redis_any.server.port]
        for port in ports:
            with redis.Redis(port=port) as client:
                client.script_flush()
        got: list[list[dict[str, Any]]] = []
        await broker.subscribe("r1", lambda _room, _epoch, _frame, events: got.append(events))
        await broker.publish(
            Publish("r1", [{"t": "danmaku", "uid": "u", "name": "u", "ts": 1, "text": "hi"}], 0, None, 1)
        )
        await apoll(lambda: got, what="the batch published after the flush")
        assert [e["text"] for e in got[0]] == ["hi"]
    finally:
        await broker.close()
