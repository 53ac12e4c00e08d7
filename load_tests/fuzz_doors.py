"""Fuzz every HTTP door of a real node: WHIP, WHEP, their DELETE/PATCH, stats, admin (media port)
and the WebSocket port's GETs, with raw requests well-formed and not (issue #24).

    python -m load_tests.fuzz_doors [--requests 30000] [--concurrency 16] [--seed 1]

The node runs in its own process (`liveroom serve`, rate limits off so every request reaches
the handlers, an admin token, --body-timeout 1 so trickled bodies end quickly); its log is read
afterwards. Requests are random raw HTTP/1.1: a method, a path of door segments and junk (names
over 255 characters, %-escapes, surrogate escapes), headers (valid, foreign-room, non-ASCII and
junk Bearer tokens; tokens whose name holds a lone surrogate; declared lengths over the limit),
bodies (JSON with "\\ud83d", SDP-like text, bytes; some trickled; on the WebSocket port some
follow the head with no length: a trailing CRLF, a pipelined request, junk). Reported: answers by status,
5xx answers, and the ERROR lines and tracebacks the node logged. Prints one JSON line, then a
table. Exit status 1 when any 5xx or traceback was seen.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import random
import subprocess
import sys
import tempfile
import time
from collections import Counter

from load_tests.bench import stop_process
from server.config import DEFAULT_SECRET
from server.deadline import within
from server.wire import auth
from tests.ports import free_port

ADMIN = "admin-token-for-the-door-fuzz"
SEGMENTS = ["whip", "whep", "api", "rooms", "admin", "users", "r1", "r2", "bob", "stats", "sanction",
            "system", "close", "health", "..", "%00", "%ff", "%ed%a0%bd", "", "x" * 300, "ws", "metrics",
            "room", "healthz", "readyz", "index.html", "live.js", "a" * 256, "\u00e9"]  # fmt: skip
METHODS = ["GET", "POST", "DELETE", "PATCH", "OPTIONS", "PUT", "HEAD", "G\u00e9T", "CONNECT"]
DOORS = [("POST", "/whip/r1"), ("POST", "/whep/r1"), ("DELETE", "/whip/r1/x"), ("PATCH", "/whep/r1/x"),
         ("GET", "/api/rooms/r1/stats"), ("GET", "/api/admin/rooms"), ("GET", "/api/admin/health"),
         ("POST", "/api/admin/users/bob/sanction"), ("POST", "/api/admin/rooms/r1/system"),
         ("POST", "/api/admin/rooms/r1/close")]  # fmt: skip
WS_GETS = ["/", "/healthz", "/readyz", "/metrics", "/api/dev/token?room=r1&user=u&name=%ed%a0%bd",
           "/room/r1", "/live.js", "/ws", "/" + "n" * 300, "/x/" + "y" * 256 + ".js"]  # fmt: skip


def _tokens(admin: str) -> list[str]:
    mint = auth.mint
    cut = mint(DEFAULT_SECRET, room="r1", user="cut", role="host", name="Ann \ud83d")  # half an emoji
    return [
        "",
        "Bearer not.a.jwt",
        f"Bearer {admin}",
        "Bearer \xff\xfe\xe9",  # non-ASCII (sent as latin-1 bytes)
        f"Bearer {mint(DEFAULT_SECRET, room='r1', user='host', role='host')}",
        f"Bearer {mint(DEFAULT_SECRET, room='r1', user='viewer', role='viewer')}",
        f"Bearer {mint(DEFAULT_SECRET, room='r2', user='other', role='host')}",
        f"Bearer {cut}",
        "Bearer ",
    ]


def _body(rng: random.Random) -> bytes:
    return rng.choice(
        [
            b"",
            b'{"text": "hello"}',
            b'{"text": "cut \\ud83d"}',
            b'{"action": "mute", "rooms": ["r1"], "reason": "\\udc80"}',
            b'{"action": "ban", "rooms": ["r1", "r2"], "duration": 1e308}',
            b"[" * 2000,
            b"v=0\r\no=- 1 1 IN IP4 127.0.0.1\r\ns=-\r\nt=0 0\r\nm=video 9 UDP/TLS/RTP/SAVPF 96\r\n",
            b"v=0\r\n\xff\xfe\xc3(",
            bytes(rng.getrandbits(8) for _ in range(rng.randint(1, 300))),
        ]
    )


def request(rng: random.Random, tokens: list[str], ports: tuple[int, int]) -> tuple[int, bytes, bool]:
    """(port, raw request, trickled): half shaped like a door's call, half anything."""
    ws_port, http_port = ports
    if rng.random() < 0.2:  # the WS port's GETs
        path = rng.choice(WS_GETS) if rng.random() < 0.7 else "/" + "/".join(rng.choices(SEGMENTS, k=3))
        method, port = rng.choice(["GET", "GET", "HEAD", "POST"]), ws_port
    elif rng.random() < 0.5:
        (method, path), port = rng.choice(DOORS), http_port
    else:
        method = rng.choice(METHODS)
        path = "/" + "/".join(rng.choices(SEGMENTS, k=rng.randint(1, 5)))
        port = http_port
    body = _body(rng)
    headers = [f"Host: {rng.choice(['127.0.0.1', '127.0.0.1', 'localhost', 'evil.example', ''])}"]
    token = rng.choice(tokens)
    if token:
        headers.append(f"Authorization: {token}")
    headers.append(f"Content-Type: {rng.choice(['application/sdp', 'application/json', 'text/plain', ''])}")
    trickled = False
    roll = rng.random()
    if port == ws_port and rng.random() < 0.3:  # bytes after the head, no length: issue #24's ERROR lines
        body = rng.choice([b"\r\n", b"GET /healthz HTTP/1.1\r\nHost: 127.0.0.1\r\n\r\n", body])
    elif roll < 0.05:
        headers.append("Content-Length: 1000000000000")
    elif roll < 0.08:
        headers.append(f"Content-Length: {len(body) + 500}")  # promised, never sent: the deadline
        trickled = True
    elif roll < 0.1:
        headers.append("Transfer-Encoding: chunked")
        body = b"5\r\nhello\r\n0\r\n\r\n" if rng.random() < 0.5 else b"zz\r\n"
    elif body or method in ("POST", "PUT", "PATCH"):
        headers.append(f"Content-Length: {len(body)}")
    headers.append("Connection: close")
    head = f"{method} {path} HTTP/1.1\r\n" + "".join(h + "\r\n" for h in headers) + "\r\n"
    return port, head.encode("latin-1", "replace") + body, trickled


async def _send(port: int, data: bytes) -> int:
    """The answer's status (0: closed unanswered)."""
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    try:
        writer.write(data)
        await writer.drain()
        answer = await within(reader.read(), 30)
    except (ConnectionError, TimeoutError):
        return 0
    finally:
        writer.close()
    try:
        return int(answer.split(b" ", 2)[1]) if answer.startswith(b"HTTP/") else 0
    except (IndexError, ValueError):
        return 0


async def fuzz(
    count: int, concurrency: int, seed: int, ports: tuple[int, int], admin: str = ADMIN
) -> Counter[int]:
    rng = random.Random(seed)
    tokens = _tokens(admin)
    statuses: Counter[int] = Counter()
    queue = [request(rng, tokens, ports) for _ in range(count)]

    async def worker(index: int) -> None:
        for port, data, _ in queue[index::concurrency]:
            statuses[await _send(port, data)] += 1

    await asyncio.gather(*(worker(i) for i in range(concurrency)))
    return statuses


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--requests", type=int, default=30_000)
    parser.add_argument("--concurrency", type=int, default=16)
    parser.add_argument("--seed", type=int, default=1)
    args = parser.parse_args()
    ports = (free_port(), free_port())
    env = {
        **os.environ,
        "LIVEROOM_ADMIN_TOKEN": ADMIN,
        "LIVEROOM_RATE_LIMITS": "off",
        "LIVEROOM_BODY_TIMEOUT": "1",
        "LIVEROOM_MAX_LOOP_LAG": "0",
        "LIVEROOM_MEDIA_ICE_TIMEOUT": "1",
    }
    with tempfile.TemporaryFile("w+") as log:
        cmd = [sys.executable, "-m", "server", "serve", "--port", str(ports[0]), "--http-port", str(ports[1])]
        proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=log, text=True, env=env)
        assert proc.stdout is not None
        line = proc.stdout.readline()
        if "listening on" not in line:
            raise SystemExit(f"server did not start: {line!r}")
        started = time.monotonic()
        try:
            statuses = asyncio.run(fuzz(args.requests, args.concurrency, args.seed, ports))
        finally:
            stop_process(proc)
        seconds = time.monotonic() - started
        log.seek(0)
        lines = log.read().splitlines()
    errors = [line for line in lines if " ERROR " in line or '"level":"error"' in line]
    tracebacks = sum(line.startswith("Traceback") for line in lines)
    fives = sum(n for status, n in statuses.items() if status >= 500)
    result = {
        "requests": args.requests,
        "seconds": round(seconds, 1),
        "statuses": {str(k): v for k, v in sorted(statuses.items())},
        "5xx": fives,
        "error_lines": len(errors),
        "tracebacks": tracebacks,
        "first_errors": errors[:5],
    }
    print(json.dumps(result))
    print("\n| requests | seconds | 5xx | ERROR lines | tracebacks | closed unanswered | statuses |")
    print("|---|---|---|---|---|---|---|")
    shown = ", ".join(f"{k}: {v}" for k, v in sorted(statuses.items()) if k)
    print(
        f"| {args.requests} | {seconds:.0f} | {fives} | {len(errors)} | {tracebacks} | {statuses[0]} | {shown} |"
    )
    if fives or errors or tracebacks:
        raise SystemExit(1)


if __name__ == "__main__":
    main()
