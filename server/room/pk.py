"""A PK round as plain code: points per side, the score event, the result.

Two linked rooms are the two sides. A gift counts its value for the side of the room it was
sent in, a like counts `like_weight` points; top contributors are ranked by the gift value
they brought. The score lives in one place (the round's key, server/broker/pk_store.py) and
every event here is built from one read of it, so both rooms are sent the same numbers.

A round's life is a few phases kept with its score: `running` (credits count), `closed` (the
score is final, its result not yet announced), `penalty` (an optional timed forfeit for the
loser after the result), `done`. Whichever node drives the round (server/node/pk.py) asks `step`
what to do next, so a node that takes over a dead driver's round resumes exactly where it was.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

Event = dict[str, Any]
TOP = 3  # contributors per side in a `pk_result`


RUNNING, CLOSED, PENALTY, DONE = "running", "closed", "penalty", "done"


@dataclass(frozen=True, slots=True)
class Score:
    version: int  # grows with every credit: a driver pushes a `pk` event only when it moved
    points: dict[str, int]  # room -> points
    top: dict[str, list[Event]]  # room -> [{uid, name, score}], highest first
    phase: str = RUNNING
    ends: int = 0  # ms since the epoch when the scoring ends
    penalty: int = 0  # seconds of penalty after the result (0: none)
    penalty_ends: int = 0  # ms since the epoch, once the penalty runs

    @property
    def ended(self) -> bool:
        """Credits no longer count (read from a close: it was closed before)."""
        return self.phase != RUNNING

    @property
    def rooms(self) -> list[str]:
        return list(self.points)


def step(score: Score, now: int) -> str:
    """The driver's next move at `now` (ms): `score` (push the score if it moved), `close`
    (time is up), `announce` (publish the result, start the penalty), `wait` (penalty running),
    `lift` (penalty over), `stop` (nothing left)."""
    if score.phase == RUNNING:
        return "close" if now >= score.ends else "score"
    if score.phase == CLOSED:
        return "announce"
    if score.phase == PENALTY:
        return "lift" if now >= score.penalty_ends else "wait"
    return "stop"


def like_points(likes: int, weight: int) -> int:
    return likes * weight


def winner(points: dict[str, int]) -> str | None:
    """The room with more points, None on a draw."""
    ranked = sorted(points.items(), key=lambda kv: -kv[1])
    if len(ranked) < 2 or ranked[0][1] == ranked[1][1]:
        return None
    return ranked[0][0]


def round_event(
    pk_id: str, rooms: list[str], ends: int, seconds: int, on: bool, now: int, sys: str, penalty: int = 0
) -> Event:
    """`pk_round` (on at the start, off at the end): sticky, so a joiner sees the round."""
    return {
        "t": "pk_round",
        "uid": sys,
        "name": sys,
        "ts": now,
        "on": on,
        "id": pk_id,
        "rooms": rooms,
        "ends": ends,
        "seconds": seconds,
        "penalty": penalty,
        "scores": dict.fromkeys(rooms, 0),
    }


def score_event(pk_id: str, score: Score, now: int, sys: str) -> Event:
    """The one small event a tick carries to both rooms while the round runs."""
    return {
        "t": "pk",
        "uid": sys,
        "name": sys,
        "ts": now,
        "id": pk_id,
        "scores": score.points,
        "ver": score.version,
    }


def result_event(pk_id: str, score: Score, now: int, sys: str) -> Event:
    return {
        "t": "pk_result",
        "uid": sys,
        "name": sys,
        "ts": now,
        "id": pk_id,
        "scores": score.points,
        "winner": winner(score.points),
        "top": {room: top[:TOP] for room, top in score.top.items()},
    }


def loser(points: dict[str, int]) -> str | None:
    """The room with fewer points, None on a draw (then both rooms share the penalty)."""
    ranked = sorted(points.items(), key=lambda kv: kv[1])
    if len(ranked) < 2 or ranked[0][1] == ranked[1][1]:
        return None
    return ranked[0][0]


def penalty_event(pk_id: str, score: Score, ends: int, on: bool, now: int, sys: str) -> Event:
    """`pk_penalty` (on after the result, off when it is over): sticky, so a joiner sees it."""
    return {
        "t": "pk_penalty",
        "uid": sys,
        "name": sys,
        "ts": now,
        "on": on,
        "id": pk_id,
        "rooms": score.rooms,
        "ends": ends,
        "seconds": score.penalty,
        "loser": loser(score.points),
    }
