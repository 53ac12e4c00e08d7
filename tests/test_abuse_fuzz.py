"""Fuzzing: the decoder never raises anything but ProtocolError, and a connection sending
hypothesis-generated frames disturbs nobody (an honest client in the room gets all its messages)
and causes no server fault (no ERROR log line, no traceback, no 4999: the `server_faults` fixture)."""

from __future__ import annotations

import contextlib
from typing import Any

import msgpack
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from websockets.asyncio.client import connect
from websockets.exceptions import ConnectionClosed

from server.app import App
from server.wire import protocol
from server.wire.protocol import ProtocolError
from tests.conftest import WsClient, token

TYPES = [
    "join", "leave", "danmaku", "like", "dm", "ping", "mod", "block", "unblock", "dm_seen",
    "subscribe", "unsubscribe", "unpublish", "invite", "bogus",
]  # fmt: skip
FIELDS = ["t", "text", "cid", "count", "to", "ts", "token", "room", "resume", "action", "uid", "seq",
          "duration", "reason", "id", "v"]  # fmt: skip

scalars = (
    st.none()
    | st.booleans()
    | st.integers(min_value=-(2**63), max_value=2**64 - 1)
    | st.floats(allow_nan=True)
    | st.text(max_size=40)
    | st.binary(max_size=40)
)
values = st.recursive(
    scalars,
    lambda inner: st.lists(inner, max_size=5) | st.dictionaries(st.text(max_size=8), inner, max_size=5),
    max_leaves=20,
)
# maps shaped like messages (a known type, known field names, arbitrary values) reach the handlers
messages = st.fixed_dictionaries(
    {"t": st.sampled_from(TYPES)}, optional={f: values for f in FIELDS if f != "t"}
) | st.dictionaries(st.sampled_from(FIELDS) | st.text(max_size=8), values, max_size=8)


def _parse(data: bytes) -> None:
    with contextlib.suppress(ProtocolError):  # anything else escaping fails the test
        protocol.parse_client_message(data)


@settings(max_examples=500, deadline=None)
@given(st.binary(max_size=512))
def test_decoder_arbitrary_bytes(data: bytes) -> None:
    _parse(data)


@settings(max_examples=500, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(values | messages)
def test_decoder_arbitrary_msgpack(obj: Any) -> None:
    _parse(msgpack.packb(obj, use_bin_type=True))


@settings(max_examples=300, deadline=None)
@given(messages, st.integers(min_value=1, max_value=40))
def test_decoder_truncated_frames(obj: dict[str, Any], cut: int) -> None:
    data = msgpack.packb(obj, use_bin_type=True)
    _parse(data[:-cut] if cut < len(data) else data[:1])


def _collect(strategy: st.SearchStrategy[Any], count: int) -> list[Any]:
    """Draw `count` examples with hypothesis (shrinking is pointless here: the server is the oracle)."""
    found: list[Any] = []

    @settings(max_examples=count, deadline=None, database=None, suppress_health_check=list(HealthCheck))
    @given(strategy)
    def draw(example: Any) -> None:
        found.append(example)

    draw()
    return found


@pytest.fixture
def config(config: Any) -> Any:
    config.rate_limits = "off"  # let every fuzz frame reach the handlers
    config.abuse_strikes = 0
    config.repeat_max = 3
    config.max_loop_lag = 0  # drawing examples blocks this (shared) loop for a while
    config.max_conns_per_user = 0  # a `leave` and the reconnect after it may overlap
    return config


async def test_fuzzing_connection_disturbs_nobody(app: App, join: Any, server_faults: None) -> None:
    frames = [msgpack.packb(m, use_bin_type=True) for m in _collect(messages, 300)]
    frames += _collect(st.binary(max_size=200), 100)
    host = await join("host", role="host")
    viewer = await join("viewer")
    url = f"ws://127.0.0.1:{app.port}/ws?token={token(user='fuzzer')}"
    fuzzer = WsClient(await connect(url))
    await fuzzer.recv()

    async def send_or_rejoin(fuzzer: WsClient, frame: bytes) -> WsClient:
        try:
            await fuzzer.ws.send(frame)
            return fuzzer
        except ConnectionClosed as closed:  # only a generated `leave` may end it (1000)
            assert closed.rcvd is not None and closed.rcvd.code == 1000, closed
            fuzzer = WsClient(await connect(url))
            await fuzzer.recv()
            await fuzzer.ws.send(frame)
            return fuzzer

    last_seq = 0
    for i, frame in enumerate(frames):
        fuzzer = await send_or_rejoin(fuzzer, frame)
        if i % 50 == 0:  # the room keeps working throughout
            await host.send(t="danmaku", text=f"still live {i}")
            [got] = await viewer.events(
                lambda e, i=i: e["t"] == "danmaku" and e["text"] == f"still live {i}", 1
            )
            assert got["uid"] == "host" and got["seq"] > last_seq  # sequenced, in order, from the host
            last_seq = got["seq"]
    # the fuzzer's connection (or, after a generated `leave`, its next one) still answers
    ping = msgpack.packb({"t": "ping", "ts": 1})
    fuzzer = await send_or_rejoin(fuzzer, ping)
    try:
        await fuzzer.recv_until(lambda f: f["t"] == "pong")
    except ConnectionClosed as closed:  # the leave was the last frame before the ping
        assert closed.rcvd is not None and closed.rcvd.code == 1000, closed
        fuzzer = await send_or_rejoin(WsClient(await connect(url)), ping)
        await fuzzer.recv()  # snapshot
        await fuzzer.recv_until(lambda f: f["t"] == "pong")
    await host.send(t="danmaku", text="the end")
    await viewer.events(lambda e: e["t"] == "danmaku" and e["text"] == "the end", 1)
    fuzzer.ws.transport.abort()
