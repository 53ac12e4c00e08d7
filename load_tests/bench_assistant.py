"""Assistant quality and speed on the project's evaluation sets (load_tests/assistant_eval/).

    python -m load_tests.bench_assistant [--split holdout|dev] [--runs 3] [--e2e]

Quality goes through `liveroom assistant check` (server/assistant/check.py): the same scoring,
per catalogue of the split, each line alone and in room order (questions interleaved with
chitchat about other products, through the assistant's own core). Splits:
- `dev`: every line seen while the rules were written (the project's first two splits, the
  lines added for issue #29 and the first issue-29 held-out split), on the demo catalogue,
  shop2.yaml (no links, FAQ ids that are free labels, goods the shop does not sell) and
  shop3.yaml;
- `holdout`: written after the last rule change and never used to change the assistant; the
  targets apply to it, in room order.
precision: of the lines replied to, the share whose reply is one of the acceptable answers
(a reply to chitchat or to an off-catalogue question is a wrong reply); answered: the share of
answerable questions replied to; chitchat replied: the share of lines wanting no reply that got
one. Speed: understanding plus the template answer per message (no LLM), p50/p95, median of
`runs` passes; danmaku one assistant core reads per second. With --e2e: a real server (its
default pacing) and a real `liveroom assistant` process on its defaults; a viewer asks one
question at a time, `--e2e-spacing` s apart (the server's reply interval), and the time from
sending to seeing the reply is measured.
Prints one JSON line, then a markdown table.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import statistics
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

from server.assistant import check
from server.assistant.catalogue import load
from server.assistant.core import Assistant, Understanding

HERE = Path(__file__).resolve().parent / "assistant_eval"
CATALOGUE = Path(__file__).resolve().parent.parent / "client_demo" / "catalogue.yaml"
SPLITS = {
    "dev": [
        (CATALOGUE, HERE / "dev.jsonl"),
        (HERE / "shop2.yaml", HERE / "shop2_dev.jsonl"),
        (HERE / "shop3.yaml", HERE / "shop3_dev.jsonl"),
    ],
    "holdout": [
        (CATALOGUE, HERE / "holdout.jsonl"),
        (HERE / "shop2.yaml", HERE / "shop2_holdout.jsonl"),
        (HERE / "shop3.yaml", HERE / "shop3_holdout.jsonl"),
    ],
}
TARGETS = {"precision": 0.95, "answered": 0.75, "chitchat_replied": 0.03, "latency_p95_ms": 300.0}
E2E_TARGET_MS = 400.0


def percentile(values: list[float], p: float) -> float:
    ordered = sorted(values)
    return ordered[max(0, min(len(ordered) - 1, round(p * len(ordered) + 0.5) - 1))]


def merge(scores: list[check.Score]) -> check.Score:
    total = check.Score(order=scores[0].order)
    for s in scores:
        for name in ("questions", "chitchat", "replied", "correct", "answered", "chitchat_replied"):
            setattr(total, name, getattr(total, name) + getattr(s, name))
        total.wrong += s.wrong
        total.unanswered += s.unanswered
        total.false_replies += s.false_replies
    return total


def quality(split: str) -> dict[str, check.Score]:
    """The split's lines scored alone and in room order, every catalogue of the split merged."""
    alone, room = [], []
    for catalogue, questions in SPLITS[split]:
        brain = Understanding(load(catalogue))
        items = check.read_items(questions)
        alone.append(check.score_alone(brain, items))
        room.append(check.score_room(brain, check.room_order(brain, items)))
    return {"alone": merge(alone), "room": merge(room)}


def speed(brain: Understanding, items: list[check.Item]) -> list[float]:
    times = []
    for item in items:
        t0 = time.perf_counter()
        match = brain.understand(item.q, item.ctx)
        if match is not None and match.confident:
            brain.answer(match, match.lang)
        times.append((time.perf_counter() - t0) * 1000)
    return times


def throughput(brain: Understanding, texts: list[str], count: int = 10_000) -> float:
    """Danmaku per second one assistant core reads (questions and chitchat mixed, 500 askers)."""
    bot = Assistant(brain.catalogue, "bot", understanding=brain)
    t0 = time.perf_counter()
    for i in range(count):
        event = {
            "t": "danmaku",
            "seq": i + 1,
            "uid": f"u{i % 500}",
            "name": "u",
            "text": texts[i % len(texts)],
        }
        bot.on_frame({"t": "batch", "events": [event]}, i / 1000)
        if i % 50 == 0:
            bot.due(i / 1000)
    return count / (time.perf_counter() - t0)


async def end_to_end(items: list[check.Item], count: int, spacing: float) -> dict[str, Any]:
    """Reply latency over a real server and a real assistant process, both on their defaults
    (one question at a time, `spacing` s apart: the server paces the assistant's replies)."""
    import msgpack
    from websockets.asyncio.client import connect

    from server.config import DEFAULT_SECRET
    from server.wire import auth

    env = {**os.environ, "LIVEROOM_REPEAT_MAX": "0"}  # one viewer asks everything
    server = subprocess.Popen(
        [sys.executable, "-m", "server", "serve", "--port", "0", "--http-port", "0", "--rate-limits", "off"],
        stdout=subprocess.PIPE,
        stderr=subprocess.DEVNULL,
        text=True,
        env=env,
    )
    assert server.stdout is not None
    line = server.stdout.readline()
    port = int(line.split("http://127.0.0.1:")[1].split()[0])
    bot = subprocess.Popen(
        [
            sys.executable,
            "-m",
            "server",
            "assistant",
            "--room",
            "e2e",
            "--catalogue",
            str(CATALOGUE),
            "--server",
            f"ws://127.0.0.1:{port}",
        ],
        stdout=subprocess.PIPE,
        stderr=subprocess.DEVNULL,
        text=True,
    )
    assert bot.stdout is not None
    try:
        await asyncio.to_thread(bot.stdout.readline)  # "assistant: answering in room ..."
        token = auth.mint(DEFAULT_SECRET, room="e2e", user="viewer")
        latencies = []
        async with connect(f"ws://127.0.0.1:{port}/ws?token={token}") as ws:
            await ws.recv()
            brain = Understanding(load(CATALOGUE))  # questions it answers without a product in context
            asked = [i for i in items if not i.ctx and (m := brain.understand(i.q)) and m.confident]
            for item in asked[:count]:
                await asyncio.sleep(spacing)
                t0 = time.perf_counter()
                await ws.send(msgpack.packb({"t": "danmaku", "text": item.q}))
                async with asyncio.timeout(10):
                    done = False
                    while not done:
                        frame = msgpack.unpackb(await ws.recv())
                        if frame.get("t") == "error":
                            raise RuntimeError(f"the server refused the question: {frame}")
                        for event in frame.get("events", []):
                            if event.get("t") == "reply":
                                latencies.append((time.perf_counter() - t0) * 1000)
                                done = True
        return {
            "e2e_replies": len(latencies),
            "e2e_p50_ms": percentile(latencies, 0.5),
            "e2e_p95_ms": percentile(latencies, 0.95),
        }
    finally:
        for proc in (bot, server):
            proc.terminate()
            proc.wait(10)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--split", choices=sorted(SPLITS), default="holdout")
    parser.add_argument("--runs", type=int, default=3)
    parser.add_argument("--e2e", action="store_true", help="also measure reply latency end to end")
    parser.add_argument("--e2e-count", type=int, default=20)
    parser.add_argument("--e2e-spacing", type=float, default=3.2, help="s between two questions (3.2)")
    parser.add_argument("--verbose", action="store_true", help="list wrong, unanswered and false replies")
    args = parser.parse_args()
    scores = quality(args.split)
    result: dict[str, Any] = {"split": args.split}
    for order, score in scores.items():
        result.update({f"{order}_{k}": v for k, v in score.summary().items() if k != "order"})
    t0 = time.perf_counter()
    brain = Understanding(load(CATALOGUE))
    result["index_ms"] = (time.perf_counter() - t0) * 1000
    items = check.read_items(SPLITS[args.split][0][1])
    runs = [speed(brain, items) for _ in range(args.runs)]
    result["latency_p50_ms"] = statistics.median(percentile(r, 0.5) for r in runs)
    result["latency_p95_ms"] = statistics.median(percentile(r, 0.95) for r in runs)
    texts = [item.q for item in items]
    result["danmaku_per_s"] = statistics.median(throughput(brain, texts) for _ in range(args.runs))
    if args.e2e:
        result.update(asyncio.run(end_to_end(items, args.e2e_count, args.e2e_spacing)))
    room = scores["room"].summary()
    result["pass"] = (
        room["precision"] >= TARGETS["precision"]
        and room["answered"] >= TARGETS["answered"]
        and room["chitchat_replied"] <= TARGETS["chitchat_replied"]
        and result["latency_p95_ms"] < TARGETS["latency_p95_ms"]
        and (not args.e2e or result["e2e_p95_ms"] < E2E_TARGET_MS)
    )
    print(json.dumps(result, ensure_ascii=False))
    print()
    print("| metric | alone | room order | target (room order) |")
    print("|---|---|---|---|")
    a, r = scores["alone"].summary(), room
    print(f"| precision of replies | {a['precision']:.1%} | {r['precision']:.1%} | >= 95% |")
    print(f"| questions answered | {a['answered']:.1%} | {r['answered']:.1%} ({r['questions']}) | >= 75% |")
    print(
        f"| chitchat / off-catalogue replied | {a['chitchat_replied']:.1%} | "
        f"{r['chitchat_replied']:.1%} ({r['chitchat']}) | <= 3% |"
    )
    print(
        f"| understanding p50 / p95 (no LLM) | {result['latency_p50_ms']:.2f} / "
        f"{result['latency_p95_ms']:.2f} ms | | p95 < 300 ms |"
    )
    print(f"| danmaku read per second (one assistant core) | {result['danmaku_per_s']:.0f} | | |")
    if args.e2e:
        print(
            f"| question -> reply, real server, defaults, p50 / p95 "
            f"| {result['e2e_p50_ms']:.0f} / {result['e2e_p95_ms']:.0f} ms | | p95 < 400 ms |"
        )
    if args.verbose:
        for order, score in scores.items():
            print(order)
            check.report(score)


if __name__ == "__main__":
    main()
