"""Pure room statistics: records in, figures out. No I/O and no clock, so tests compute
the expected values by hand from a scripted session and compare exactly.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from server.analytics.questions import question_stats
from server.analytics.ranks import percentile
from server.analytics.records import (
    DANMAKU,
    DAY,
    DM,
    FIRST_FRAME,
    INTERACTIONS,
    JOIN,
    LEAVE,
    LIKE,
    Record,
    day_of,
)

FIRST_FRAME_BUCKETS = (100, 250, 500, 1000, 2000, 5000)  # ms, upper bounds; the rest is "+Inf"
DEFAULT_FUNNEL = ("joined", "watched:30", "interacted", "dm_host")


@dataclass(frozen=True, slots=True)
class Session:
    """One viewer connection: [start, end); end is None while it is still open."""

    uid: str
    start: float
    end: float | None


def sessions(records: Iterable[Record], since: float) -> list[Session]:
    """Pair joins with leaves by session id. A leave whose join is older than what was read
    started at `since` at the latest; a join with no leave is still watching."""
    opened: dict[str, Session] = {}
    done: list[Session] = []
    for r in sorted(records, key=lambda r: r.ts):
        if r.kind == JOIN:
            opened[r.session] = Session(r.uid, r.ts, None)
        elif r.kind == LEAVE:
            start = opened.pop(r.session, None)
            done.append(Session(r.uid, start.start if start else since, r.ts))
    return done + list(opened.values())


def _overlap(s: Session, start: float, end: float) -> float:
    return max(0.0, min(end, s.end if s.end is not None else end) - max(start, s.start))


def concurrency(all_sessions: Sequence[Session], start: float, end: float) -> tuple[int, int]:
    """(viewers connected at `end`, peak within [start, end]); a leave at t precedes a join at t."""
    points: list[tuple[float, int]] = []
    for s in all_sessions:
        if s.end is not None and s.end <= start:
            continue
        if s.start > end:
            continue
        points.append((max(s.start, start), 1))
        if s.end is not None and s.end <= end:
            points.append((s.end, -1))
    now = peak = 0
    for _, delta in sorted(points, key=lambda p: (p[0], p[1])):
        now += delta
        peak = max(peak, now)
    return now, peak


def live_start(all_sessions: Sequence[Session], now: float) -> float | None:
    """When the current (or last) run began: the last time the room went from 0 viewers to 1.
    A join at the very instant of the last leave continues the run (no gap, no new run)."""
    points = [(s.start, 1) for s in all_sessions] + [(s.end, -1) for s in all_sessions if s.end is not None]
    count, began = 0, None
    for ts, delta in sorted(points, key=lambda p: (p[0], -p[1])):
        if ts > now:
            break
        if count == 0 and delta == 1:
            began = ts
        count += delta
    return began


def first_frame_summary(values: Iterable[int]) -> dict[str, Any]:
    ordered = sorted(values)
    buckets: dict[str, int] = {str(b): 0 for b in FIRST_FRAME_BUCKETS} | {"+Inf": 0}
    for v in ordered:
        bound = next((b for b in FIRST_FRAME_BUCKETS if v <= b), None)
        buckets[str(bound) if bound is not None else "+Inf"] += 1
    return {
        "count": len(ordered),
        "p50": percentile(ordered, 0.5),
        "p90": percentile(ordered, 0.9),
        "p99": percentile(ordered, 0.99),
        "buckets_ms": buckets,
    }


def window_stats(
    records: Sequence[Record],
    all_sessions: Sequence[Session],
    start: float,
    end: float,
    first_seen: Mapping[str, int],
    funnel: Sequence[str] = DEFAULT_FUNNEL,
) -> dict[str, Any]:
    """Every figure for one window [start, end] of one room."""
    watch: dict[str, float] = {}
    for s in all_sessions:
        if s.start <= end and (s.end is None or s.end > start):
            watch[s.uid] = watch.get(s.uid, 0.0) + _overlap(s, start, end)
    viewers = set(watch)
    inside = [r for r in records if start <= r.ts <= end]
    interacted = {r.uid for r in inside if r.kind in INTERACTIONS} & viewers
    dm_host = {r.uid for r in inside if r.kind == DM and r.value} & viewers
    danmaku = sum(1 for r in inside if r.kind == DANMAKU)
    likes = sum(r.value for r in inside if r.kind == LIKE)
    minutes = (end - start) / 60
    now, peak = concurrency(all_sessions, start, end)
    total = sum(watch.values())
    today = day_of(end)
    returning = {uid for uid in viewers if first_seen.get(uid, today) < today}
    return {
        "start": start,
        "end": end,
        "concurrent_now": now,
        "peak_concurrent": peak,
        "unique_viewers": len(viewers),
        "watch_time_total_s": total,
        "watch_time_avg_s": total / len(viewers) if viewers else 0.0,
        "interaction_rate": len(interacted) / len(viewers) if viewers else 0.0,
        "danmaku": danmaku,
        "likes": likes,
        "danmaku_per_min": danmaku / minutes if minutes > 0 else 0.0,
        "likes_per_min": likes / minutes if minutes > 0 else 0.0,
        "return_rate": len(returning) / len(viewers) if viewers else 0.0,
        "funnel": _funnel(funnel, viewers, watch, interacted, dm_host),
        "first_frame": first_frame_summary(r.value for r in inside if r.kind == FIRST_FRAME),
        "questions": question_stats(inside),
    }


def _funnel(
    steps: Sequence[str],
    viewers: set[str],
    watch: Mapping[str, float],
    interacted: set[str],
    dm_host: set[str],
) -> list[dict[str, Any]]:
    """Each step counts the users who also passed every step before it."""
    left = set(viewers)
    out = []
    for step in steps:
        name, _, arg = step.partition(":")
        if name == "watched":
            left = {u for u in left if watch.get(u, 0.0) >= float(arg or 30)}
        elif name == "interacted":
            left &= interacted
        elif name == "dm_host":
            left &= dm_host
        elif name != "joined":
            raise ValueError(f"unknown funnel step {step!r}")
        out.append({"step": step, "users": len(left), "rate": len(left) / len(viewers) if viewers else 0.0})
    return out


def check_funnel(steps: Sequence[str]) -> None:
    """Raise ValueError for a funnel the aggregator cannot compute (checked at startup)."""
    _funnel(steps, set(), {}, set(), set())


def room_stats(
    records: Sequence[Record],
    now: float,
    first_seen: Mapping[str, int],
    funnel: Sequence[str] = DEFAULT_FUNNEL,
) -> dict[str, Any]:
    """The three windows: `live` (since the room last went from 0 viewers to 1), `hour`, `day` (UTC)."""
    earliest = min((r.ts for r in records), default=now)
    all_sessions = sessions(records, earliest)
    began = live_start(all_sessions, now)
    day_start = day_of(now) * DAY
    return {
        "now": now,
        "live": window_stats(records, all_sessions, began, now, first_seen, funnel)
        if began is not None
        else None,
        "hour": window_stats(records, all_sessions, now - 3600, now, first_seen, funnel),
        "day": window_stats(records, all_sessions, day_start, now, first_seen, funnel),
    }
