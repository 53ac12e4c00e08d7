"""The short path to the first picture: media subscribed with the join, dev joins without a token.

Real server, real WebSockets, a real aiortc publisher and viewer on 127.0.0.1. Every wait is
on a frame with a timeout; nothing asserts a duration (the benchmark measures speed:
load_tests/bench_first_frame.py, docs/BENCHMARKS.md).
"""

from __future__ import annotations

import asyncio
import dataclasses
from types import SimpleNamespace
from typing import Any

import av
import msgpack
import pytest
from aiortc import RTCConfiguration, RTCPeerConnection, RTCSessionDescription
from websockets.asyncio.client import ClientConnection, connect

from server.app import App
from server.config import Config
from server.deadline import within
from server.edge.connection import Admit, AwaitJoin, Close, Connection, Dispatch, Refused
from server.media import loopback_candidates
from server.wire import auth, protocol
from server.wire.protocol import ErrorCode
from tests.conftest import token
from tests.media.pattern import PatternTrack
from tests.test_connection import HANDLERS, FakeChecks

TIMEOUT = 30.0


@pytest.fixture(autouse=True)
def loopback() -> Any:
    with loopback_candidates():
        yield


@pytest.fixture
def config(config: Config) -> Config:
    return dataclasses.replace(config, media_stats_interval=0, join_timeout=5.0)


async def frames(ws: ClientConnection, n: int) -> list[dict[str, Any]]:
    """The next n non-batch frames (batches carry room events; not what these tests look at)."""
    out: list[dict[str, Any]] = []
    async with asyncio.timeout(TIMEOUT):
        while len(out) < n:
            frame = msgpack.unpackb(await ws.recv())
            if frame["t"] != "batch":
                out.append(frame)
    return out


async def publish(app: App, pcs: list[RTCPeerConnection]) -> ClientConnection:
    ws = await connect(f"ws://127.0.0.1:{app.port}/ws?token={token('r1', 'hana', 'host')}")
    await frames(ws, 1)  # snapshot
    pc = RTCPeerConnection(RTCConfiguration(iceServers=[]))
    pcs.append(pc)
    pc.addTrack(PatternTrack(160, 120))
    await pc.setLocalDescription(await pc.createOffer())
    await ws.send(msgpack.packb({"t": "publish", "sdp": pc.localDescription.sdp, "cid": "p"}))
    (answer,) = await frames(ws, 1)
    assert answer["t"] == "answer", answer
    await pc.setRemoteDescription(RTCSessionDescription(sdp=answer["sdp"], type="answer"))
    return ws


async def test_join_frame_with_subscribe_gets_offer_after_snapshot_and_video(app: App) -> None:
    pcs: list[RTCPeerConnection] = []
    host = await publish(app, pcs)
    try:
        async with connect(f"ws://127.0.0.1:{app.port}/ws") as ws:
            await ws.send(msgpack.packb({"t": "join", "token": token("r1", "vee"), "subscribe": "m0"}))
            snapshot, offer = await frames(ws, 2)
            assert snapshot["t"] == "snapshot"
            if offer["t"] == "subscribed":  # the publication was not ready yet: the offer follows it
                assert offer["cid"] == "m0"
                (offer,) = await frames(ws, 1)
            assert offer["t"] == "offer", offer
            pc = RTCPeerConnection(RTCConfiguration(iceServers=[]))
            pcs.append(pc)
            got: asyncio.Future[Any] = asyncio.get_running_loop().create_future()
            pc.on("track", lambda t: got.done() or got.set_result(t))
            await pc.setRemoteDescription(RTCSessionDescription(sdp=offer["sdp"], type="offer"))
            await pc.setLocalDescription(await pc.createAnswer())
            await ws.send(msgpack.packb({"t": "answer", "sdp": pc.localDescription.sdp, "cid": "m0"}))
            track = await within(got, TIMEOUT)
            frame = await within(track.recv(), TIMEOUT)
            assert isinstance(frame, av.VideoFrame)
    finally:
        await host.close()
        for pc in pcs:
            await pc.close()


async def test_dev_join_in_url_with_subscribe_before_live(app: App) -> None:
    async with connect(f"ws://127.0.0.1:{app.port}/ws?room=r2&dev_user=dee&name=Dee&subscribe=m0") as ws:
        snapshot, subscribed = await frames(ws, 2)
        assert snapshot["t"] == "snapshot" and snapshot["you"]["uid"] == "dee"
        assert snapshot["you"]["role"] == "viewer" and snapshot["you"]["name"] == "Dee"
        assert subscribed == {"t": "subscribed", "live": False, "cid": "m0"}
        # the connection is subscribed: a second subscribe is a state error, not a new viewer
        await ws.send(msgpack.packb({"t": "subscribe", "cid": "m1"}))
        (error,) = await frames(ws, 1)
        assert error["code"] == ErrorCode.MEDIA_BAD_STATE and error["ref"] == "m1"


async def test_dev_join_bad_ids_refused(app: App) -> None:
    async with connect(f"ws://127.0.0.1:{app.port}/ws?room=r2&dev_user=no%20spaces") as ws:
        (error,) = await frames(ws, 1)
        assert error["code"] == ErrorCode.BAD_FIELD
        await ws.wait_closed()
        assert ws.close_code == ErrorCode.BAD_FIELD


@pytest.mark.parametrize("config", [Config(port=0, http_port=0, dev_tokens=False)], indirect=False)
async def test_dev_join_refused_without_dev_tokens(app: App) -> None:
    async with connect(f"ws://127.0.0.1:{app.port}/ws?room=r2&dev_user=dee") as ws:
        (error,) = await frames(ws, 1)
        assert error["code"] == ErrorCode.AUTH_REQUIRED
        await ws.wait_closed()
        assert ws.close_code == ErrorCode.AUTH_REQUIRED


async def test_join_subscribe_must_be_a_cid(app: App) -> None:
    async with connect(f"ws://127.0.0.1:{app.port}/ws") as ws:
        await ws.send(msgpack.packb({"t": "join", "token": token("r1", "vee"), "subscribe": [1]}))
        (error,) = await frames(ws, 1)
        assert error["code"] == ErrorCode.BAD_FIELD


# -- the same rules in the state machine, without a socket (server.edge.connection) ---------------------


def _machine(dev_tokens: Any = None) -> Connection:
    peer = SimpleNamespace(remote_ip="10.0.0.2", identity=None, room_id=None, abuse=None)
    return Connection(peer, FakeChecks(), HANDLERS, 2.0, dev_tokens)  # type: ignore[arg-type]


def test_machine_dev_join_admits_a_minted_token_then_subscribes() -> None:
    minted: list[tuple[str, str, str]] = []

    def mint(room: str, user: str, name: str) -> str:
        minted.append((room, user, name))
        return token(room, user)

    conn = _machine(mint)
    (admit,) = conn.open("/ws?room=r9&dev_user=dee&name=Dee&subscribe=m0")
    assert isinstance(admit, Admit) and admit.room == "r9" and minted == [("r9", "dee", "Dee")]
    conn.admitted(auth.Identity(uid="dee", name="Dee", role="viewer", room="r9"))
    assert conn.entered() == [Dispatch(HANDLERS[protocol.Subscribe], protocol.Subscribe(cid="m0"))]


def test_machine_join_frame_subscribe_and_plain_join() -> None:
    conn = _machine()
    (wait,) = conn.open("/ws")
    assert isinstance(wait, AwaitJoin)
    (admit,) = conn.receive(msgpack.packb({"t": "join", "token": token("r1", "vee"), "subscribe": True}))
    assert isinstance(admit, Admit)
    conn.admitted(auth.Identity(uid="vee", name="vee", role="viewer", room="r1"))
    assert conn.entered() == [Dispatch(HANDLERS[protocol.Subscribe], protocol.Subscribe(cid=None))]
    plain = _machine()
    plain.open(f"/ws?token={token('r1', 'zed')}")
    plain.admitted(auth.Identity(uid="zed", name="zed", role="viewer", room="r1"))
    assert plain.entered() == []


def test_machine_dev_join_without_dev_tokens_is_refused() -> None:
    out = _machine(None).open("/ws?room=r9&dev_user=dee")
    assert [o.error.code for o in out if isinstance(o, Refused)] == [ErrorCode.AUTH_REQUIRED]
    assert any(isinstance(o, Close) and o.code == ErrorCode.AUTH_REQUIRED for o in out)
