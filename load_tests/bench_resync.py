"""What a room reset costs the node: one in-band resync of N members against N join snapshots.

    python -m load_tests.bench_resync --members 2000 --repeat 7      # JSON + a table

A reset room's members each get a fresh snapshot on their live connection (Node.resync): the
room's fields are encoded once, and per member only `you`, `ice_servers` (and the staff's
`qa`/`products`) are packed and joined to them. Before #23 each member was closed (1012) and
joined again: a WebSocket handshake, a join, and a whole snapshot built and encoded per member.
This measures, in one process on a real node (App, in-memory broker, TURN credentials on so
`ice_servers` costs what it does in production):

- `resync_ms`: Node.resync for the room (every member's frame built and queued);
- `snapshots_ms`: what N joins spend on their snapshots alone (Room.snapshot, media.describe,
  the gift catalogue, encoding), the part of a join the resync replaces; the handshake and the
  join's other work (token check, admission, membership, DM backlog) come on top;
- the frame sizes, and that each resync frame decodes to its member's join snapshot.

Members are stand-ins that keep the frame (no socket): the socket write is the same one frame
per member either way. Medians of `--repeat` runs.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import statistics
import time
from typing import Any

import msgpack

from server.app import App
from server.config import Config
from server.wire import protocol
from server.wire.auth import Identity


class Member:
    """A room member that keeps what it is sent (server.delivery.peer.Peer's send side)."""

    closing = False

    def __init__(self) -> None:
        self.frames: list[bytes] = []
        self.dropped = 0

    def send(self, frame: bytes) -> None:
        self.frames.append(frame)


async def bench(members: int, repeat: int, recent: int) -> dict[str, Any]:
    config = Config(
        port=0,
        http_port=0,
        node_id="bench",
        ice_servers="stun:127.0.0.1:3478,turn:127.0.0.1:3478",
        turn_secret="bench-secret",
        recent_size=recent,
    )
    app = App(config)
    await app.start()
    try:
        room = await app.hub.open_room("big")
        now = protocol.now_ms()
        for i in range(recent):  # a full chat history, as a busy room has
            room.recent.append(
                {
                    "t": "danmaku",
                    "seq": i + 1,
                    "ts": now,
                    "uid": f"u{i}",
                    "name": f"User {i}",
                    "text": "x" * 40,
                }
            )
        room.seq = recent
        people: list[tuple[Member, Identity]] = []
        for i in range(members):
            role = "moderator" if i % 500 == 0 else "viewer"  # a few staff, as in a real room
            people.append((Member(), Identity(uid=f"v{i}", name=f"Viewer {i}", role=role, room="big")))
        room.members = dict(people)
        resync, snapshots = [], []
        for _ in range(repeat):
            for member, _ in people:
                member.frames.clear()
            t0 = time.perf_counter()
            app.node.resync(room)
            resync.append(time.perf_counter() - t0)
            t0 = time.perf_counter()
            joined = []
            for _member, who in people:  # what Node.join does for a snapshot, per member
                snap = room.snapshot(who, app.node.node_id, app.hub.frame_ms("big"), app.node.limits)
                app.media.describe("big", snap)
                snap["gifts"] = app.node.gift_catalogue
                joined.append(protocol.pack(snap))
            snapshots.append(time.perf_counter() - t0)
        # each in-band frame is its member's join snapshot plus the marker (TURN credentials
        # carry the time: compare the rest)
        for (member, _), frame in zip(people, joined, strict=True):
            got, want = msgpack.unpackb(member.frames[0]), msgpack.unpackb(frame)
            assert got.pop("reset") is True and got.pop("recovered") is False
            got.pop("ice_servers"), want.pop("ice_servers")
            assert got == want, (got, want)
        resync_ms = statistics.median(resync) * 1000
        snapshots_ms = statistics.median(snapshots) * 1000
        return {
            "members": members,
            "recent": recent,
            "repeat": repeat,
            "resync_ms": round(resync_ms, 2),
            "resync_us_per_member": round(resync_ms * 1000 / members, 2),
            "snapshots_ms": round(snapshots_ms, 2),
            "snapshot_us_per_member": round(snapshots_ms * 1000 / members, 2),
            "ratio": round(snapshots_ms / resync_ms, 1),
            "frame_bytes": len(people[1][0].frames[0]),
        }
    finally:
        for room in app.hub.rooms.values():
            room.members = {}  # stand-ins: nothing to close
        await app.stop()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--members", type=int, default=2000)
    parser.add_argument("--repeat", type=int, default=7)
    parser.add_argument("--recent", type=int, default=50, help="danmaku in the snapshot's `recent`")
    args = parser.parse_args()
    result = asyncio.run(bench(args.members, args.repeat, args.recent))
    print(json.dumps(result))
    print()
    print(
        f"{'members':>8} {'resync ms':>10} {'us/member':>10} {'N join snapshots ms':>20} {'us/member':>10} {'ratio':>6}"
    )
    r = result
    print(
        f"{r['members']:>8} {r['resync_ms']:>10} {r['resync_us_per_member']:>10} "
        f"{r['snapshots_ms']:>20} {r['snapshot_us_per_member']:>10} {r['ratio']:>6}"
    )


if __name__ == "__main__":
    main()
