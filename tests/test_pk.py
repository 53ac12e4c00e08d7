"""Cross-room links and PK rounds on one node: hosts only, both rooms see one score and one result."""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from typing import Any

from server.app import App
from server.broker.pk_store import MemoryPkStore
from server.room.pk import (
    CLOSED,
    DONE,
    PENALTY,
    RUNNING,
    Score,
    loser,
    penalty_event,
    result_event,
    step,
    winner,
)
from server.wire.protocol import ErrorCode
from tests.conftest import WsClient
from tests.test_gifts import until_events

Join = Callable[..., Awaitable[WsClient]]


def test_winner_and_result_are_read_from_one_score() -> None:
    assert winner({"a": 3, "b": 5}) == "b" and winner({"a": 4, "b": 4}) is None
    top = {"a": [{"uid": f"u{i}", "name": "n", "score": 10 - i} for i in range(5)], "b": []}
    result = result_event("p", Score(7, {"a": 10, "b": 2}, top), 0, "sys")
    assert result["winner"] == "a" and len(result["top"]["a"]) == 3 and result["scores"] == {"a": 10, "b": 2}


def test_the_driver_steps_through_a_rounds_phases() -> None:
    """The whole schedule a driver (or the node that takes over from a dead one) follows."""
    score = Score(1, {"a": 3, "b": 5}, {}, RUNNING, ends=1000, penalty=30)
    assert step(score, 999) == "score" and step(score, 1000) == "close"
    assert step(Score(1, {}, {}, CLOSED, ends=1000), 5000) == "announce"
    penalty = Score(1, {"a": 3, "b": 5}, {}, PENALTY, ends=1000, penalty=30, penalty_ends=31_000)
    assert step(penalty, 30_999) == "wait" and step(penalty, 31_000) == "lift"
    assert step(Score(1, {}, {}, DONE), 0) == "stop"
    assert loser({"a": 3, "b": 5}) == "a" and loser({"a": 4, "b": 4}) is None
    event = penalty_event("p", penalty, 31_000, True, 1000, "sys")
    assert (event["t"], event["loser"], event["seconds"], event["ends"], event["rooms"]) == (
        "pk_penalty",
        "a",
        30,
        31_000,
        ["a", "b"],
    )


async def test_phases_move_once_and_a_lapsed_lease_is_taken() -> None:
    store = MemoryPkStore()
    await store.open_round("p", ["a", "b"], ends=10**15, penalty=10)
    assert await store.claim("p", "n0", 60_000) and await store.claim("p", "n0", 60_000)  # renewed
    assert not await store.claim("p", "n1", 60_000)  # held by a live driver
    await store.credit("p", "a", 7, "u", "U")
    assert not (await store.close_round("p")).ended  # this call closed it
    await store.credit("p", "b", 100)  # after the close: nothing
    final = await store.close_round("p")
    assert final.ended and final.points == {"a": 7, "b": 0} and final.phase == CLOSED
    assert await store.advance("p", CLOSED, PENALTY, 5000) and not await store.advance("p", CLOSED, DONE)
    await store.cut("p", 2000)  # a host ended the link during the penalty: over now
    assert (await store.read("p")).penalty_ends == 2000  # type: ignore[union-attr]
    expiring = MemoryPkStore()
    await expiring.open_round("q", ["a", "b"], ends=0, penalty=0)
    assert await expiring.claim("q", "n0", 0)  # a lease of 0 ms lapses at once: n0 "died"
    assert await expiring.claim("q", "n1", 60_000)
    await expiring.cut("q", 0)  # ended while running: closed, and no penalty after it
    assert (await expiring.read("q")).phase == CLOSED and (await expiring.read("q")).penalty == 0  # type: ignore[union-attr]


async def ask(client: WsClient, **frame: Any) -> dict[str, Any]:
    await client.send(**frame)
    return await client.recv_until(lambda f: f["t"] in ("error", "link_ack"))


async def run_pk(ha: WsClient, hb: WsClient, va: WsClient, vb: WsClient) -> None:
    """The same scenario on one node and across nodes (tests/test_redis_retention.py)."""
    assert (await ask(va, t="link", action="invite", room="rb"))["code"] == ErrorCode.FORBIDDEN
    assert (await ask(ha, t="link", action="invite", room="ra"))["code"] == ErrorCode.LINK_TARGET
    assert (await ask(ha, t="link", action="pk", seconds=60))["code"] == ErrorCode.LINK_STATE
    for bad in ({"seconds": 10}, {"seconds": 60, "penalty": 601}, {"penalty": -1}, {"penalty": "30"}):
        assert (await ask(ha, t="link", action="pk", **bad))["code"] == ErrorCode.BAD_FIELD
    assert (await ask(ha, t="link", action="invite", room="rb"))["t"] == "link_ack"
    assert (await ask(ha, t="link", action="invite", room="rb"))["code"] == ErrorCode.LINK_BUSY
    assert (await ask(hb, t="link", action="accept", room="zz"))["code"] == ErrorCode.LINK_STATE
    assert (await ask(hb, t="link", action="accept", room="ra"))["t"] == "link_ack"
    for viewer in (va, vb):
        await until_events(viewer, lambda es: any(e["t"] == "link" and e["on"] for e in es))
    assert (await ask(ha, t="link", action="pk", seconds=600))["t"] == "link_ack"
    assert (await ask(hb, t="link", action="pk", seconds=60))["t"] == "error"  # one round at a time
    for viewer in (va, vb):
        await until_events(viewer, lambda es: any(e["t"] == "pk_round" and e["on"] for e in es))
    for i in range(3):
        await va.send(t="gift", gift="rose", cid=f"a{i}")
    await vb.send(t="gift", gift="star", cid="b0")
    await vb.send(t="like", count=5)
    want = {"ra": 30, "rb": 55}
    for viewer in (va, vb):  # both rooms see the same running score, one `pk` event per tick at most
        seen = await until_events(viewer, lambda es: any(e["t"] == "pk" and e["scores"] == want for e in es))
        frames_ok = [e for e in seen if e["t"] == "pk"]
        assert frames_ok and all(set(e["scores"]) == {"ra", "rb"} for e in frames_ok)
    assert (await ask(hb, t="link", action="end"))["t"] == "link_ack"
    results = []
    for viewer in (va, vb):
        seen = await until_events(viewer, lambda es: any(e["t"] == "pk_result" for e in es))
        results.append(next(e for e in seen if e["t"] == "pk_result"))
    assert results[0]["scores"] == results[1]["scores"] == want  # exact and equal in both rooms
    assert results[0]["winner"] == "rb" and results[0]["top"]["ra"] == [
        {"uid": "va", "name": "va", "score": 30}
    ]
    assert {k: v for k, v in results[0].items() if k != "seq"} == {
        k: v for k, v in results[1].items() if k != "seq"
    }


async def test_two_rooms_link_play_a_round_and_see_one_result(app: App, join: Join) -> None:
    ha = await join("ha", "ra", "host")
    hb = await join("hb", "rb", "host")
    va = await join("va", "ra")
    vb = await join("vb", "rb")
    await run_pk(ha, hb, va, vb)
