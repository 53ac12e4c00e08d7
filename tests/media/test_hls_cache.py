"""LL-HLS through a real caching proxy: nginx (docs/API.md's config) in front of a live node.

A crowd of LL-HLS clients (plain aiohttp, doing what hls.js does: a blocking reload for the
hinted part and the part itself, at once) reads the room through nginx; the node counts what
it answered per file (`HlsStream.served`). With the token out of the cache key and
`proxy_cache_lock on`, each part and each blocking reload reaches the origin about once
whatever the crowd's size. A standard HLS client (FFmpeg through PyAV) decodes through nginx.
Every wait is an event with a timeout; nothing asserts a duration.
"""

from __future__ import annotations

import asyncio
import re
from collections.abc import AsyncIterator
from pathlib import Path

import aiohttp
import pytest

from server.app import App
from server.deadline import within
from tests.conftest import token
from tests.media.test_hls import TIMEOUT, config, decode, get, http, live, loopback, preload_hint  # noqa: F401 (fixtures)
from tests.nginx_fixtures import NginxCache, requires_nginx

pytestmark = requires_nginx

PARTS = 8  # parts each client follows at the live edge (4 s at 0.5 s parts)


@pytest.fixture
async def cache(live: App, tmp_path: Path) -> AsyncIterator[NginxCache]:  # noqa: F811
    nginx = NginxCache(tmp_path / "nginx", live.http_port)
    await asyncio.to_thread(nginx.start)
    try:
        yield nginx
    finally:
        await asyncio.to_thread(nginx.stop)


async def cached_url(cache: NginxCache, http: aiohttp.ClientSession, user: str) -> str:  # noqa: F811
    """A viewer's playlist URL on the cache (the token endpoint passes through it, uncached)."""
    headers = {"Authorization": f"Bearer {token('r1', user, 'viewer')}"}
    async with http.get(f"{cache.base}/hls/r1/token", headers=headers) as response:
        assert response.status == 200, await response.text()
        return cache.base + (await response.json())["url"]


async def follow(http: aiohttp.ClientSession, url: str, parts: int) -> list[str]:  # noqa: F811
    """An LL-HLS client at the live edge: the playlist, then per part a blocking reload for the
    hinted part and the part itself, concurrently. The part names it played, in order.

    A hint can name a part that is never made (the segment ended at a keyframe before it):
    404, and the client goes on with the reload's playlist, as hls.js does."""
    status, _, body = await get(http, url)
    assert status == 200, body
    hint = preload_hint(body.decode())
    directory = url.rsplit("/", 1)[0]
    played: list[str] = []
    for _ in range(parts):
        name = hint.split("/")[1]
        match = re.fullmatch(r"p(\d+)\.(\d+)\.m4s", name)
        assert match, hint
        (s1, _, playlist), (s2, _, data) = await asyncio.gather(
            get(http, f"{url}?_HLS_msn={match[1]}&_HLS_part={match[2]}"),
            get(http, f"{directory}/{hint}"),
        )
        assert s1 == 200 and s2 in (200, 404), (playlist, data)
        if s2 == 200:
            assert data[4:8] == b"moof"
            played.append(name)
        else:
            assert f"/{name}" not in playlist.decode()  # never made: not listed
        hint = preload_hint(playlist.decode())
    return played


@pytest.mark.parametrize("viewers", [3, 30])
async def test_origin_answers_each_part_about_once_whatever_the_crowd(
    live: App,  # noqa: F811
    cache: NginxCache,
    http: aiohttp.ClientSession,  # noqa: F811
    viewers: int,
) -> None:
    urls = [await cached_url(cache, http, f"v{i}") for i in range(viewers)]
    assert len(set(urls)) == viewers  # every viewer its own token: the cache key leaves it out
    played = await within(asyncio.gather(*(follow(http, u, PARTS) for u in urls)), TIMEOUT * 2)
    stream = live.hls.streams["r1"]
    parts = {name for names in played for name in names}
    per_part = {name: stream.served[name] for name in sorted(parts)}
    log = "\n".join(cache.cache_statuses()[-60:])
    # every part reached the origin (a fresh cache) and at most twice, however many played it
    assert all(1 <= n <= 2 for n in per_part.values()), (per_part, log)
    reloads = {k: n for k, n in stream.served.items() if k.startswith("index.m3u8?")}
    assert reloads and all(n <= 2 for n in reloads.values()), (reloads, log)
    assert min(len(names) for names in played) >= PARTS // 2  # they played, mostly every part
    assert sum(per_part.values()) <= 2 * len(parts)


async def test_standard_hls_client_decodes_through_the_cache(
    live: App,  # noqa: F811
    cache: NginxCache,
    http: aiohttp.ClientSession,  # noqa: F811
) -> None:
    url = await cached_url(cache, http, "vera")
    codecs, frames, width = await within(asyncio.to_thread(decode, url), TIMEOUT * 2)
    assert codecs == ["aac", "h264"] and frames == 30 and width == 160
    # the files FFmpeg read came through nginx: the cache stored them (HIT or MISS logged)
    statuses = cache.cache_statuses()
    assert any(line.startswith(("MISS 200", "HIT 200")) and ".m4s" in line for line in statuses), statuses
