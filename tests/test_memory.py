"""Empty rooms and departed users leave nothing behind on a node.

10,000 rooms and 10,000 users each join and leave through the real components (App's
guard, node, hub, media gateway, moderation, analytics), without sockets. Afterwards the
hub holds no room, user or lock, the guard no cap or bucket, analytics no open session,
and every object the components can reach is back to the count and bytes it had before.

Not counted on purpose: what the broker and the analytics store keep as data (a room's
history for resume, per-day statistics), which expire on their own terms; the broker's
retention is server/broker/'s and has its own expiry.
"""

from __future__ import annotations

import gc
import sys
from types import BuiltinFunctionType, FunctionType, ModuleType
from typing import Any

from server.app import App
from server.config import Config
from server.wire import auth
from tests.conftest import SECRET

CYCLES = 10_000
WARMUP = 500
SLACK = 16 * 1024  # bytes: far below one small object per cycle (10,000 x 56 B = 547 KiB)


class Peer:
    """A connection as the node sees it; writes go nowhere."""

    def __init__(self, ip: str) -> None:
        self.remote_ip = ip
        self.identity: auth.Identity | None = None
        self.room_id: str | None = None
        self.abuse: Any = None
        self.dropped = 0

    def send(self, frame: bytes) -> None:
        pass

    def buffered(self) -> int:
        return 0

    def reject(self, error: Exception) -> None:
        raise AssertionError(error)

    def close(self, code: int, reason: str) -> None:
        raise AssertionError((code, reason))


async def _visit(app: App, i: int) -> None:
    """One user opens its own room, joins, leaves; the room closes at the next tick."""
    n = i % 2**24
    peer = Peer(f"10.{n >> 16}.{(n >> 8) & 255}.{n & 255}")  # one address each, like real viewers
    app.guard.connect(peer)  # type: ignore[arg-type]
    room = f"room{i}"
    signed = auth.mint(SECRET, room=room, user=f"user{i}", role="host" if i % 2 else "viewer")
    peer.identity = await app.guard.admit(peer, signed, room)  # type: ignore[arg-type]
    peer.room_id = room
    await app.node.join(peer, None)  # type: ignore[arg-type]
    app.guard.joined(peer)  # type: ignore[arg-type]
    await app.node.leave(peer)  # type: ignore[arg-type]
    app.guard.disconnect(peer)  # type: ignore[arg-type]
    if i % 100 == 0:
        await app.node.tick()


async def _settle(app: App) -> None:
    await app.node.tick()
    await app.node.tick()  # presence reported at most once per presence_ms: a second pass closes
    await app.analytics.flush()
    real = app.guard.clock
    app.guard.clock = lambda: real() + 3600  # every bucket has refilled: the sweep forgets it
    app.guard._sweep()
    app.guard.clock = real
    gc.collect()


def _reachable(roots: list[object], stop: list[object]) -> tuple[int, int]:
    """(objects, bytes) reachable from the components, not through `stop` or shared code.

    Functions are not followed into their module globals (that is the whole program), only
    into their closures; modules and classes are shared code, not state.
    """
    skip = {id(o) for o in stop}
    seen: set[int] = set()
    stack = list(roots)
    count = size = 0
    while stack:
        obj = stack.pop()
        if id(obj) in seen or id(obj) in skip or isinstance(obj, (type, ModuleType, BuiltinFunctionType)):
            continue
        seen.add(id(obj))
        if isinstance(obj, FunctionType):
            stack.extend(cell.cell_contents for cell in obj.__closure__ or ())
            continue
        count += 1
        size += sys.getsizeof(obj)
        stack.extend(gc.get_referents(obj))
    return count, size


def _held(app: App) -> tuple[int, int]:
    roots = [app.hub, app.node, app.guard, app.media, app.moderation, app.analytics, app.fanout]
    return _reachable(roots, [app.broker, app.analytics.store, app.config])


async def test_rooms_and_users_leave_nothing_behind() -> None:
    config = Config(port=0, http_port=0, node_id="mem", presence_ms=0, max_joins_inflight=0)
    app = App(config)
    for i in range(WARMUP):
        await _visit(app, CYCLES + i)
    await _settle(app)
    objects_before, bytes_before = _held(app)
    for i in range(CYCLES):
        await _visit(app, i)
    await _settle(app)
    objects_after, bytes_after = _held(app)
    hub = app.hub
    assert (hub.rooms, hub.users, hub.dirty, hub.pinned) == ({}, {}, set(), set())
    assert len(hub.room_locks) == 0 and len(hub.user_locks) == 0
    assert app.analytics.open_sessions == 0
    assert app.guard.ip_cap.held("10.0.0.1") == 0 and app.guard.user_cap.held("user1") == 0
    assert all(len(table) == 0 for table in [*app.guard._user.values(), *app.guard._ip.values()])
    assert app.media.rooms == {} and app.media.invites == {}
    assert objects_after - objects_before < 20, (objects_before, objects_after)
    assert bytes_after - bytes_before < SLACK, (bytes_before, bytes_after)


def test_reachability_counts_what_a_component_holds() -> None:
    """The measure above would see a leak: a dict that keeps one entry per room."""
    holder: dict[str, object] = {}
    before = _reachable([holder], [])
    for i in range(100):
        holder[f"room{i}"] = object()
    after = _reachable([holder], [])
    assert after[0] - before[0] >= 100 and after[1] > before[1]
