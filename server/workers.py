"""`liveroom serve --workers N`: N node processes on one port, sharing one Redis.

One Python process uses one core. The kernel spreads incoming connections over the
processes that bound the port with SO_REUSEPORT; rooms and users are shared through Redis
exactly as between machines, so a viewer may land on any worker. Without --redis a local
redis-server (no persistence) is started for them, or, when there is none, the command
refuses with what to run. Each worker gets its own media (WHIP/WHEP) port: http-port + i.
A worker that dies is started again; SIGTERM/SIGINT stop them all (each drains with 1012).
"""

from __future__ import annotations

import os
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Sequence
from typing import IO

from server.config import Config

REDIS_HINT = (
    "liveroom: --workers {n} needs a Redis the workers share, and no redis-server was found.\n"
    "Start one and point the workers at it:\n"
    "  redis-server --port 6379 --save '' --appendonly no &\n"
    "  liveroom serve --workers {n} --redis redis://127.0.0.1:6379/0"
)


def _free_port(host: str) -> int:
    with socket.socket() as sock:
        sock.bind((host, 0))
        return int(sock.getsockname()[1])


def _without_workers(argv: Sequence[str]) -> list[str]:
    out: list[str] = []
    skip = False
    for arg in argv:
        if skip:
            skip = False
        elif arg == "--workers":
            skip = True
        elif not arg.startswith("--workers="):
            out.append(arg)
    return out


def _start_redis(workdir: str) -> tuple[subprocess.Popen[bytes], str]:
    port = _free_port("127.0.0.1")
    proc = subprocess.Popen(
        [
            *("redis-server", "--port", str(port), "--bind", "127.0.0.1"),
            *("--save", "", "--appendonly", "no", "--dir", workdir, "--loglevel", "warning"),
        ],
        stdout=subprocess.DEVNULL,
    )
    deadline = time.monotonic() + 10
    while time.monotonic() < deadline:
        try:
            with socket.create_connection(("127.0.0.1", port), timeout=0.5) as sock:
                sock.sendall(b"PING\r\n")
                if sock.recv(16).startswith(b"+PONG"):
                    return proc, f"redis://127.0.0.1:{port}/0"
        except OSError:
            time.sleep(0.05)
    proc.kill()
    raise RuntimeError("the local redis-server did not start")


def _copy(stream: IO[str]) -> None:
    for line in stream:
        sys.stdout.write(line)
        sys.stdout.flush()


class _Worker:
    def __init__(self, argv: list[str], index: int) -> None:
        self.argv = argv
        self.index = index
        self.proc: subprocess.Popen[str] | None = None

    def start(self) -> str:
        """Start the process; returns its first line (the `listening on` line, or an error)."""
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "server", *self.argv],
            stdout=subprocess.PIPE,
            text=True,
            env={**os.environ, "LIVEROOM_REUSE_PORT": "1"},  # SO_REUSEPORT on the shared port
        )
        assert self.proc.stdout is not None
        return self.proc.stdout.readline()

    def pass_output(self) -> None:
        """Copy the rest of the worker's stdout to ours (after the supervisor's own line)."""
        if self.proc is not None and self.proc.stdout is not None:
            threading.Thread(target=_copy, args=(self.proc.stdout,), daemon=True).start()

    def stop(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)

    def wait(self, timeout: float) -> None:
        if self.proc is None:
            return
        try:
            self.proc.wait(timeout)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait()


def run_workers(config: Config, count: int, argv: Sequence[str]) -> int:
    redis_proc: subprocess.Popen[bytes] | None = None
    workdir: tempfile.TemporaryDirectory[str] | None = None
    redis_url = config.redis_url
    if not redis_url:
        if shutil.which("redis-server") is None:
            print(REDIS_HINT.format(n=count), file=sys.stderr)
            return 2
        workdir = tempfile.TemporaryDirectory(prefix="liveroom-redis-")
        redis_proc, redis_url = _start_redis(workdir.name)
    port = config.port or _free_port(config.host)  # every worker must bind the same port
    base = config.node_id or f"node-{port}"
    args = _without_workers(argv)
    workers = []
    for i in range(count):
        http_port = config.http_port + i if config.http_port else 0
        extra = ["--port", str(port), "--http-port", str(http_port), "--node-id", f"{base}-w{i}"]
        extra += ["--redis", redis_url]
        if config.rtmp_port > 0:  # one nginx-rtmp per worker: ports N, N+1, ... like --http-port
            extra += ["--rtmp-port", str(config.rtmp_port + i)]
        workers.append(_Worker([*args, *extra], i))
    stopping = False

    def on_signal(_sig: int, _frame: object) -> None:
        nonlocal stopping
        stopping = True

    signal.signal(signal.SIGTERM, on_signal)
    signal.signal(signal.SIGINT, on_signal)
    try:
        for worker in workers:
            line = worker.start()
            if "listening on" not in line:
                print(f"liveroom: worker {worker.index} did not start: {line.strip()!r}", file=sys.stderr)
                return 1
        print(
            f"liveroom listening on http://{config.host}:{port} ({count} workers, redis {redis_url})",
            flush=True,
        )
        for worker in workers:
            worker.pass_output()
        while not stopping:
            time.sleep(0.2)
            for worker in workers:
                if not stopping and worker.proc is not None and worker.proc.poll() is not None:
                    code = worker.proc.returncode
                    print(f"liveroom: worker {worker.index} exited ({code}), restarting", file=sys.stderr)
                    worker.start()
                    worker.pass_output()
        return 0
    finally:
        for worker in workers:
            worker.stop()
        for worker in workers:
            worker.wait(30)
        if redis_proc is not None:
            redis_proc.terminate()
            redis_proc.wait(10)
        if workdir is not None:
            workdir.cleanup()
