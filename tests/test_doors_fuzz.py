"""Fuzzing the HTTP doors (WHIP, WHEP, stats, admin) and the WebSocket port's GETs with
hypothesis-generated requests, well-formed and not: every answer is < 500, every refusal a
JSON body, and the server logs no ERROR and no traceback (`server_faults`)."""

from __future__ import annotations

import asyncio
import json
import random
import time
from typing import Any

import aiohttp
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from yarl import URL

from server.app import App
from server.config import Config
from server.deadline import within
from server.media import loopback_candidates
from tests.conftest import TIMEOUT, token
from tests.test_doors import ADMIN_TOKEN, offer

SEGMENTS = ["whip", "whep", "api", "rooms", "admin", "users", "r1", "bob", "stats", "sanction", "system", "rtmp", "key",
            "close", "health", "..", "%00", "%ff", "", "x" * 300, "r1%2f..", "ws", "metrics", "room"]  # fmt: skip
CONTENT_TYPES = ["application/sdp", "application/json", "text/plain", "", "application/sdp; charset=utf-16",
                 "multipart/form-data; boundary=x"]  # fmt: skip

json_values = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats(allow_nan=True) | st.text(max_size=20),
    lambda inner: st.lists(inner, max_size=4) | st.dictionaries(st.text(max_size=8), inner, max_size=4),
    max_leaves=12,
)
sanctions = st.fixed_dictionaries(
    {},
    optional={
        "action": st.sampled_from(["mute", "unmute", "ban", "unban", "kick", ""]) | json_values,
        "rooms": st.lists(st.sampled_from(["r1", "r2", "", "a b", "x" * 80]), max_size=4) | json_values,
        "duration": st.floats(allow_nan=True, allow_infinity=True) | st.integers() | json_values,
        "text": st.text(max_size=600) | json_values,
    },
)


ENDPOINTS = {  # path -> (method, content type, credentials that pass, body kinds)
    "/whip/r1": ("POST", "application/sdp", ["host"], ["sdp", "sdp-mutated", "bytes"]),
    "/whep/r1": ("POST", "application/sdp", ["viewer", "host"], ["sdp", "sdp-mutated", "bytes"]),
    "/whip/r1/nope": ("DELETE", "", ["host"], ["none"]),
    "/api/rooms/r1/stats": ("GET", "", ["host", "admin"], ["none"]),
    "/rtmp/r1/key": ("POST", "", ["host"], ["none", "bytes"]),
    "/api/admin/rooms": ("GET", "", ["admin"], ["none"]),
    "/api/admin/health": ("GET", "", ["admin"], ["none"]),
    "/api/admin/users/bob/sanction": ("POST", "application/json", ["admin"], ["sanction", "json", "bytes"]),
    "/api/admin/rooms/r1/system": ("POST", "application/json", ["admin"], ["sanction", "json", "bytes"]),
}
AUTH = ["none", "junk", "host", "viewer", "admin", "other-room", "empty"]
BODIES = ["none", "bytes", "json", "sanction", "sdp", "sdp-mutated"]


@st.composite
def requests(draw: Any) -> dict[str, Any]:
    """Half shaped like a real call (the endpoint's method, type and a passing credential, a
    fuzzed body), half anything (method, path, headers, body)."""
    if draw(st.booleans()):
        path = draw(st.sampled_from(sorted(ENDPOINTS)))
        method, content_type, auths, bodies = ENDPOINTS[path]
        auth, body_kind = draw(st.sampled_from(auths)), draw(st.sampled_from(bodies))
    else:
        method = draw(st.sampled_from(["GET", "POST", "DELETE", "PATCH", "OPTIONS", "PUT", "HEAD"]))
        parts = draw(st.lists(st.sampled_from(SEGMENTS) | st.text(max_size=6), min_size=1, max_size=6))
        path, content_type = "/" + "/".join(parts), draw(st.sampled_from(CONTENT_TYPES))
        auth, body_kind = draw(st.sampled_from(AUTH)), draw(st.sampled_from(BODIES))
    return {
        "method": method,
        "path": path,
        "auth": auth,
        "content_type": content_type,
        "body_kind": body_kind,
        "bytes": draw(st.binary(max_size=300)),
        "json": draw(json_values),
        "sanction": draw(sanctions),
        "seed": draw(st.integers(0, 2**32)),
    }


def _collect(strategy: st.SearchStrategy[Any], count: int) -> list[Any]:
    found: list[Any] = []

    @settings(max_examples=count, deadline=None, database=None, suppress_health_check=list(HealthCheck))
    @given(strategy)
    def draw(example: Any) -> None:
        found.append(example)

    draw()
    return found


def _mutate(sdp: str, seed: int) -> str:
    """Drop, repeat or garble a few lines of a real offer (aiortc's parser sees odd SDP)."""
    rng = random.Random(seed)
    lines = sdp.split("\r\n")
    for _ in range(rng.randint(1, 4)):
        i = rng.randrange(len(lines))
        choice = rng.random()
        if choice < 0.3:
            del lines[i]
        elif choice < 0.6:
            lines.insert(i, lines[i])
        else:
            line = lines[i]
            cut = rng.randrange(len(line) + 1)
            lines[i] = line[:cut] + rng.choice(["", " ", "=", ":", "x" * 50, "-1", "999999999999", "\x00"])
    return "\r\n".join(lines)


def _authorization(kind: str) -> dict[str, str]:
    value = {
        "none": None,
        "junk": "Bearer not.a.jwt",
        "host": f"Bearer {token('r1', 'fuzz-host', 'host')}",
        "viewer": f"Bearer {token('r1', 'fuzz-viewer')}",
        "admin": f"Bearer {ADMIN_TOKEN}",
        "other-room": f"Bearer {token('r2', 'fuzz-other', 'host')}",
        "empty": "Bearer ",
    }[kind]
    return {"Authorization": value} if value else {}


@pytest.fixture
def config(config: Config) -> Config:
    config.admin_token = ADMIN_TOKEN
    config.body_timeout = 0.5  # trickled bodies (the load script's) end quickly
    config.media_stats_interval = 0
    config.media_ice_timeout = 1.0  # fuzzed sessions that were accepted go away quickly
    return config


async def _send(http: aiohttp.ClientSession, base: str, request: dict[str, Any], sdp: str) -> None:
    body_kind = request["body_kind"]
    data: bytes | None = {
        "none": None,
        "bytes": request["bytes"],
        "json": json.dumps(request["json"]).encode(),
        "sanction": json.dumps(request["sanction"]).encode(),
        "sdp": sdp.encode(),
        "sdp-mutated": _mutate(sdp, request["seed"]).encode(errors="surrogatepass"),
    }[body_kind]
    headers = _authorization(request["auth"])
    if request["content_type"]:
        headers["Content-Type"] = request["content_type"]
    try:
        url = URL(base + request["path"], encoded=True)
    except ValueError:
        return  # not even a URL the client library sends
    try:
        async with http.request(request["method"], url, data=data, headers=headers) as response:
            body = await response.read()
    except aiohttp.ClientResponseError as exc:  # the client's parser balks at the server's HTTP/1.0
        assert 400 <= exc.status < 500 and '"code"' in exc.message, (
            request,
            exc,
        )  # 400 to a bad request line
        return
    except (ValueError, aiohttp.InvalidURL):
        return  # the client refused to send it
    assert response.status < 500, (request, response.status, body[:300])
    if response.status >= 400 and request["method"] != "HEAD":
        assert response.content_type == "application/json", (request, response.status, body[:200])
        assert "code" in json.loads(body), body


async def test_fuzz_http_doors(app: App, server_faults: None) -> None:
    base = f"http://127.0.0.1:{app.http_port}"
    with loopback_candidates():
        sdp = await offer("whip")
        examples = _collect(requests(), 300)
        async with aiohttp.ClientSession() as http:
            publish = {
                "Authorization": f"Bearer {token('r1', 'obs', 'host')}",
                "Content-Type": "application/sdp",
            }
            async with http.post(f"{base}/whip/r1", data=sdp, headers=publish) as response:
                assert response.status == 201  # WHEP offers then reach the SFU's offer handling
            for request in examples:
                await within(_send(http, base, request, sdp), TIMEOUT)


async def test_an_offer_missing_its_video_m_line_is_refused_not_a_500(app: App) -> None:
    """Found by the fuzz above: a WHEP offer whose `m=video` line is gone (its attributes then
    belong to the audio section, and BUNDLE names a mid with no section) made aiortc build a
    transceiver without a transport; creating the answer and closing the connection both
    raised, and the viewer got 500. Now a 4xx with a code, and the node serves the next one."""
    base = f"http://127.0.0.1:{app.http_port}"
    with loopback_candidates():
        sdp = await offer("whip")
        async with aiohttp.ClientSession() as http:
            host = {
                "Authorization": f"Bearer {token('r1', 'obs', 'host')}",
                "Content-Type": "application/sdp",
            }
            async with http.post(f"{base}/whip/r1", data=sdp, headers=host) as response:
                assert response.status == 201
            viewer = {
                "Authorization": f"Bearer {token('r1', 'v', 'viewer')}",
                "Content-Type": "application/sdp",
            }
            broken = "\r\n".join(line for line in sdp.split("\r\n") if not line.startswith("m=video"))
            async with http.post(f"{base}/whep/r1", data=broken, headers=viewer) as response:
                body = await response.read()
                assert 400 <= response.status < 500, (response.status, body[:300])
                assert "code" in json.loads(body)
            whep = await offer("whep")
            viewer2 = {**viewer, "Authorization": f"Bearer {token('r1', 'v2', 'viewer')}"}
            async with http.post(f"{base}/whep/r1", data=whep, headers=viewer2) as response:
                assert response.status == 201, await response.text()


RAW = [
    b"GARBAGE\r\n\r\n",
    b"GET / HTTP/9.9\r\n\r\n",
    b"GET /whip/r1 HTTP/1.1\r\nHost: a\r\nContent-Length: -1\r\n\r\n",
    b"POST /whip/r1 HTTP/1.1\r\nHost: a\r\nContent-Length: 5\r\nTransfer-Encoding: chunked\r\n\r\n",
    b"POST /whip/r1 HTTP/1.1\r\nHost: a\r\nTransfer-Encoding: chunked\r\n\r\nzz\r\n",
    b"GET /api/admin/health HTTP/1.1\r\nHost: a\r\nHost: b\r\n\r\n",
    b"GET /\x00 HTTP/1.1\r\n\r\n",
    b"\x16\x03\x01\x00\xa5\x01\x00\x00\xa1\x03\x03",  # a TLS ClientHello
    b"GET / HTTP/1.1\r\nX: " + b"a" * 10_000 + b"\r\n\r\n",
    b"POST /whep/r1 HTTP/1.1\r\nHost: a\r\nContent-Type: application/sdp\r\nContent-Length: 99999999\r\n\r\n",
    b"POST /api/admin/rooms/r1/system HTTP/1.1\r\nHost: a\r\nContent-Length: 1000000000000\r\n\r\n{}",
    b"GET /api/admin/health HTTP/1.1\r\nHost: a\r\nAuthorization: Bearer \xff\xfe\r\n\r\n",
    b"DELETE /whep/r1/x HTTP/1.1\r\nHost: a\r\nAuthorization: Bearer \xc3\xa9\r\n\r\n",
]


async def _raw(port: int, data: bytes) -> bytes:
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    try:
        writer.write(data)
        await writer.drain()
        return await within(reader.read(65536), TIMEOUT)
    finally:
        writer.close()


async def test_malformed_http_gets_json_4xx_and_no_traceback(
    app: App, server_faults: None, caplog: Any
) -> None:
    """Raw malformed requests on the media port: a 4xx JSON answer (or a closed socket), and
    the refusals cost one log line per 10 s, not one each."""
    fuzzed = _collect(st.binary(min_size=1, max_size=200).map(lambda b: b"GET /" + b + b"\r\n\r\n"), 50)
    started = time.monotonic()
    for data in [*RAW, *fuzzed]:
        answer = await _raw(app.http_port, data)
        if not answer:
            continue  # closed without an answer (e.g. after the declared body never came)
        head, _, body = answer.partition(b"\r\n\r\n")
        status = int(head.split(b" ", 2)[1])
        assert 400 <= status < 500, (data[:80], answer[:300])
        assert b"application/json" in head and b'"code"' in body, (data[:80], answer[:300])
    refused = [r for r in caplog.records if r.getMessage().startswith("refused")]
    most = 1 + int((time.monotonic() - started) / 10)  # one line per 10 s
    assert 1 <= len(refused) <= most < len(RAW) + len(fuzzed), [r.getMessage() for r in refused]


async def test_fuzz_ws_port_gets(app: App, server_faults: None) -> None:
    """GETs on the WebSocket port: health, metrics, static files, dev tokens, and junk. A request
    line that is not ASCII is no HTTP/1.1 request: websockets closes the connection unanswered."""
    paths = _collect(
        st.sampled_from(
            ["/", "/ws", "/api/dev/token", "/static", "/room/", "/metrics", "/healthz", "/x"]
        ).flatmap(lambda p: st.text(max_size=30).map(lambda q: p + "?" + q))
        | st.text(max_size=40).map(lambda t: "/" + t),
        150,
    )
    async with aiohttp.ClientSession(connector=aiohttp.TCPConnector(force_close=True)) as http:
        for path in paths:
            try:
                url = URL(f"http://127.0.0.1:{app.port}" + path.replace(" ", "%20"), encoded=True)
                async with http.get(url) as response:
                    body = await response.read()
            except aiohttp.ServerDisconnectedError:  # websockets closes on a request line it cannot parse
                assert not path.isascii(), path
                continue
            except (ValueError, aiohttp.InvalidURL, aiohttp.ClientResponseError):
                continue
            assert response.status < 500, (path, response.status, body[:200])
            if response.status >= 400:
                assert response.content_type == "application/json", (path, response.status, body[:200])


async def test_client_gone_mid_body_is_no_fault(app: App, server_faults: None) -> None:
    """A valid caller that declares a body and hangs up half way: no ERROR, no traceback."""
    for path, role, kind in (("/whip/r1", "host", "application/sdp"), ("/api/admin/rooms/r1/system", "", "")):
        auth = f"Bearer {token('r1', 'gone', role)}" if role else f"Bearer {ADMIN_TOKEN}"
        head = f"POST {path} HTTP/1.1\r\nHost: 127.0.0.1\r\nAuthorization: {auth}\r\n"
        head += f"Content-Type: {kind or 'application/json'}\r\nContent-Length: 5000\r\n\r\n"
        reader, writer = await asyncio.open_connection("127.0.0.1", app.http_port)
        writer.write(head.encode() + b"v=0\r\n")
        await writer.drain()
        writer.close()
        await writer.wait_closed()
    reader, writer = await asyncio.open_connection("127.0.0.1", app.http_port)  # the port still answers
    writer.write(b"GET /api/admin/health HTTP/1.1\r\nHost: 127.0.0.1\r\nConnection: close\r\n\r\n")
    assert (await within(reader.read(), TIMEOUT)).startswith(b"HTTP/1.1 401")
    writer.close()


async def test_fuzz_every_http_door_with_the_load_script(app: App, server_faults: None) -> None:
    """load_tests/fuzz_doors.py's raw requests (30,000 in its recorded run, docs/BENCHMARKS.md),
    a smaller count here: every door of both ports, no 5xx, no ERROR line, no traceback."""
    from load_tests.fuzz_doors import fuzz

    statuses = await fuzz(600, 8, seed=24, ports=(app.port, app.http_port), admin=ADMIN_TOKEN)
    assert sum(statuses.values()) == 600
    assert not [status for status in statuses if status >= 500], statuses
    assert statuses[408] and statuses[413] and statuses[401], statuses  # the rows of issue #24 ran
