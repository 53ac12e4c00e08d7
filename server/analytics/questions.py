"""Pure question figures: questions asked, answered by the assistant or the host, unanswered,
answer latency and the most asked unanswered questions, from QUESTION/ANSWER records.

A QUESTION and its ANSWER are paired by the danmaku's seq, so the figures are right even when
the assistant and the host answer from different nodes (both records reach the shared store).
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Iterable
from typing import Any

from server.analytics.ranks import percentile
from server.analytics.records import ANSWER, QUESTION, Record

TOP_UNANSWERED = 5


def question_stats(records: Iterable[Record]) -> dict[str, Any]:
    asked: dict[int, Record] = {}
    answers: dict[int, Record] = {}
    for r in sorted(records, key=lambda r: r.ts):
        if r.kind == QUESTION:
            asked.setdefault(r.value, r)
        elif r.kind == ANSWER:
            answers.setdefault(r.value, r)  # the first answer counts
    by = Counter(answers[seq].uid for seq in asked if seq in answers)
    latency = sorted(
        max(0, round((answers[seq].ts - q.ts) * 1000)) for seq, q in asked.items() if seq in answers
    )
    unanswered = Counter(q.session for seq, q in asked.items() if seq not in answers)
    return {
        "asked": len(asked),
        "answered_assistant": by.get("assistant", 0),
        "answered_host": by.get("host", 0),
        "unanswered": sum(unanswered.values()),
        "latency_ms": {"p50": percentile(latency, 0.5), "p95": percentile(latency, 0.95)},
        "top_unanswered": [{"label": k, "count": n} for k, n in unanswered.most_common(TOP_UNANSWERED)],
    }
