"""ICE configuration: TURN REST credentials, ICE servers in snapshots and WHEP/WHIP Link headers,
the advertised public address and the UDP port range of the node's host candidates.

A real server with a real aiortc publisher on 127.0.0.1; the SDP checks read what the
server actually sends.
"""

from __future__ import annotations

import asyncio
import base64
import hashlib
import hmac
from typing import Any

import aiohttp
import msgpack
import pytest
from aiortc import RTCConfiguration, RTCPeerConnection
from websockets.asyncio.client import connect

from server.app import App
from server.config import Config, ConfigError
from server.deadline import within
from server.media.ice import IceServers, turn_credential
from tests.conftest import token
from tests.media.pattern import PatternTrack
from tests.test_media_signaling import TIMEOUT, loopback  # noqa: F401 - autouse fixture

PUBLIC_IP = "203.0.113.7"
PORTS = (41000, 41049)


def test_turn_credential_is_coturn_rest_format() -> None:
    username, password = turn_credential("s3cret", "alice", ttl=600, now=1_700_000_000)
    assert username == "1700000600:alice"
    expected = base64.b64encode(hmac.new(b"s3cret", username.encode(), hashlib.sha1).digest()).decode()
    assert password == expected


def test_ice_server_config_is_checked() -> None:
    with pytest.raises(ValueError, match="TURN URLs need"):
        IceServers.from_config("turn:turn.example.com:3478", "", 3600)
    with pytest.raises(ValueError, match="not a STUN/TURN URL"):
        IceServers.from_config("http://example.com", "x", 3600)
    with pytest.raises(ConfigError):
        Config(media_udp_ports="70000-80000").check()
    ice = IceServers.from_config("stun:stun.example.com:3478,turn:t.example.com:3478?transport=udp", "k", 600)
    stun, turn = ice.for_client("bob", now=100)
    assert stun == {"urls": ["stun:stun.example.com:3478"]}
    assert turn["username"] == "700:bob" and turn["urls"] == ["turn:t.example.com:3478?transport=udp"]
    links = ice.link_headers("bob", now=100)
    assert links[0] == '<stun:stun.example.com:3478>; rel="ice-server"'
    assert links[1].startswith(
        '<turn:t.example.com:3478?transport=udp>; rel="ice-server"; username="700:bob"'
    )


@pytest.fixture
def config() -> Config:
    return Config(
        port=0,
        http_port=0,
        tick_ms=20,
        node_id="ice-node",
        media_stats_interval=0,
        ice_servers="turn:127.0.0.1:3478?transport=udp",
        turn_secret="turn-secret",
        media_public_ip=PUBLIC_IP,
        media_udp_ports=f"{PORTS[0]}-{PORTS[1]}",
    )


def host_candidates(sdp: str) -> list[tuple[str, int]]:
    out = []
    for line in sdp.splitlines():
        if line.startswith("a=candidate:") and " typ host" in line:
            fields = line.split(" ")
            out.append((fields[4], int(fields[5])))
    return out


async def test_snapshot_links_public_address_and_port_range(app: App) -> None:
    ws = await connect(f"ws://127.0.0.1:{app.port}/ws?token={token('r1', 'hana', 'host')}")
    pc = RTCPeerConnection(RTCConfiguration(iceServers=[]))
    try:
        snapshot: dict[str, Any] = msgpack.unpackb(await within(ws.recv(), TIMEOUT))
        (turn,) = snapshot["ice_servers"]
        assert turn["urls"] == ["turn:127.0.0.1:3478?transport=udp"] and turn["username"].endswith(":hana")

        pc.addTrack(PatternTrack(160, 120))
        await pc.setLocalDescription(await pc.createOffer())
        await ws.send(msgpack.packb({"t": "publish", "sdp": pc.localDescription.sdp, "cid": 1}))
        async with asyncio.timeout(TIMEOUT):
            while (answer := msgpack.unpackb(await ws.recv()))["t"] != "answer":
                pass
        candidates = host_candidates(answer["sdp"])
        assert candidates, answer["sdp"]
        for address, port in candidates:  # advertised: the public address, a port in the range
            assert address == PUBLIC_IP and PORTS[0] <= port <= PORTS[1]

        headers = {"Content-Type": "application/sdp", "Authorization": f"Bearer {token('r1', 'wendy')}"}
        player = RTCPeerConnection(RTCConfiguration(iceServers=[]))
        player.addTransceiver("video", direction="recvonly")
        await player.setLocalDescription(await player.createOffer())
        async with (
            aiohttp.ClientSession() as http,
            http.post(
                f"http://127.0.0.1:{app.http_port}/whep/r1", data=player.localDescription.sdp, headers=headers
            ) as resp,
        ):
            assert resp.status == 201
            (link,) = resp.headers.getall("Link")
            assert link.startswith('<turn:127.0.0.1:3478?transport=udp>; rel="ice-server"; username="')
            assert ':wendy"; credential="' in link and "Link" in resp.headers["Access-Control-Expose-Headers"]
            assert all(a == PUBLIC_IP for a, _ in host_candidates(await resp.text()))
        await player.close()
    finally:
        await pc.close()
        await ws.close()
