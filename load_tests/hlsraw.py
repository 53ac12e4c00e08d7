"""A minimal HTTP/1.1 keep-alive GET client on a bare asyncio Protocol, and LL-HLS viewers on it,
for the load generator only (bench_hls_cache's simulated viewers).

Why not aiohttp: 1,000 viewers at the live edge of 1/3 s parts make ~6,000 requests a second,
and aiohttp's client costs ~0.2 ms of CPU per request (request and response objects, a
coroutine, a future and a timer each, header parsing into a multidict), ~1.2 cores of this
2-core machine that also runs the node, nginx and three Chromium renderers: the generator, not
the origin, was what the 1,000-viewer level measured. Here a request is one `write` of prebuilt
bytes, a response one `find` for the header end, a few `in` tests on the lowered header and a
slice; a viewer is a small state machine driven by callbacks (no coroutine, no future, no timer
per request), and the playlist every viewer receives (the same bytes for all of them) is parsed
once per process: the next hint is looked up by the body. Measured against the aiohttp client
at 100 viewers, same runs, interleaved (2026-12-06, docs/BENCHMARKS.md "... with a bare HTTP
generator"): 25 µs of CPU per request against 142 µs, 5.7x less; 19 µs at 1,000 viewers, i.e.
12 % of one core for ~6,000 requests/s. `Crowd` spreads the viewers over worker processes
(spawned, uvloop).

Bodies are read by Content-Length or chunked (what nginx sends for a proxied or cached
response over HTTP/1.1); `Connection: close` (nginx's keepalive_requests) reconnects before the
next request. No pipelining, no redirects, GET only. Only ever pointed at 127.0.0.1.
"""

from __future__ import annotations

import asyncio
import contextlib
import multiprocessing as mp
import os
import re
from collections.abc import Callable
from dataclasses import dataclass
from multiprocessing.connection import Connection
from pathlib import Path
from typing import cast

from server.deadline import within

Done = Callable[[int, bytes], None]  # (status, body); status 0: the connection failed

HINT_TAG = b'#EXT-X-PRELOAD-HINT:TYPE=PART,URI="'
_PART = re.compile(rb"p(\d+)\.(\d+)\.m4s")
REQUEST_TIMEOUT = 30.0  # as the aiohttp generator's ClientTimeout(total=30)
RETRY_AFTER = 0.5  # after an error, as follow() does


class RawHttp(asyncio.Protocol):
    """One keep-alive connection, one request at a time: `get(target, done)` calls `done(status, body)`."""

    def __init__(self, host: bytes) -> None:
        self.host = host
        self.transport: asyncio.Transport | None = None
        self.sent_at = 0.0  # loop time of the request in flight (0: none)
        self.reusable = False  # the last response allows another request on this connection
        self._done: Done | None = None
        self._buf = bytearray()
        self._head_end = -1  # index past the header block of the response being read, once found
        self._length = -1  # Content-Length of that response; -1: chunked
        self._status = 0

    # -- asyncio.Protocol --------------------------------------------------------------

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = cast(asyncio.Transport, transport)  # uvloop's is not a subclass
        self.reusable = True

    def data_received(self, data: bytes) -> None:
        self._buf += data
        if self._done is not None:
            try:
                self._parse()
            except ValueError:  # a malformed length or chunk size: this connection is done
                self.abort()

    def connection_lost(self, exc: Exception | None) -> None:
        self.reusable = False
        self._finish(0, b"")

    # -- API ---------------------------------------------------------------------------

    @property
    def alive(self) -> bool:
        return self.reusable and self.transport is not None and not self.transport.is_closing()

    def get(self, target: bytes, done: Done, now: float) -> None:
        """Send `GET target`; `done` is called once, with the response or with status 0."""
        assert self._done is None and self.transport is not None, "one request at a time"
        self._done, self.sent_at = done, now
        self._head_end = -1
        self.transport.write(b"GET " + target + b" HTTP/1.1\r\nHost: " + self.host + b"\r\n\r\n")

    def abort(self) -> None:
        """Drop the connection; a request in flight completes with status 0."""
        self.reusable = False
        if self.transport is not None:
            self.transport.abort()

    # -- parsing -----------------------------------------------------------------------

    def _parse(self) -> None:
        buf = self._buf
        if self._head_end < 0:
            end = buf.find(b"\r\n\r\n")
            if end < 0:
                return
            head = bytes(buf[:end]).lower()
            if not head.startswith(b"http/1.1 "):
                raise ValueError("not an HTTP/1.1 response")
            self._status = int(head[9:12])
            self._head_end = end + 4
            if b"\r\ntransfer-encoding: chunked" in head:
                self._length = -1
            else:
                at = head.find(b"\r\ncontent-length:")
                if at < 0:  # a body until close: never sent by nginx or aiohttp to a keep-alive GET
                    raise ValueError("neither Content-Length nor chunked")
                stop = head.find(b"\r\n", at + 17)
                self._length = int(head[at + 17 : stop if stop >= 0 else len(head)])
            self.reusable = b"\r\nconnection: close" not in head
        start = self._head_end
        if self._length >= 0:
            end = start + self._length
            if len(buf) < end:
                return
            body = bytes(buf[start:end])
        else:
            parsed = _dechunk(buf, start)
            if parsed is None:
                return
            body, end = parsed
        del buf[:end]
        self._finish(self._status, body)
        if not self.reusable and self.transport is not None:
            self.transport.close()

    def _finish(self, status: int, body: bytes) -> None:
        done, self._done, self.sent_at = self._done, None, 0.0
        if done is not None:
            done(status, body)


def _dechunk(buf: bytearray, pos: int) -> tuple[bytes, int] | None:
    """A chunked body starting at `pos`: (body, index past it), or None until all of it is in."""
    chunks = []
    while True:
        eol = buf.find(b"\r\n", pos)
        if eol < 0:
            return None
        size = int(bytes(buf[pos:eol]).split(b";", 1)[0], 16)
        if size == 0:
            # no trailers from our servers: the last chunk is "0\r\n\r\n"
            if len(buf) < eol + 4:
                return None
            if buf[eol + 2 : eol + 4] != b"\r\n":
                raise ValueError("chunked trailers are not supported")
            return b"".join(chunks), eol + 4
        start = eol + 2
        if len(buf) < start + size + 2:
            return None
        chunks.append(bytes(buf[start : start + size]))
        pos = start + size + 2


class Hints:
    """The next request of a viewer from a playlist body, parsed once per distinct body: every
    viewer at the live edge receives the same bytes. Bounded: cleared when full."""

    def __init__(self, size: int = 256) -> None:
        self.size = size
        self._seen: dict[bytes, tuple[bytes, bytes] | None] = {}

    def next(self, body: bytes) -> tuple[bytes, bytes] | None:
        """(the blocking reload's query, the hinted part's URI), or None without a part hint."""
        try:
            return self._seen[body]
        except KeyError:
            pass
        found = None
        at = body.rfind(HINT_TAG)
        if at >= 0:
            start = at + len(HINT_TAG)
            uri = body[start : body.index(b'"', start)]
            part = _PART.fullmatch(uri.rsplit(b"/", 1)[-1])
            if part is not None:
                found = (b"?_HLS_msn=" + part[1] + b"&_HLS_part=" + part[2], uri)
        if len(self._seen) >= self.size:
            self._seen.clear()
        self._seen[body] = found
        return found


@dataclass
class Tally:
    parts: int = 0
    missing: int = 0  # hinted parts never made (404)
    errors: int = 0
    requests: int = 0  # answered requests, playlists and parts (what the generator's CPU is per)

    def part(self, status: int) -> None:
        """A hinted part's answer: got (200), never made (404), or failed."""
        if status == 200:
            self.parts += 1
        elif status == 404:
            self.missing += 1
        else:
            self.errors += 1


class Viewer:
    """One LL-HLS viewer at the live edge, as hls.js: a blocking reload for the hinted part and
    the part itself at once, on two keep-alive connections (like a browser), then the next hint."""

    def __init__(self, host: str, port: int, playlist: str, tally: Tally, hints: Hints) -> None:
        self.loop = asyncio.get_running_loop()
        self.host, self.port = host, port
        self.playlist = playlist.encode()
        self.directory = self.playlist.rsplit(b"/", 1)[0] + b"/"
        self.tally, self.hints = tally, hints
        self.conns = [RawHttp(f"{host}:{port}".encode()), RawHttp(f"{host}:{port}".encode())]
        self.stopped = False
        self._pending = 0
        self._reload: tuple[int, bytes] = (0, b"")
        self._part = 0
        self._connecting: asyncio.Task[None] | None = None  # held: the loop keeps only weak references

    def start(self) -> None:
        self._connecting = self.loop.create_task(self._connect_then(self._plain))

    def stop(self) -> None:
        self.stopped = True
        for conn in self.conns:
            conn.abort()

    async def _connect_then(self, step: Callable[[], None]) -> None:
        """(Re)open the connections that cannot take another request, then `step`."""
        try:
            for i, conn in enumerate(self.conns):
                if not conn.alive:
                    fresh = RawHttp(conn.host)
                    await self.loop.create_connection(lambda f=fresh: f, self.host, self.port)
                    self.conns[i] = fresh
                    if self.stopped:  # stopped meanwhile: the worker lives on to the next level
                        fresh.abort()
                        return
        except OSError:
            self.tally.errors += 1
            self._retry()
            return
        if not self.stopped:
            step()

    def _ready(self, step: Callable[[], None]) -> None:
        if self.stopped:
            return
        if self.conns[0].alive and self.conns[1].alive:
            step()
        else:
            self._connecting = self.loop.create_task(self._connect_then(step))

    def _retry(self) -> None:
        if not self.stopped:
            self.loop.call_later(RETRY_AFTER, self._ready, self._plain)

    # -- the viewer's steps ------------------------------------------------------------

    def _plain(self) -> None:
        """The playlist without a blocking query: where the live edge is."""
        self.conns[0].get(self.playlist, self._on_plain, self.loop.time())

    def _on_plain(self, status: int, body: bytes) -> None:
        found = self.hints.next(body) if status == 200 else None
        if found is None:
            self.tally.errors += 1
            self._retry()
            return
        self.tally.requests += 1
        self._ready(lambda: self._edge(found))

    def _edge(self, found: tuple[bytes, bytes]) -> None:
        query, uri = found
        self._pending = 2
        now = self.loop.time()
        self.conns[0].get(self.playlist + query, self._on_reload, now)
        self.conns[1].get(self.directory + uri, self._on_part, now)

    def _on_reload(self, status: int, body: bytes) -> None:
        self._reload = (status, body)
        self._pending -= 1
        if not self._pending:
            self._next()

    def _on_part(self, status: int, body: bytes) -> None:
        self._part = status
        self._pending -= 1
        if not self._pending:
            self._next()

    def _next(self) -> None:
        tally = self.tally
        status, body = self._reload
        self._reload = (0, b"")
        part = self._part
        tally.requests += (status != 0) + (part != 0)
        tally.part(part)
        if status == 0:  # the connection failed: wait a little, as follow() does
            tally.errors += 1
            self._retry()
            return
        if status != 200:
            tally.errors += 1
            self._ready(self._plain)
            return
        found = self.hints.next(body)
        if found is None:
            self._ready(self._plain)
        else:
            self._ready(lambda: self._edge(found))


async def _sweep(viewers: list[Viewer], stop: asyncio.Event) -> None:
    """Abort requests older than REQUEST_TIMEOUT (one timer for all, not one per request)."""
    loop = asyncio.get_running_loop()
    while not stop.is_set():
        with contextlib.suppress(TimeoutError):
            await within(stop.wait(), 2.0)
        late = loop.time() - REQUEST_TIMEOUT
        for viewer in viewers:
            for conn in viewer.conns:
                if conn.sent_at and conn.sent_at < late:
                    conn.abort()


async def _worker_main(pipe: Connection, host: str, port: int) -> None:
    """Commands from the parent: ("follow", playlists), ("tally",), ("stop",), ("exit",)."""
    loop = asyncio.get_running_loop()
    tally, hints = Tally(), Hints()
    viewers: list[Viewer] = []
    stop = asyncio.Event()
    sweeper: asyncio.Task[None] | None = None
    while True:
        command, arg = await loop.run_in_executor(None, pipe.recv)
        if command == "follow":
            tally, stop = Tally(), asyncio.Event()
            viewers = [Viewer(host, port, path, tally, hints) for path in arg]
            for viewer in viewers:
                viewer.start()
            sweeper = loop.create_task(_sweep(viewers, stop))
            pipe.send(len(viewers))
        elif command == "tally":
            pipe.send((tally.parts, tally.missing, tally.errors, tally.requests))
        elif command == "stop":
            stop.set()
            for viewer in viewers:
                viewer.stop()
            if sweeper is not None:
                await sweeper
            viewers = []
            await asyncio.sleep(0.05)  # let the aborted connections' callbacks run
            pipe.send(None)
        elif command == "exit":
            pipe.send(None)
            return


def worker_entry(pipe: Connection, host: str, port: int) -> None:
    """Process entry point (spawned): raise the fd limit, run the worker on uvloop."""
    from load_tests.bench import raise_nofile

    raise_nofile()
    import uvloop

    uvloop.run(_worker_main(pipe, host, port))


class Crowd:
    """Simulated viewers in `procs` worker processes, driven from the benchmark's event loop."""

    def __init__(self, host: str, port: int, procs: int) -> None:
        ctx = mp.get_context("spawn")
        self._pipes: list[Connection] = []
        self._procs: list[mp.process.BaseProcess] = []
        for _ in range(procs):
            parent, child = ctx.Pipe()
            proc = ctx.Process(target=worker_entry, args=(child, host, port), daemon=True)
            proc.start()
            child.close()
            self._pipes.append(parent)
            self._procs.append(proc)

    async def _ask(self, command: str, arg: object = None, per: list[object] | None = None) -> list[object]:
        """Send to every worker (`per`: one argument each), then wait for all their answers."""
        for i, pipe in enumerate(self._pipes):
            pipe.send((command, arg if per is None else per[i]))
        loop = asyncio.get_running_loop()
        return [await loop.run_in_executor(None, pipe.recv) for pipe in self._pipes]

    async def follow(self, playlists: list[str]) -> None:
        """Start one viewer per playlist path (e.g. `/hls/demo/TOKEN/index.m3u8`), spread evenly."""
        n = len(self._pipes)
        await self._ask("follow", per=[playlists[k::n] for k in range(n)])

    async def tally(self) -> Tally:
        total = Tally()
        for parts, missing, errors, requests in cast(
            list[tuple[int, int, int, int]], await self._ask("tally")
        ):
            total.parts += parts
            total.missing += missing
            total.errors += errors
            total.requests += requests
        return total

    async def stop(self) -> None:
        await self._ask("stop")

    @property
    def pids(self) -> list[int]:
        return [p.pid for p in self._procs if p.pid is not None]

    def cpu_s(self) -> float:
        """utime+stime of the worker processes so far."""
        ticks = os.sysconf("SC_CLK_TCK")
        total = 0
        for pid in self.pids:
            try:
                fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
            except OSError:
                continue
            total += int(fields[11]) + int(fields[12])
        return total / ticks

    async def close(self) -> None:
        with contextlib.suppress(OSError, EOFError):
            await self._ask("exit")
        for proc in self._procs:
            proc.join(10)
            if proc.is_alive():
                proc.kill()
                proc.join()
