"""`liveroom serve --demo`: a Python host streams a test pattern into room "demo".

A second Python host streams into room "demo2" and accepts link invitations, so a PK between
the two rooms starts from the "demo" host console (invite demo2, then Start PK).

It runs as its own process (`python -m client_demo.host`), so encoding video never
competes with the server's event loop, and it reconnects by itself if the server restarts.
"""

from __future__ import annotations

import asyncio
import os
import sys
from dataclasses import dataclass, field
from pathlib import Path

from server.config import Config
from server.deadline import within

DEMO_ROOM = "demo"
PK_ROOM = "demo2"  # the second demo room: its host accepts links, for a PK with DEMO_ROOM
STATS_INTERVAL = 30  # seconds between the demo host's stats lines in the server's output
# the demo room's assistant answers from the demo client's catalogue (a file: no import of client_demo)
CATALOGUE = Path(__file__).resolve().parents[1] / "client_demo" / "catalogue.yaml"


@dataclass
class DemoHost:
    proc: asyncio.subprocess.Process
    others: list[asyncio.subprocess.Process] = field(default_factory=list)  # the room's assistant

    async def stop(self) -> None:
        for proc in (self.proc, *self.others):
            if proc.returncode is None:
                proc.terminate()
                try:
                    await within(proc.wait(), 10)
                except TimeoutError:
                    proc.kill()
                    await proc.wait()


async def start_demo_host(config: Config, port: int) -> DemoHost:
    host = config.host if config.host not in ("0.0.0.0", "::", "") else "127.0.0.1"
    server = f"ws://{host}:{port}"
    env = dict(os.environ)
    if not config.secrets:  # without dev tokens the host signs its own with the server's secret
        env["LIVEROOM_SECRET"] = config.secret
    proc = await asyncio.create_subprocess_exec(
        sys.executable,
        "-m",
        "client_demo.host",
        "--room",
        DEMO_ROOM,
        "--server",
        server,
        "--stats-interval",
        str(STATS_INTERVAL),
        "--parent-pid",
        str(os.getpid()),
        env=env,
    )
    rival = await asyncio.create_subprocess_exec(
        sys.executable,
        "-m",
        "client_demo.host",
        "--room",
        PK_ROOM,
        "--user",
        "pyhost2",
        "--name",
        "Test pattern 2",
        "--no-audio",
        # small and slow: its encoder shares the machine with the first picture of room "demo"
        "--width",
        "320",
        "--height",
        "180",
        "--fps",
        "15",
        "--accept-links",
        "--server",
        server,
        "--stats-interval",
        "0",
        "--parent-pid",
        str(os.getpid()),
        env=env,
    )
    assistant = await asyncio.create_subprocess_exec(
        sys.executable,
        "-m",
        "server",
        "assistant",
        "--room",
        DEMO_ROOM,
        "--catalogue",
        str(CATALOGUE),
        "--pin",
        "tee",  # the product on sale: short questions ("多少钱") are about it
        "--server",
        server,
        "--parent-pid",
        str(os.getpid()),
        env=env,
    )
    print(
        f"demo: the assistant answers product questions in room {DEMO_ROOM!r} ({CATALOGUE.name})", flush=True
    )
    base = f"http://{host}:{port}"
    print(
        f"demo: a test pattern is streaming into room {DEMO_ROOM!r} (python -m client_demo.host)", flush=True
    )
    print(
        f"demo: watch at {base}/room/{DEMO_ROOM}   host console: {base}/host.html?room={DEMO_ROOM}",
        flush=True,
    )
    print(
        f"demo: PK: a second host streams into room {PK_ROOM!r} and accepts links: in the host console of"
        f" {DEMO_ROOM!r} invite {PK_ROOM!r}, then Start PK (viewers: {base}/room/{PK_ROOM})",
        flush=True,
    )
    return DemoHost(proc, [rival, assistant])
