"""The room sequencing rule: the pure function, and the Lua that must implement it identically.

The differential test feeds the same random ticks (several nodes, danmaku, likes, presence
reports, joiners, a presence clock that lets nodes expire, a stream whose state is lost) to
server.room.sequencing.sequence and to the real PUBLISH script on a real redis-server, and requires
the same batch frames byte for byte and the same final state.
"""

from __future__ import annotations

import itertools
from collections.abc import Iterator
from dataclasses import replace
from pathlib import Path
from typing import Any

import pytest
import redis
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from server.broker import redis_scripts as rs
from server.room.sequencing import StreamState, Tick, sequence
from server.wire import protocol
from tests.redis_fixtures import RedisServer, requires_redis

NODES = ["n0", "n1", "n2"]
USERS = [f"user{i}" for i in range(12)]
PRESENCE_TTL = 2000
NOW = 1_700_000_000_000


def test_rule_numbers_events_then_likes_then_presence() -> None:
    tick = Tick("n0", NOW, [{"t": "danmaku", "text": "hi"}], likes_delta=3, local_online=2, unique=1)
    events, state = sequence(None, tick, "e1")
    assert [(e["t"], e["seq"]) for e in events] == [("danmaku", 1), ("likes", 2), ("presence", 3)]
    assert events[1]["total"] == 3 and events[2]["online"] == 2
    assert (state.epoch, state.seq, state.likes, state.online, state.unique) == ("e1", 3, 3, 2, 1)


def test_presence_only_when_online_or_unique_changes() -> None:
    state = StreamState("e")
    _, state = sequence(state, Tick("n0", NOW, local_online=2, unique=2), "x")
    events, state = sequence(state, Tick("n0", NOW, local_online=2, unique=2), "x")
    assert events == []
    events, state = sequence(state, Tick("n1", NOW, local_online=1, unique=2), "x")
    assert [e["online"] for e in events] == [3]


def test_a_store_behind_what_was_delivered_starts_a_new_stream() -> None:
    _, state = sequence(None, Tick("n0", NOW, [{"t": "danmaku"}] * 3), "e1")
    older = replace(state, seq=1)  # restored from a copy taken two events ago
    events, fresh = sequence(older, Tick("n0", NOW, [{"t": "danmaku"}], seen=("e1", 3)), "e2")
    assert (fresh.epoch, [e["seq"] for e in events]) == ("e2", [1])
    _, same = sequence(state, Tick("n0", NOW, [{"t": "danmaku"}], seen=("e1", 3)), "e2")
    assert (same.epoch, same.seq) == ("e1", 4)  # up to date: the stream goes on


def test_silent_node_expires_from_presence() -> None:
    state = StreamState("e")
    _, state = sequence(state, Tick("n0", NOW, local_online=2, unique=2, clock=0, presence_ttl=100), "x")
    _, state = sequence(state, Tick("n1", NOW, local_online=1, unique=3, clock=50, presence_ttl=100), "x")
    events, state = sequence(
        state, Tick("n1", NOW, local_online=1, unique=3, clock=100, presence_ttl=100), "x"
    )
    assert [e["online"] for e in events] == [1]  # n0's deadline (100) passed
    assert set(state.presence) == {"n1"}


# -- differential: the Python rule against the Lua on a real Redis ------------------------------

danmaku = st.builds(
    lambda uid, text: {"t": "danmaku", "uid": uid, "name": uid.upper(), "ts": NOW, "text": text},
    st.sampled_from(USERS),
    st.text(max_size=8),
)
host = st.builds(
    lambda uid, live: {"t": "host", "uid": uid, "name": uid, "ts": NOW, "live": live},
    st.sampled_from(USERS),
    st.booleans(),
)
live = st.builds(
    lambda uid, on, url: {
        "t": "live",
        "uid": uid,
        "name": uid,
        "ts": NOW,
        "on": on,
        "node": "n0",
        "url": url,
    },
    st.sampled_from(USERS),
    st.booleans(),
    st.none() | st.just("http://127.0.0.1:9/"),
)
delete = st.builds(
    lambda target: {"t": "delete", "uid": "mod", "name": "mod", "ts": NOW, "target": target},
    st.integers(1, 40),
)
tick_input = st.fixed_dictionaries(
    {
        "node": st.sampled_from(NODES),
        "events": st.lists(danmaku | host | live | delete, max_size=3),
        "likes": st.integers(0, 5),
        "online": st.none() | st.integers(0, 4),
        "joined": st.lists(st.sampled_from(USERS), max_size=3),
        "advance": st.integers(0, 1500),  # ms of presence clock before this tick
        "lose_state": st.integers(0, 19).map(lambda n: n == 0),  # rare: 1 tick in 20
        # rare: Redis comes back from an older copy, this many seqs behind what the node delivered
        "regress": st.integers(0, 19).flatmap(lambda n: st.integers(1, 5) if n == 0 else st.none()),
    }
)


@pytest.fixture(scope="module")
def redis_db(tmp_path_factory: pytest.TempPathFactory) -> Iterator[redis.Redis]:
    server = RedisServer(Path(tmp_path_factory.mktemp("redis")))
    server.start()
    client = server.client()
    try:
        # HyperLogLog counts are exact for these few uids only if no two share a register
        client.pfadd("probe", *USERS)
        assert client.pfcount("probe") == len(USERS)
        yield client
    finally:
        client.close()
        server.stop()


_rooms = itertools.count()


@requires_redis
@settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(ticks=st.lists(tick_input, min_size=1, max_size=25))
def test_lua_publish_equals_python_rule(redis_db: redis.Redis, ticks: list[dict[str, Any]]) -> None:
    room = f"diff{next(_rooms)}"
    keys = rs.room_keys(room)
    publish = redis_db.register_script(rs.PUBLISH)
    pubsub = redis_db.pubsub(ignore_subscribe_messages=True)
    pubsub.subscribe(keys.channel)
    assert pubsub.get_message(timeout=5) is None  # the subscribe confirmation, skipped
    state: StreamState | None = None
    viewers: set[str] = set()  # what the store counts (Redis: the HyperLogLog)
    clock = 0
    try:
        for i, tick in enumerate(ticks):
            clock += tick["advance"]
            if tick["lose_state"]:  # Redis lost the room's state: both sides start a new stream
                redis_db.delete(keys.meta)
                state = None
            seen = None if state is None else (state.epoch, state.seq)  # this node is up to date
            if tick["regress"] is not None and state is not None and state.seq > 0:
                older = max(0, state.seq - tick["regress"])
                redis_db.hset(keys.meta, "s", older)
                state = replace(state, seq=older)
            viewers.update(tick["joined"])
            new_epoch = f"epoch{i}"
            events = [dict(e) for e in tick["events"]]
            args = rs.publish_args(
                room,
                keys,
                new_epoch=new_epoch,
                history_size=1000,
                history_ttl=600,
                meta_ttl=86400,
                publish_cmd="publish",
                node=tick["node"],
                local_online=tick["online"],
                presence_ttl_ms=PRESENCE_TTL,
                likes=tick["likes"],
                recent_size=50,
                now=NOW + i,
                events=events,
                joined=tick["joined"],
                clock=clock,
                seen=seen,
            )
            epoch, top, count = publish(keys=keys.script_keys, args=args)
            rule = Tick(
                tick["node"],
                NOW + i,
                events,
                tick["likes"],
                tick["online"],
                unique=len(viewers),
                clock=clock,
                presence_ttl=PRESENCE_TTL,
                seen=seen,
            )
            expected, state = sequence(state, rule, new_epoch)
            assert (epoch.decode(), top, count) == (state.epoch, state.seq, len(expected)), f"tick {i}"
            if expected:
                message = _next_message(pubsub)
                assert message == state.epoch.encode() + b"|" + protocol.batch_frame(
                    room, expected, state.epoch
                ), f"tick {i}"
        # nothing published that Python did not: Redis delivers a channel's messages in order,
        # so the next one is this marker, however slow the machine (no "quiet for 50 ms")
        redis_db.publish(keys.channel, b"end")
        assert _next_message(pubsub) == b"end"
        assert state is not None
        meta = redis_db.hmget(keys.meta, "e", "s", "l", "o", "u")
        assert meta[0].decode() == state.epoch and int(meta[1]) == state.seq
        assert int(meta[2] or 0) == state.likes
        assert (None if meta[3] is None else int(meta[3])) == state.online
        assert (None if meta[4] is None else int(meta[4])) == state.unique
        nodes = {k.decode(): int(v) for k, v in redis_db.hgetall(keys.pres).items()}
        assert nodes == {node: count for node, (count, _) in state.presence.items()}
    finally:
        pubsub.close()
        redis_db.delete(*keys.script_keys)


def _next_message(pubsub: Any) -> bytes:
    message = pubsub.get_message(timeout=5)
    assert message is not None, "the script published nothing"
    return message["data"]
