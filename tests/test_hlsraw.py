"""The load generator's bare HTTP/1.1 client (load_tests/hlsraw.py) against a real aiohttp server
on loopback: Content-Length and chunked bodies, several responses on one keep-alive connection,
`Connection: close`, and the playlist hint parse. The whole viewer through nginx runs in
tests/test_load_tests.py (bench_hls_cache)."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator

import pytest
from aiohttp import web

from load_tests.hlsraw import Hints, RawHttp
from server.deadline import within
from tests.local_http import serving

BIG = bytes(range(256)) * 800  # 200 KiB: arrives in many reads


async def _length(request: web.Request) -> web.Response:
    return web.Response(body=b"x" * int(request.query.get("n", "5")))


async def _chunked(request: web.Request) -> web.StreamResponse:
    response = web.StreamResponse()
    response.enable_chunked_encoding()
    await response.prepare(request)
    for piece in (b"#EXTM3U\n", b"", BIG, b"end"):
        if piece:
            await response.write(piece)
    await response.write_eof()
    return response


async def _close(request: web.Request) -> web.Response:
    response = web.Response(body=b"bye")
    response.force_close()
    return response


@pytest.fixture
async def server() -> AsyncIterator[tuple[str, int]]:
    app = web.Application()
    app.router.add_get("/len", _length)
    app.router.add_get("/chunked", _chunked)
    app.router.add_get("/close", _close)
    async with serving(app) as base:
        yield "127.0.0.1", int(base.rsplit(":", 1)[1])


async def fetch(conn: RawHttp, target: bytes) -> tuple[int, bytes]:
    loop = asyncio.get_running_loop()
    answer: asyncio.Future[tuple[int, bytes]] = loop.create_future()
    conn.get(target, lambda status, body: answer.set_result((status, body)), loop.time())
    return await within(answer, 30)


async def test_bodies_by_length_and_chunked_on_one_keep_alive_connection(server: tuple[str, int]) -> None:
    host, port = server
    loop = asyncio.get_running_loop()
    conn = RawHttp(f"{host}:{port}".encode())
    transport, _ = await loop.create_connection(lambda: conn, host, port)
    try:
        assert await fetch(conn, b"/len?n=7") == (200, b"x" * 7)
        assert await fetch(conn, b"/chunked") == (200, b"#EXTM3U\n" + BIG + b"end")
        assert await fetch(conn, b"/len?n=0") == (200, b"")
        assert await fetch(conn, b"/nothing") == (404, b"404: Not Found")  # aiohttp's own answer
        assert conn.alive and conn.transport is transport  # all four on the same connection
    finally:
        transport.close()


async def test_connection_close_ends_the_connection_after_the_body(server: tuple[str, int]) -> None:
    host, port = server
    loop = asyncio.get_running_loop()
    conn = RawHttp(f"{host}:{port}".encode())
    await loop.create_connection(lambda: conn, host, port)
    assert await fetch(conn, b"/close") == (200, b"bye")
    assert not conn.alive  # the viewer reconnects before its next request


async def test_a_request_on_a_connection_that_drops_completes_with_status_0(server: tuple[str, int]) -> None:
    host, port = server
    loop = asyncio.get_running_loop()
    conn = RawHttp(f"{host}:{port}".encode())
    await loop.create_connection(lambda: conn, host, port)
    answer: asyncio.Future[tuple[int, bytes]] = loop.create_future()
    conn.get(b"/len", lambda status, body: answer.set_result((status, body)), loop.time())
    conn.abort()
    assert await within(answer, 30) == (0, b"")


def test_the_next_hint_is_read_once_per_playlist_body() -> None:
    body = (
        b'#EXTM3U\n#EXT-X-PART:DURATION=0.333,URI="0136/p1.0.m4s",INDEPENDENT=YES\n'
        b'#EXT-X-PRELOAD-HINT:TYPE=PART,URI="0136/p12.3.m4s"\n'
    )
    hints = Hints(size=2)
    found = hints.next(body)
    assert found == (b"?_HLS_msn=12&_HLS_part=3", b"0136/p12.3.m4s")
    assert hints.next(bytes(body)) is found  # an equal body (another viewer's) is not parsed again
    assert hints.next(b"#EXTM3U\n#EXT-X-ENDLIST\n") is None  # no part hint: the viewer reloads plainly
    hints.next(b"#EXTM3U\n")  # past `size` the table starts over
    assert hints.next(body) == found
