"""Stream identity through a Redis outage: Redis SIGKILLed under traffic and restarted on the same
port, with clients written from docs/PROTOCOL.md that check what they are told.

Every client keeps (epoch, seq) as the protocol says (the epoch of the last batch, adopting a
new one only when it continues the stream, resyncing otherwise) and reconnects with `resume`.
A shared ledger names every event by (epoch, seq): two different events under one name is a
conflict. A client's stream must be gapless from each snapshot on: a recovery replays exactly
the events after its position, anything else must come as `recovered: false`.
"""

from __future__ import annotations

import asyncio
import contextlib
from pathlib import Path
from typing import Any

import msgpack
import pytest
from websockets.asyncio.client import ClientConnection, connect
from websockets.exceptions import ConnectionClosed, InvalidHandshake

from tests.conftest import token
from tests.redis_fixtures import (
    WAIT,
    NodeProc,
    RedisServer,
    apoll,
    requires_redis,
    start_nodes,
)

__all__ = ["start_nodes"]  # fixtures

pytestmark = requires_redis
ROOM = "outage"


class Ledger:
    """Every (epoch, seq) any client saw, and the event it named."""

    def __init__(self) -> None:
        self.names: dict[tuple[str, int], bytes] = {}
        self.conflicts: list[tuple[str, int]] = []

    def record(self, epoch: str, event: dict[str, Any]) -> None:
        body = msgpack.packb(sorted(event.items()))
        known = self.names.setdefault((epoch, event["seq"]), body)
        if known != body:
            self.conflicts.append((epoch, event["seq"]))


class Client:
    """A viewer (or, with `talk`, a talker) that follows the protocol's stream rules."""

    def __init__(self, uid: str, nodes: list[NodeProc], ledger: Ledger, talk: bool = False) -> None:
        self.uid, self.nodes, self.ledger, self.talk = uid, nodes, ledger, talk
        self.epoch: str | None = None
        self.seq = 0
        self.ws: ClientConnection | None = None
        self.texts: set[str] = set()
        self.gaps: list[str] = []  # silent gaps: a violation
        self.snapshots = {"fresh": 0, "recovered": 0}
        self.adopted = 0  # batches that moved the stream to a new epoch
        self.sent = 0
        self.task: asyncio.Task[None] | None = None

    def start(self, node: int) -> None:
        self.task = asyncio.get_running_loop().create_task(self._run(node))

    async def stop(self) -> None:
        if self.task is not None:
            self.task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self.task
        if self.ws is not None:
            await self.ws.close()

    async def _run(self, node: int) -> None:
        while True:
            for candidate in (node, 1 - node):
                with contextlib.suppress(OSError, ConnectionClosed, InvalidHandshake, TimeoutError):
                    await self._session(self.nodes[candidate])
            await asyncio.sleep(0.05)  # reconnect backoff

    async def _session(self, node: NodeProc) -> None:
        async with connect(node.ws_url, open_timeout=5) as ws:
            self.ws = ws
            join: dict[str, Any] = {"t": "join", "token": token(ROOM, self.uid)}
            if self.epoch is not None:
                join["resume"] = {"epoch": self.epoch, "seq": self.seq}
            await ws.send(msgpack.packb(join))
            talker = asyncio.get_running_loop().create_task(self._talk(ws)) if self.talk else None
            try:
                async for data in ws:
                    frame = msgpack.unpackb(data)
                    if frame["t"] == "snapshot":
                        self._snapshot(frame, "resume" in join)
                    elif frame["t"] == "batch" and not self._batch(frame):
                        return  # resync: reconnect with resume
            finally:
                if talker is not None:
                    talker.cancel()
                self.ws = None

    async def _talk(self, ws: ClientConnection) -> None:
        while True:
            await ws.send(msgpack.packb({"t": "danmaku", "text": f"{self.uid}-{self.sent}"}))
            self.sent += 1
            await asyncio.sleep(0.03)

    def say(self, text: str) -> None:
        if self.ws is not None:
            asyncio.get_running_loop().create_task(
                self.ws.send(msgpack.packb({"t": "danmaku", "text": text}))
            )

    def _snapshot(self, snap: dict[str, Any], resumed: bool) -> None:
        if resumed and snap.get("recovered"):
            self.snapshots["recovered"] += 1
            if snap["epoch"] != self.epoch:
                self.gaps.append(f"recovered into epoch {snap['epoch']} from {self.epoch}")
            missed = snap["missed"]
            expected = list(range(self.seq + 1, snap["seq"] + 1))
            if [e["seq"] for e in missed] != expected:
                self.gaps.append(
                    f"recovery {self.seq} -> {snap['seq']} replayed {[e['seq'] for e in missed]}"
                )
            self._events(snap["epoch"], missed)
            return
        self.snapshots["fresh"] += 1
        self.epoch, self.seq = snap["epoch"], snap["seq"]
        for event in snap["recent"]:
            self.ledger.record(self.epoch, event)
            self.texts.add(event["text"])

    def _batch(self, frame: dict[str, Any]) -> bool:
        events = [e for e in frame["events"] if isinstance(e.get("seq"), int)]
        epoch = frame.get("epoch", self.epoch)
        if epoch != self.epoch:
            if not events or events[0]["seq"] != self.seq + 1:
                return False  # not a continuation of our stream: resync
            self.epoch = epoch
            self.adopted += 1
        self._events(epoch, events)
        return True

    def _events(self, epoch: str, events: list[dict[str, Any]]) -> None:
        for event in events:
            self.ledger.record(epoch, event)
            if event["seq"] <= self.seq:
                continue
            if event["seq"] != self.seq + 1:
                self.gaps.append(f"{epoch}: {self.seq} -> {event['seq']}")
            self.seq = event["seq"]
            if event["t"] == "danmaku":
                self.texts.add(event["text"])


@pytest.mark.parametrize("restart", ["aof-always", "no-persistence", "older-copy"])
async def test_redis_sigkill_and_restart_under_traffic(tmp_path: Path, start_nodes, restart: str) -> None:
    """aof-always: Redis comes back with the room's epoch (exact recoveries are possible).
    no-persistence: the room restarts under a new epoch (every resume must be refused).
    older-copy: Redis comes back from an RDB snapshot taken earlier in the traffic, behind what
    the nodes delivered: the room must not number those seqs again under the same epoch."""
    redis_server = RedisServer(tmp_path, persistent=restart == "aof-always")
    redis_server.start()
    try:
        await _outage_under_traffic(redis_server, start_nodes(redis_server.url, 2), restart)
    finally:
        redis_server.stop()


async def _outage_under_traffic(redis_server: RedisServer, nodes: list[NodeProc], restart: str) -> None:
    ledger = Ledger()
    talkers = [Client(f"talker{i}", nodes, ledger, talk=True) for i in range(2)]
    viewers = [Client(f"viewer{i}", nodes, ledger) for i in range(6)]
    late = [Client(f"late{i}", nodes, ledger) for i in range(2)]  # leave in the outage, rejoin after
    everyone = talkers + viewers + late
    for i, client in enumerate(everyone):
        client.start(i % 2)
    try:
        # traffic flows through Redis to everyone
        await apoll(lambda: all(len(c.texts) >= 10 for c in everyone), what="traffic before the outage")
        if restart == "older-copy":
            with redis_server.client() as client:
                client.save()  # dump.rdb, loaded by the restart below
            mark = {c.uid: len(c.texts) for c in everyone}
            await apoll(lambda: all(len(c.texts) >= mark[c.uid] + 10 for c in everyone), what="more traffic")

        redis_server.proc.kill()  # SIGKILL: no shutdown; only what the AOF (if any) holds is left
        redis_server.proc.wait(WAIT)
        await asyncio.gather(*(n.wait_ready(False) for n in nodes))
        for client in late:
            await client.stop()
        # the nodes keep their rooms going alone (under epochs their clients see: checked below)
        outage_mark = {c.uid: len(c.texts) for c in viewers}
        await apoll(
            lambda: all(len(c.texts) >= outage_mark[c.uid] + 10 for c in viewers), what="outage traffic"
        )

        redis_server.start()  # same port, same AOF
        await asyncio.gather(*(n.wait_ready(True) for n in nodes))
        for i, client in enumerate(late):
            client.start(1 - i % 2)  # rejoin on the other node with the position it had

        # once everyone settled, everything said reaches everyone
        async def settled() -> bool:
            for i, talker in enumerate(talkers):
                talker.say(f"final{i}")
            await asyncio.sleep(0.2)  # pacing between probes; the condition is checked below
            return all({"final0", "final1"} <= c.texts for c in everyone)

        await apoll(settled, what="every client to see the last danmaku of both talkers")
    finally:
        for client in everyone:
            await client.stop()

    assert ledger.conflicts == [], f"(epoch, seq) naming two events: {ledger.conflicts[:5]}"
    for client in everyone:
        assert client.gaps == [], f"{client.uid}: silent gaps {client.gaps[:5]}"
    if restart != "aof-always":
        assert all(c.snapshots["recovered"] == 0 for c in everyone)  # the old epoch is gone
    assert all(t.adopted for t in talkers)  # the outage's batches came under a new epoch
    assert all(c.snapshots["fresh"] >= 2 for c in talkers)  # reset after the outage: fresh state
    assert len({epoch for epoch, _ in ledger.names}) >= 3  # Redis' and each node's own
