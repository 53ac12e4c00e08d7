"""Every door x every attack (issue #11): each refused the same way, by the same Guard code.

The table below has one row per door of server.abuse.doors.DOORS and one column per attack;
a door added to the registry without its row fails `test_every_door_has_a_row`. Each cell
starts its own node (keys rotated: LIVEROOM_SECRETS-style ring without the dev secret,
--join-nonce on, an admin token) and runs the attack against a real socket.
"""

from __future__ import annotations

import asyncio
import json
import re
import time
from pathlib import Path
from typing import Any

import aiohttp
import jwt
import msgpack
import pytest
from aiortc import RTCConfiguration, RTCPeerConnection
from websockets.asyncio.client import connect
from websockets.exceptions import ConnectionClosed, InvalidStatus
from websockets.frames import Frame, Opcode

from server.abuse.doors import DOORS
from server.abuse.tokens import Keyring
from server.app import App
from server.broker.base import Sanction
from server.broker.memory import MemoryBroker
from server.config import DEFAULT_SECRET, Config
from server.deadline import within
from server.media import loopback_candidates
from server.wire import auth, protocol
from server.wire.protocol import ErrorCode, ProtocolError

NEW, OLD = "k2-new-secret-for-the-doors-test-0123456789", "k1-old-secret-for-the-doors-test-0123456789"
ADMIN_TOKEN = "admin-token-for-the-doors-test"
TIMEOUT = 20.0
ACCEPTED = "accepted"

ATTACKS = (
    "forged_key",
    "rotated_key",
    "banned_user",
    "replayed_nonce",
    "flood",
    "malformed_body",
    "wrong_host",
    "unencodable_text",
)

# (HTTP status, error code) expected; the WebSocket door answers 101 then an error frame (the code),
# or an HTTP status before the handshake. ACCEPTED: the request is served (rotated key: still valid).
H = ErrorCode
TABLE: dict[str, dict[str, Any]] = {
    "ws": {
        "forged_key": (101, H.TOKEN_INVALID),
        "rotated_key": ACCEPTED,
        "banned_user": (101, H.BANNED),
        "replayed_nonce": (101, H.TOKEN_REPLAYED),
        "flood": (101, H.JOIN_THROTTLED),
        "malformed_body": (101, H.BAD_FRAME),
        "wrong_host": (403, H.HOST_FORBIDDEN),
        "unencodable_text": (
            101,
            H.TOKEN_INVALID,
        ),  # a token name with a lone surrogate (an emoji cut in half)
    },
    "whip": {
        "forged_key": (401, H.TOKEN_INVALID),
        "rotated_key": ACCEPTED,
        "banned_user": (403, H.BANNED),
        "replayed_nonce": (401, H.TOKEN_REPLAYED),
        "flood": (429, H.JOIN_THROTTLED),
        "malformed_body": (400, H.MEDIA_BAD_SDP),
        "wrong_host": (403, H.HOST_FORBIDDEN),
        "unencodable_text": (401, H.TOKEN_INVALID),
    },
    "rtmp": {  # nginx-rtmp's on_publish callback (a 4xx: nginx drops the encoder)
        "forged_key": (401, H.TOKEN_INVALID),
        "rotated_key": ACCEPTED,
        "banned_user": (403, H.BANNED),
        "replayed_nonce": (401, H.TOKEN_REPLAYED),
        "flood": (429, H.JOIN_THROTTLED),
        "malformed_body": (400, H.BAD_FIELD),  # a stream name that is not a room id
        "wrong_host": ACCEPTED,  # RTMP has no Host header, and no browser speaks it: no rebinding
        "unencodable_text": (401, H.TOKEN_INVALID),
    },
    "rtmp_key": {  # POST /rtmp/<room>/key: a host token for a short RTMP publish key
        "forged_key": (401, H.TOKEN_INVALID),
        "rotated_key": ACCEPTED,
        "banned_user": (403, H.BANNED),
        "replayed_nonce": ACCEPTED,  # not a session: the key's own nonce is claimed when it publishes
        "flood": (429, H.JOIN_THROTTLED),
        "malformed_body": (400, H.BAD_FIELD),  # no body: a room id that is not one
        "wrong_host": (403, H.HOST_FORBIDDEN),
        "unencodable_text": (401, H.TOKEN_INVALID),
    },
    "whep": {
        "forged_key": (401, H.TOKEN_INVALID),
        "rotated_key": ACCEPTED,
        "banned_user": (403, H.BANNED),
        "replayed_nonce": (401, H.TOKEN_REPLAYED),
        "flood": (429, H.MEDIA_TOO_MANY_SESSIONS),
        "malformed_body": (400, H.MEDIA_BAD_SDP),
        "wrong_host": (403, H.HOST_FORBIDDEN),
        "unencodable_text": (401, H.TOKEN_INVALID),
    },
    "hls": {  # GET /hls/<room>/token: the viewer's room token for a URL token
        "forged_key": (401, H.TOKEN_INVALID),
        "rotated_key": ACCEPTED,
        "banned_user": (403, H.BANNED),
        "replayed_nonce": ACCEPTED,  # not a session: the page's one token also joins the WebSocket
        "flood": (429, H.JOIN_THROTTLED),
        "malformed_body": (400, H.BAD_FIELD),  # no body: a room id that is not one
        "wrong_host": (403, H.HOST_FORBIDDEN),
        "unencodable_text": (401, H.TOKEN_INVALID),
    },
    "stats": {
        "forged_key": (401, H.TOKEN_INVALID),
        "rotated_key": ACCEPTED,
        "banned_user": (403, H.BANNED),
        "replayed_nonce": ACCEPTED,  # a read is not a session: the host's dashboard polls with one token
        "flood": (429, H.JOIN_THROTTLED),
        "malformed_body": (400, H.BAD_FIELD),
        "wrong_host": (403, H.HOST_FORBIDDEN),
        "unencodable_text": (401, H.TOKEN_INVALID),
    },
    "admin": {
        "forged_key": (401, H.TOKEN_INVALID),
        "rotated_key": (403, H.FORBIDDEN),  # a room token signed with the old key: known, not admin
        "banned_user": ACCEPTED,  # the admin token names no user: nothing to ban
        "replayed_nonce": ACCEPTED,  # the admin token is no one-time JWT
        "flood": (429, H.JOIN_THROTTLED),
        "malformed_body": (400, H.BAD_FIELD),
        "wrong_host": (403, H.HOST_FORBIDDEN),
        "unencodable_text": (400, H.BAD_FIELD),  # a JSON body with "\ud83d"
    },
}


def test_every_door_has_a_row() -> None:
    assert [door.name for door in DOORS] == list(TABLE)
    for door, row in TABLE.items():
        assert tuple(row) == ATTACKS, door


def test_every_door_is_documented() -> None:
    api = (Path(__file__).resolve().parent.parent / "docs" / "API.md").read_text()
    for door in DOORS:
        assert f"| `{door.name}` |" in api, f"door {door.name} has no row in docs/API.md 'Doors'"


def test_no_door_verifies_a_token_by_itself() -> None:
    """auth.verify is the keyring's primitive; the keyring is called by the Guard only."""
    root = Path(__file__).resolve().parent.parent / "server"
    for path in root.rglob("*.py"):
        text = path.read_text()
        rel = path.relative_to(root).as_posix()
        if re.search(r"\bauth\.verify\(|from server\.auth import .*\bverify\b", text):
            assert rel in ("abuse/tokens.py",), rel
        if re.search(r"keyring\.verify\(|auth\.verify_node\(", text):  # node credentials too
            assert rel == "abuse/guard.py", rel


def mint(key: str = NEW, kid: str | None = "k2", **kw: Any) -> str:
    kw.setdefault("room", "r1")
    kw.setdefault("user", "mallory")
    return auth.mint(key, kid=kid, **kw)


_OFFERS: dict[str, str] = {}


async def offer(kind: str) -> str:
    """An SDP offer (made once by aiortc): sendonly audio+video for WHIP, recvonly for WHEP."""
    if kind not in _OFFERS:
        pc = RTCPeerConnection(RTCConfiguration(iceServers=[]))
        direction = "sendonly" if kind == "whip" else "recvonly"
        pc.addTransceiver("video", direction=direction)
        pc.addTransceiver("audio", direction=direction)
        with loopback_candidates():
            await pc.setLocalDescription(await pc.createOffer())
        _OFFERS[kind] = pc.localDescription.sdp
        await pc.close()
    return _OFFERS[kind]


def make_config(attack: str, door: str = "") -> Config:
    return Config(
        port=0,
        http_port=0,
        rtmp_port=0 if door == "rtmp" else -1,  # nginx-rtmp only where it is attacked
        tick_ms=20,
        node_id="doors-node",
        join_timeout=2.0,
        secrets=f"k2:{NEW},k1:{OLD}",
        join_nonce=True,
        admin_token=ADMIN_TOKEN,
        repeat_max=0,
        max_loop_lag=0,
        media_stats_interval=0,
        rate_limits="join.ip=0.5/12" if attack == "flood" else "",
    )


class Door:
    """One attempt at a door: (status, code) or ACCEPTED."""

    def __init__(self, app: App, name: str, http: aiohttp.ClientSession) -> None:
        self.app, self.name, self.http = app, name, http

    async def attempt(
        self, credential: str | None, *, host: str | None = None, body: bytes | None = None
    ) -> Any:
        if self.name == "ws":
            return await self._ws(credential, host, body)
        if self.name == "rtmp":
            return await self._rtmp(credential, host, body)
        headers = {"Authorization": f"Bearer {credential}"} if credential else {}
        if host:
            headers["Host"] = host
        base = f"http://127.0.0.1:{self.app.http_port}"
        if self.name in ("whip", "whep"):
            headers["Content-Type"] = "application/sdp"
            data = body if body is not None else (await offer(self.name)).encode()
            method, url = "POST", f"{base}/{self.name}/r1"
        elif self.name == "stats":
            method, url, data = "GET", f"{base}/api/rooms/{'bad%20room' if body else 'r1'}/stats", None
        elif self.name == "hls":
            method, url, data = "GET", f"{base}/hls/{'bad%20room' if body else 'r1'}/token", None
        elif self.name == "rtmp_key":
            method, url, data = "POST", f"{base}/rtmp/{'bad%20room' if body else 'r1'}/key", None
        else:
            data = body if body is not None else json.dumps({"action": "mute", "rooms": ["r1"]}).encode()
            method, url = "POST", f"{base}/api/admin/users/bob/sanction"
        async with self.http.request(method, url, data=data, headers=headers) as response:
            if response.status < 300:
                return ACCEPTED
            assert response.content_type == "application/json", (response.status, await response.text())
            return response.status, (await response.json())["code"]

    async def _rtmp(self, credential: str | None, host: str | None, body: bytes | None) -> Any:
        """What nginx-rtmp sends the node when an encoder publishes with the host token as its
        stream key (OBS's form; a malformed one: rtmp://.../live/bad room?token=...)."""
        assert self.app.rtmp is not None
        form = {"call": "publish", "app": "live", "name": credential or "", "addr": "127.0.0.1"}
        if body:
            form.update(name="bad room", token=credential or "")
        url = f"http://127.0.0.1:{self.app.rtmp.callback_port}/on_publish"
        async with self.http.post(url, data=form, headers={"Host": host} if host else {}) as response:
            if response.status < 300:
                return ACCEPTED
            return response.status, (await response.json())["code"]

    async def _ws(self, credential: str | None, host: str | None, garbage: bytes | None) -> Any:
        port = self.app.port
        try:  # a Host of evil.example (the URL's), the socket still to 127.0.0.1
            ws = await connect(
                f"ws://{host or '127.0.0.1'}:{port}/ws?token={credential}",
                host="127.0.0.1",
                port=port,
                origin=f"http://{host}:{port}" if host else None,  # type: ignore[arg-type]
            )
        except InvalidStatus as exc:
            return exc.response.status_code, json.loads(exc.response.body)["code"]
        async with ws:
            frame = msgpack.unpackb(await within(ws.recv(), TIMEOUT))
            if frame["t"] == "error":
                return 101, frame["code"]
            assert frame["t"] == "snapshot", frame
            if garbage is None:
                return ACCEPTED
            await ws.send(garbage)
            while True:  # a batch (presence, the join's own) may come before the refusal
                frame = msgpack.unpackb(await within(ws.recv(), TIMEOUT))
                if frame["t"] == "error":
                    return 101, frame["code"]


HOST_DOORS = ("whip", "rtmp", "rtmp_key", "stats")  # doors a host token is the good credential of


def good_credential(door: str, **kw: Any) -> str:
    if door == "admin":
        return ADMIN_TOKEN
    role = "host" if door in HOST_DOORS else "viewer"
    return mint(role=role, **kw)


async def run_attack(app: App, door: Door, attack: str) -> Any:
    name = door.name
    if name == "whep":  # something to play: a WHIP publisher (its ICE never connects; fine here)
        assert await Door(app, "whip", door.http).attempt(mint(role="host", user="obs")) == ACCEPTED
    if attack == "forged_key":  # signed with the public dev default, not in the ring
        if name == "admin":
            return await door.attempt("not-the-admin-token")
        role = "host" if name in HOST_DOORS else "viewer"
        return await door.attempt(mint(DEFAULT_SECRET, kid=None, role=role))
    if attack == "rotated_key":  # signed with the old key, still in the ring: the same answer everywhere
        role = "host" if name in (*HOST_DOORS, "admin") else "viewer"
        return await door.attempt(mint(OLD, kid="k1", role=role))
    if attack == "banned_user":
        await app.broker.put_sanction(Sanction("r1", "mallory", "ban", None, "test", False))
        return await door.attempt(good_credential(name))
    if attack == "replayed_nonce":
        credential = good_credential(name, user="replayer")
        assert await door.attempt(credential) == ACCEPTED
        return await door.attempt(credential)
    if attack == "flood":  # one user (one IP) as fast as it can: a refusal well before 60 requests
        results = [await door.attempt(good_credential(name, user="flooder"))]
        while results[-1] == ACCEPTED or results[-1][1] in (H.MEDIA_ALREADY_PUBLISHING,):
            assert len(results) < 60, results
            results.append(await door.attempt(good_credential(name, user="flooder")))
        if name == "whep":  # the per-user session cap (3) comes before the join bucket (burst 10)
            assert results[:3] == [ACCEPTED] * 3, results
        return results[-1]
    if attack == "malformed_body":
        if name == "ws":
            return await door.attempt(good_credential(name), body=b"\xc1\xff")
        if name in ("whip", "whep", "rtmp"):
            return await door.attempt(good_credential(name), body=b"v=0\r\n\xff\xfe\xc3(")
        if name in ("stats", "hls", "rtmp_key"):
            return await door.attempt(good_credential(name), body=b"x")
        return await door.attempt(ADMIN_TOKEN, body=b"[" * 10_000)
    if attack == "wrong_host":  # DNS rebinding: the page and the Host are evil.example
        return await door.attempt(good_credential(name), host="evil.example")
    if attack == "unencodable_text":  # a lone UTF-16 surrogate: a name cut in half, JSON "\ud83d"
        if name == "admin":
            body = b'{"action": "mute", "rooms": ["r1"], "reason": "cut \\ud83d"}'
            return await door.attempt(ADMIN_TOKEN, body=body)
        return await door.attempt(good_credential(name, name="Ann \ud83d"))
    raise AssertionError(attack)


@pytest.mark.parametrize("attack", ATTACKS)
@pytest.mark.parametrize("door_name", list(TABLE))
async def test_door_attack(door_name: str, attack: str) -> None:
    app = App(make_config(attack, door_name))
    await app.start()
    try:
        with loopback_candidates():
            async with aiohttp.ClientSession() as http:
                result = await run_attack(app, Door(app, door_name, http), attack)
    finally:
        await app.stop()
    expected = TABLE[door_name][attack]
    assert result == expected, f"{door_name} x {attack}: {result} != {expected}"


async def test_rotation_is_identical_on_every_door() -> None:
    """--secret S plus LIVEROOM_SECRETS: S is not in the ring, on any door; a removed key neither."""
    config = make_config("rotated_key", "rtmp")
    config.secret = "S-" + "x" * 40
    app = App(config)
    await app.start()
    try:
        async with aiohttp.ClientSession() as http:
            for name in ("ws", "whip", "rtmp", "rtmp_key", "whep", "stats"):
                door = Door(app, name, http)
                role = "host" if name in HOST_DOORS else "viewer"
                for key in (config.secret, "a-removed-key-" + "y" * 30):
                    assert await door.attempt(mint(key, kid="k0", role=role)) in (
                        (401, H.TOKEN_INVALID),
                        (101, H.TOKEN_INVALID),
                    ), name
    finally:
        await app.stop()


@pytest.mark.parametrize("duration", ["1e308", "NaN", "Infinity", "-Infinity", "-1", "true", '"10"'])
async def test_admin_sanction_duration_refused(duration: str) -> None:
    app = App(make_config("malformed_body"))
    await app.start()
    try:
        body = f'{{"action": "mute", "rooms": ["r1"], "duration": {duration}}}'.encode()
        async with aiohttp.ClientSession() as http:
            assert await Door(app, "admin", http).attempt(ADMIN_TOKEN, body=body) == (400, H.BAD_FIELD)
    finally:
        await app.stop()


async def test_origin_still_checked_with_an_allowed_host() -> None:
    """Host fine (127.0.0.1), Origin another site: cross-site WebSocket hijacking, 403 as before."""
    app = App(make_config("wrong_host"))
    await app.start()
    try:
        with pytest.raises(InvalidStatus) as info:
            await connect(f"ws://127.0.0.1:{app.port}/ws", origin="http://evil.example")  # type: ignore[arg-type]
        assert info.value.response.status_code == 403
        assert json.loads(info.value.response.body)["code"] == H.ORIGIN_FORBIDDEN
        async with connect(f"ws://localhost:{app.port}/ws?token={mint()}") as ws:  # localhost: own name
            assert msgpack.unpackb(await ws.recv())["t"] == "snapshot"
    finally:
        await app.stop()


async def test_ws_replay_closes_with_4306() -> None:
    app = App(make_config("replayed_nonce"))
    await app.start()
    try:
        credential = mint()
        async with connect(f"ws://127.0.0.1:{app.port}/ws?token={credential}") as ws:
            assert msgpack.unpackb(await ws.recv())["t"] == "snapshot"
            async with connect(f"ws://127.0.0.1:{app.port}/ws?token={credential}") as again:
                with pytest.raises(ConnectionClosed) as info:
                    while True:
                        await within(again.recv(), TIMEOUT)
                assert info.value.rcvd is not None and info.value.rcvd.code == H.TOKEN_REPLAYED
    finally:
        await app.stop()


async def _wait_for(predicate: Any, timeout: float = TIMEOUT) -> None:
    """Until predicate() holds (it changes on the server's own timers), or fail."""
    async with asyncio.timeout(timeout):
        while not predicate():
            await asyncio.sleep(0.02)


async def test_unconnected_media_sessions_are_torn_down_and_free_their_slot() -> None:
    """WHEP offers that never finish ICE: capped per user (3 by default, here 2), torn down after
    media_ice_timeout, after which the same user gets a slot again."""
    config = make_config("flood")
    config.rate_limits, config.media_sessions_per_user, config.media_ice_timeout = "off", 2, 4.0
    app = App(config)
    await app.start()
    try:
        with loopback_candidates():
            async with aiohttp.ClientSession() as http:
                assert await Door(app, "whip", http).attempt(mint(role="host", user="obs")) == ACCEPTED
                whep = Door(app, "whep", http)
                assert [await whep.attempt(mint()) for _ in range(3)] == [
                    ACCEPTED,
                    ACCEPTED,
                    (429, H.MEDIA_TOO_MANY_SESSIONS),
                ]
                gateway = app.media
                await _wait_for(lambda: not gateway.resources)  # the publisher's ICE never connected either
                assert gateway.viewer_count == 0 and gateway.user_sessions.held("r1|mallory") == 0
                assert await whep.attempt(mint()) == (409, H.MEDIA_NO_MEDIA)  # slot free; publisher gone
    finally:
        await app.stop()


async def test_media_sessions_capped_per_ip() -> None:
    config = make_config("flood")
    config.rate_limits, config.media_sessions_per_ip = "off", 3
    app = App(config)
    await app.start()
    try:
        with loopback_candidates():
            async with aiohttp.ClientSession() as http:
                assert await Door(app, "whip", http).attempt(mint(role="host", user="obs")) == ACCEPTED
                whep = Door(app, "whep", http)
                results = [await whep.attempt(mint(user=f"v{i}")) for i in range(3)]
                assert results == [ACCEPTED, ACCEPTED, (429, H.MEDIA_TOO_MANY_SESSIONS)]
    finally:
        await app.stop()


async def test_media_port_closes_slow_header_connections() -> None:
    """A connection that never finishes its request headers is closed after the header timeout
    (join_timeout, 2 s here) like on the WebSocket port."""
    app = App(make_config("malformed_body"))
    await app.start()
    try:
        for port in (app.http_port, app.port):
            reader, writer = await asyncio.open_connection("127.0.0.1", port)
            writer.write(b"GET /api/admin/health HTTP/1.1\r\nHost: 127.0.0.1\r\nX-Slow: a")
            await writer.drain()
            await within(reader.read(), TIMEOUT)  # EOF: closed (aiohttp's default: 75 s)
            writer.close()
    finally:
        await app.stop()


async def _raw_answer(port: int, data: bytes, trickle: bytes = b"") -> tuple[int, dict[str, Any]]:
    """Send a raw request (then `trickle`, never the rest); the answer and its JSON body, read to
    the connection's close: the server must close it itself."""
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    try:
        writer.write(data + trickle)
        await writer.drain()
        answer = await within(reader.read(), TIMEOUT)  # EOF: the server closed it
    finally:
        writer.close()
    head, _, body = answer.partition(b"\r\n\r\n")
    return int(head.split(b" ", 2)[1]), json.loads(body)


MEDIA_DOORS = (
    ("POST", "/whip/r1"),
    ("POST", "/whep/r1"),
    ("DELETE", "/whep/r1/some-session"),
    ("PATCH", "/whip/r1/some-session"),
    ("GET", "/api/rooms/r1/stats"),
    ("POST", "/api/admin/rooms/r1/system"),
)


async def test_declared_body_over_the_limit_is_413_unread() -> None:
    """Content-Length: 10^12 and 3 bytes: 413 JSON at once, connection closed (issue #24)."""
    app = App(make_config("malformed_body"))
    await app.start()
    try:
        for method, path in MEDIA_DOORS:
            head = f"{method} {path} HTTP/1.1\r\nHost: 127.0.0.1\r\nAuthorization: Bearer {ADMIN_TOKEN}\r\n"
            head += "Content-Type: application/sdp\r\nContent-Length: 1000000000000\r\n\r\n"
            status, body = await _raw_answer(app.http_port, head.encode(), b"v=0")
            assert (status, body["code"]) == (413, H.BODY_TOO_LARGE), (method, path, body)
    finally:
        await app.stop()


async def test_trickled_body_is_closed_after_the_body_timeout() -> None:
    """A valid caller whose body never finishes: 408 JSON and closed after body_timeout (0.3 s
    here), on every media-port door, authorised or not."""
    config = make_config("malformed_body")
    config.body_timeout, config.join_nonce = 0.3, False
    app = App(config)
    await app.start()
    try:
        for method, path in MEDIA_DOORS:
            credential = ADMIN_TOKEN if "admin" in path else mint(role="host")
            head = f"{method} {path} HTTP/1.1\r\nHost: 127.0.0.1\r\nAuthorization: Bearer {credential}\r\n"
            head += "Content-Type: application/sdp\r\nContent-Length: 5000\r\n\r\n"
            status, body = await _raw_answer(app.http_port, head.encode(), b"v=0\r\n")
            assert (status, body["code"]) == (408, H.BODY_TIMEOUT), (method, path, body)
    finally:
        await app.stop()


async def test_the_two_unauthenticated_500s_are_404_and_401(server_faults: None) -> None:
    """A static file name over 255 characters (ENAMETOOLONG) and a non-ASCII Bearer on the admin
    API and the token doors: JSON refusals, no traceback (issue #24)."""
    app = App(make_config("malformed_body"))
    await app.start()
    try:
        for name in ("a" * 256, "b" * 300 + ".js", "x/" + "c" * 1000):
            data = f"GET /{name} HTTP/1.1\r\nHost: 127.0.0.1\r\nConnection: close\r\n\r\n".encode()
            status, body = await _raw_answer(app.port, data)
            assert (status, body["code"]) == (404, H.NOT_FOUND), name
        for path in ("/api/admin/health", "/api/rooms/r1/stats", "/whep/r1/x"):
            method = "DELETE" if path.startswith("/whep") else "GET"
            data = f"{method} {path} HTTP/1.1\r\nHost: 127.0.0.1\r\nConnection: close\r\n".encode()
            status, body = await _raw_answer(
                app.http_port, data + b"Authorization: Bearer \xff\xfe\xe9t\r\n\r\n"
            )
            assert (status, body["code"]) in ((401, H.TOKEN_INVALID), (401, H.AUTH_REQUIRED)), (path, body)
    finally:
        await app.stop()


async def test_bytes_after_the_request_head_are_answered_without_a_traceback(server_faults: None) -> None:
    """The HTTP fuzz's "unexpected internal error" (issue #24): websockets parsed the bytes after
    a request head as frames while still CONNECTING; a trailing CRLF or a pipelined request
    failed the parser, which half-closed, and the answer then tripped an assertion (ERROR with a
    traceback, no answer for the client). Now each gets its answer, and nothing is logged."""
    app = App(make_config("malformed_body"))
    await app.start()
    try:
        for path, status, code in (("/healthz", 200, None), ("/nothing-here", 404, H.NOT_FOUND)):
            head = f"GET {path} HTTP/1.1\r\nHost: 127.0.0.1\r\n\r\n".encode()
            for after in (b"\r\n", head, b"\x88\x00garbage\xff", b"\r\n" * 5000):
                reader, writer = await asyncio.open_connection("127.0.0.1", app.port)
                try:
                    writer.write(head + after)  # one write: websockets reads both at once
                    answer = await within(reader.read(), TIMEOUT)
                finally:
                    writer.close()
                assert answer.startswith(f"HTTP/1.1 {status} ".encode()), (path, after[:20], answer[:80])
                if code is not None:
                    assert json.loads(answer.partition(b"\r\n\r\n")[2])["code"] == code
    finally:
        await app.stop()


async def test_a_websocket_client_that_does_not_wait_for_the_101_is_still_read(server_faults: None) -> None:
    """Frames sent in the same write as the handshake request wait for the 101, then are read."""
    config = make_config("none")
    config.join_nonce = False
    app = App(config)
    await app.start()
    try:
        head = f"GET /ws?token={mint()} HTTP/1.1\r\nHost: 127.0.0.1:{app.port}\r\nUpgrade: websocket\r\n"
        head += "Connection: Upgrade\r\nSec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\n"
        head += "Sec-WebSocket-Version: 13\r\n\r\n"
        ping = Frame(Opcode.BINARY, msgpack.packb({"t": "ping", "ts": 7})).serialize(mask=True)
        reader, writer = await asyncio.open_connection("127.0.0.1", app.port)
        try:
            writer.write(head.encode() + ping)
            answer = await within(reader.readuntil(b"\r\n\r\n"), TIMEOUT)
            assert answer.startswith(b"HTTP/1.1 101 "), answer
            frames = []
            while not frames or frames[-1]["t"] != "pong":
                frames.append(await within(_server_frame(reader), TIMEOUT))
            assert frames[0]["t"] == "snapshot" and frames[-1]["ts"] == 7, frames
        finally:
            writer.close()
    finally:
        await app.stop()


async def _server_frame(reader: asyncio.StreamReader) -> dict[str, Any]:
    """One unmasked binary frame from the server, decoded."""
    first, second = await reader.readexactly(2)
    assert first & 0x0F == Opcode.BINARY and not second & 0x80, (first, second)
    size = second & 0x7F
    if size >= 126:
        size = int.from_bytes(await reader.readexactly(2 if size == 126 else 8), "big")
    return msgpack.unpackb(await reader.readexactly(size))


def test_time_claims_must_be_numbers() -> None:
    ring = Keyring.from_config("s" * 40)
    now = int(time.time())
    base = {"sub": "u1", "room": "r1", "role": "viewer", "iat": now, "exp": now + 60}
    for claim, value in (("exp", str(now + 60)), ("iat", str(now)), ("nbf", str(now - 5))):
        bad = jwt.encode({**base, claim: value}, "s" * 40, algorithm="HS256")
        with pytest.raises(ProtocolError) as info:
            ring.verify(bad, "r1")
        assert info.value.code == H.TOKEN_INVALID, (claim, value, info.value)
    good = jwt.encode(base, "s" * 40, algorithm="HS256")
    assert ring.verify(good, "r1").uid == "u1"


def test_display_names_cleaned_like_danmaku() -> None:
    ring = Keyring.from_config("s" * 40)
    name = "\u202eevil\u202c\x00\x1b[31m  \u2066x\u2069"
    who = ring.verify(ring.mint(room="r1", user="u1", name=name), "r1")
    assert who.name == "evil[31m  x"
    only_controls = ring.verify(ring.mint(room="r1", user="u2", name="\u202e\u202c\x07"), "r1")
    assert only_controls.name == "u2"


async def test_memory_dm_store_is_bounded_in_users_bytes_and_time(monkeypatch: pytest.MonkeyPatch) -> None:
    """20,000 DMs to distinct offline users must not grow the node without end (issue #11)."""
    clock = [1_000_000_000_000]
    monkeypatch.setattr(protocol, "now_ms", lambda: clock[0])
    broker = MemoryBroker(dm_store_users=3, dm_store_bytes=10_000, dm_ttl=60)
    dm = {"t": "dm", "from": "spammer", "text": "x" * 100}
    for user in ("u1", "u2", "u3"):
        await broker.store_dm(user, dm)
    with pytest.raises(ProtocolError) as info:
        await broker.store_dm("u4", dm)  # a fourth user
    assert info.value.code == H.DM_STORE_FULL and info.value.retry_after
    await broker.store_dm("u1", dm)  # a user already holding DMs still gets more
    with pytest.raises(ProtocolError):
        await broker.store_dm("u2", {**dm, "text": "y" * 20_000})  # past the byte bound
    held = broker.dm_bytes
    assert 0 < held < 10_000
    clock[0] += 61_000  # past the TTL: everything expires, the store has room again
    receipt = await broker.store_dm("u4", dm)
    assert broker.dm_bytes < held and not receipt.delivered
    assert await broker.subscribe_user("u1", lambda uid, frame: None) == []
    await broker.ack_dm("u4", receipt.id)
    assert broker.dm_bytes == 0


async def test_one_sender_fills_its_own_dm_quota_not_the_store() -> None:
    """Per sender before the global bound (issue #24): a sender past its quota is refused 4502,
    everyone else still stores DMs; acknowledging frees the quota."""
    broker = MemoryBroker(dm_store_users=10, dm_per_sender=3, dm_keep=2)
    spam = {"t": "dm", "from": "spammer", "text": "x"}
    receipts = [await broker.store_dm(f"u{i}", spam) for i in range(3)]
    with pytest.raises(ProtocolError) as info:
        await broker.store_dm("u3", spam)
    assert info.value.code == H.DM_STORE_FULL and "3 of your DMs" in info.value.message
    assert not (await broker.store_dm("u3", {**spam, "from": "alice"})).delivered  # others: stored
    await broker.ack_dm("u0", receipts[0].id)  # read: the spammer may store one more
    await broker.store_dm("u4", spam)
    for n in range(3):  # per recipient: the newest dm_keep (2) kept, the oldest pushed out
        await broker.store_dm("busy", {**spam, "from": f"s{n}", "text": f"t{n}"})
    kept = [protocol.unpack(f)["text"] for f in await broker.dm_backlog("busy")]
    assert kept == ["t1", "t2"]
    assert await broker.store_dm("u5", {**spam, "from": "s0"})  # s0's pushed-out DM freed its slot


async def test_a_full_store_still_delivers_to_online_users() -> None:
    """Store full: an online recipient still gets the DM live (`delivered: true`, not kept: no
    durability promise); an offline one is refused 4502."""
    broker = MemoryBroker(dm_store_users=1, dm_per_sender=1)
    await broker.store_dm("offline", {"t": "dm", "from": "a", "text": "fills the store"})
    live: list[bytes] = []
    assert await broker.subscribe_user("online", lambda _u, frame: live.append(frame)) == []
    for sender in ("a", "b"):  # a: over its own quota; b: the store is full
        receipt = await broker.store_dm("online", {"t": "dm", "from": sender, "text": f"from {sender}"})
        assert receipt.delivered
    assert [protocol.unpack(f)["text"] for f in live] == ["from a", "from b"]
    assert await broker.dm_backlog("online") == []  # not kept
    with pytest.raises(ProtocolError) as info:
        await broker.store_dm("offline2", {"t": "dm", "from": "b", "text": "x"})
    assert info.value.code == H.DM_STORE_FULL


async def test_a_full_store_delivers_live_over_the_socket() -> None:
    config = make_config("flood")
    config.rate_limits, config.join_nonce, config.dm_store_users = "off", False, 1
    app = App(config)
    await app.start()
    try:
        base = f"ws://127.0.0.1:{app.port}/ws?token="
        async with connect(base + mint()) as ws, connect(base + mint(user="bob")) as bob:
            for sock in (ws, bob):
                assert msgpack.unpackb(await sock.recv())["t"] == "snapshot"
            for i, to in enumerate(("offline1", "bob")):  # offline1 fills the store
                await ws.send(msgpack.packb({"t": "dm", "to": to, "text": f"hi {i}", "cid": i}))
                frame = msgpack.unpackb(await within(ws.recv(), TIMEOUT))
                while frame["t"] not in ("dm_ack", "error"):
                    frame = msgpack.unpackb(await within(ws.recv(), TIMEOUT))
                assert frame["t"] == "dm_ack" and frame["delivered"] is (to == "bob"), frame
            got = msgpack.unpackb(await within(bob.recv(), TIMEOUT))
            while got["t"] != "dm":
                got = msgpack.unpackb(await within(bob.recv(), TIMEOUT))
            assert got["text"] == "hi 1"
    finally:
        await app.stop()


async def test_dm_refused_with_4502_when_the_store_is_full() -> None:
    config = make_config("flood")
    config.rate_limits, config.join_nonce, config.dm_store_users = "off", False, 1
    app = App(config)
    await app.start()
    try:
        async with connect(f"ws://127.0.0.1:{app.port}/ws?token={mint()}") as ws:
            assert msgpack.unpackb(await ws.recv())["t"] == "snapshot"
            for i, to in enumerate(("offline1", "offline2")):
                await ws.send(msgpack.packb({"t": "dm", "to": to, "text": "hi", "cid": i}))
                frame = msgpack.unpackb(await within(ws.recv(), TIMEOUT))
                while frame["t"] not in ("dm_ack", "error"):
                    frame = msgpack.unpackb(await within(ws.recv(), TIMEOUT))
                if i == 0:
                    assert frame["t"] == "dm_ack" and frame["cid"] == 0, frame
                else:
                    assert frame["t"] == "error" and frame["code"] == H.DM_STORE_FULL and frame["ref"] == 1
    finally:
        await app.stop()


async def test_a_ban_ends_the_users_media_sessions() -> None:
    config = make_config("banned_user")
    config.join_nonce = False
    app = App(config)
    await app.start()
    try:
        with loopback_candidates():
            async with aiohttp.ClientSession() as http:
                assert await Door(app, "whip", http).attempt(mint(role="host", user="obs")) == ACCEPTED
                assert await Door(app, "whep", http).attempt(mint()) == ACCEPTED
                gateway = app.media
                assert any(r.uid == "mallory" for r in gateway.resources.values())
                await app.broker.put_sanction(Sanction("r1", "mallory", "ban", None, "test", False))
                await _wait_for(lambda: not any(r.uid == "mallory" for r in gateway.resources.values()))
                assert any(r.uid == "obs" for r in gateway.resources.values())  # only the banned user's
    finally:
        await app.stop()


async def test_secret_old_accepted_alike_on_every_door() -> None:
    """--secret NEW --secret-old OLD: an OLD-signed token (no kid) is good on every door."""
    config = make_config("rotated_key", "rtmp")
    config.secrets, config.secret, config.secret_old, config.join_nonce = "", NEW, OLD, False
    app = App(config)
    await app.start()
    try:
        with loopback_candidates():
            async with aiohttp.ClientSession() as http:
                for name in ("rtmp", "rtmp_key", "whip", "ws", "whep", "stats"):  # rtmp first: an H.264 room
                    role = "host" if name in HOST_DOORS else "viewer"
                    door = Door(app, name, http)
                    assert await door.attempt(mint(OLD, kid=None, role=role, user=f"u-{name}")) == ACCEPTED, (
                        name
                    )
                    forged = await door.attempt(mint(DEFAULT_SECRET, kid=None, role=role))
                    assert forged[1] == H.TOKEN_INVALID, name
    finally:
        await app.stop()


def test_refusal_log_lines_are_throttled() -> None:
    from server.logs import Throttle

    throttle = Throttle(rate=5, burst=20)
    assert sum(throttle.allow(100.0) for _ in range(1000)) == 20  # a burst of 1,000 refusals: 20 lines
    assert throttle.dropped == 980
    assert throttle.allow(100.2)  # 0.2 s later: one more line (5 a second), which reports the 980
