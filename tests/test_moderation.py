"""Moderation is the one path for every action: the admin API's and the WebSocket's agree.

No sockets: a MemoryBroker, a Hub, and Moderation as app.py wires them.
"""

from __future__ import annotations

import logging

import pytest

from server.abuse.moderation import ADMIN_UID, Moderation
from server.broker.memory import MemoryBroker
from server.config import Config
from server.delivery.fanout import RoomFanout
from server.delivery.hub import Hub
from server.edge.client import WsWriter


def _moderation() -> tuple[Moderation, MemoryBroker]:
    config = Config(port=0, http_port=0)
    broker = MemoryBroker(node_id="n1")
    moderation = Moderation(
        broker.limits, Hub(config, broker, RoomFanout(config, WsWriter())), None, config.tick_ms
    )
    broker.watch_sanctions(moderation.on_sanction)
    return moderation, broker


async def _kinds(broker: MemoryBroker, room: str, uid: str) -> set[str]:
    return {s.kind for s in await broker.sanctions(room, uid)}


@pytest.mark.parametrize("path", ["admin", "host"])
async def test_unban_lifts_a_kick_on_every_path(path: str) -> None:
    moderation, broker = _moderation()
    await moderation.sanction(["r1", "r2"], "bob", "kick", "host")
    await moderation.sanction(["r1", "r2"], "bob", "ban", "host")
    assert await _kinds(broker, "r1", "bob") == {"kick", "ban"}
    if path == "admin":
        await moderation.admin_sanction(["r1", "r2"], "bob", "unban", None)
    else:
        await moderation.sanction(["r1"], "bob", "unban", "host")
        await moderation.sanction(["r2"], "bob", "unban", "host")
    assert await _kinds(broker, "r1", "bob") == set()
    assert await _kinds(broker, "r2", "bob") == set()


async def test_admin_sanction_is_logged_like_any_action(caplog: pytest.LogCaptureFixture) -> None:
    moderation, broker = _moderation()
    with caplog.at_level(logging.INFO, logger="liveroom.abuse.mod"):
        until = await moderation.admin_sanction(["r1"], "bob", "mute", 30)
    assert until is not None
    [stored] = await broker.sanctions("r1", "bob")
    assert (stored.kind, stored.by, stored.until) == ("mute", ADMIN_UID, until)
    assert any(
        '"action":"mute"' in r.getMessage() and '"by":"admin"' in r.getMessage() for r in caplog.records
    )


async def test_admin_may_not_kick_through_the_admin_table() -> None:
    moderation, _ = _moderation()
    with pytest.raises(ValueError):
        await moderation.admin_sanction(["r1"], "bob", "kick", None)


async def test_announce_queues_a_sequenced_system_event() -> None:
    moderation, _ = _moderation()
    room = await moderation.announce("r1", "hello", closed=True)
    assert room.dirty
    [event] = room.drain(0).events
    assert event["t"] == "system" and event["text"] == "hello" and event["closed"] is True
    assert event["uid"] == "sys"
