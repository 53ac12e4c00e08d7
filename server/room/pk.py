"""A PK round as plain code: points per side, the score event, the result.

Two linked rooms are the two sides. A gift counts its value for the side of the room it was
sent in, a like counts `like_weight` points; top contributors are ranked by the gift value
they brought. The score lives in one place (the round's key, server/broker/pk_store.py) and
every event here is built from one read of it, so both rooms are sent the same numbers.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

Event = dict[str, Any]
TOP = 3  # contributors per side in a `pk_result`


@dataclass(frozen=True, slots=True)
class Score:
    version: int  # grows with every credit: a driver pushes a `pk` event only when it moved
    points: dict[str, int]  # room -> points
    top: dict[str, list[Event]]  # room -> [{uid, name, score}], highest first
    ended: bool = False


def like_points(likes: int, weight: int) -> int:
    return likes * weight


def winner(points: dict[str, int]) -> str | None:
    """The room with more points, None on a draw."""
    ranked = sorted(points.items(), key=lambda kv: -kv[1])
    if len(ranked) < 2 or ranked[0][1] == ranked[1][1]:
        return None
    return ranked[0][0]


def round_event(pk_id: str, rooms: list[str], ends: int, seconds: int, on: bool, now: int, sys: str) -> Event:
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
