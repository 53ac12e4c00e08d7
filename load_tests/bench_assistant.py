"""Assistant quality and speed on the held-out evaluation set (load_tests/assistant_eval/).

    python -m load_tests.bench_assistant [--split test|dev] [--runs 3] [--e2e]

Two splits, same catalogue: `dev` (questions.yaml, chitchat.yaml) was used to revise the
assistant's general rules after its first run; `test` (test_questions.yaml, test_chitchat.yaml)
was written afterwards and is never used to change the assistant. The targets apply to `test`.
Quality (deterministic): every question and every chitchat line goes through the assistant's
understanding with the product in context (`ctx`), exactly as the running assistant does.
- precision: of the questions the assistant answers, the share whose answer key is acceptable;
- answered: the share of questions it answers (the rest are left to the host's board);
- chitchat answered: the share of non-questions it answers (should be ~0).
Speed: per message, understanding plus the template answer (no LLM), p50/p95 over all
messages, median of `runs` passes; and how many danmaku per second one assistant core reads
(10,000 mixed questions and chitchat from 500 askers, replies paced as in the room). With --e2e: a real server and a real `liveroom assistant`
process; viewers post questions one at a time and the time from sending to seeing the reply
(including the assistant's gather window, `--gather`, and the tick) is measured.
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

import yaml

from server.assistant.catalogue import load
from server.assistant.core import Assistant, Understanding

HERE = Path(__file__).resolve().parent / "assistant_eval"
CATALOGUE = Path(__file__).resolve().parent.parent / "client_demo" / "catalogue.yaml"
TARGETS = {"precision": 0.90, "answered": 0.70, "chitchat_answered": 0.05, "latency_p95_ms": 300.0}


def percentile(values: list[float], p: float) -> float:
    ordered = sorted(values)
    return ordered[max(0, min(len(ordered) - 1, round(p * len(ordered) + 0.5) - 1))]


def evaluate(
    brain: Understanding, questions: list[dict[str, Any]], chitchat: list[dict[str, Any]]
) -> dict[str, Any]:
    answered = correct = 0
    wrong: list[dict[str, Any]] = []
    missed: list[str] = []
    times: list[float] = []
    for item in questions:
        t0 = time.perf_counter()
        match = brain.understand(item["q"], item.get("ctx"))
        if match is not None and match.confident:
            brain.answer(match, match.lang)
        times.append((time.perf_counter() - t0) * 1000)
        if match is not None and match.confident:
            answered += 1
            if match.key in item["want"]:
                correct += 1
            else:
                wrong.append({"q": item["q"], "got": match.key, "want": item["want"]})
        else:
            missed.append(item["q"])
    false_answers: list[dict[str, Any]] = []
    for item in chitchat:
        t0 = time.perf_counter()
        match = brain.understand(item["q"], item.get("ctx"))
        if match is not None and match.confident:
            brain.answer(match, match.lang)
            false_answers.append({"q": item["q"], "got": match.key})
        times.append((time.perf_counter() - t0) * 1000)
    zh = sum(1 for q in questions if any("\u4e00" <= ch <= "\u9fff" for ch in q["q"]))
    return {
        "questions": len(questions),
        "questions_zh": zh,
        "questions_en": len(questions) - zh,
        "chitchat": len(chitchat),
        "entries": len(brain.catalogue.products) + len(brain.catalogue.faq),
        "precision": correct / answered if answered else 0.0,
        "answered": answered / len(questions),
        "chitchat_answered": len(false_answers) / len(chitchat),
        "latency_p50_ms": percentile(times, 0.5),
        "latency_p95_ms": percentile(times, 0.95),
        "wrong": wrong,
        "unanswered": missed,
        "false_answers": false_answers,
    }


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


async def end_to_end(questions: list[dict[str, Any]], count: int, gather: float) -> dict[str, Any]:
    """Reply latency over a real server and a real assistant process (one question at a time)."""
    import msgpack
    from websockets.asyncio.client import connect

    from server.config import DEFAULT_SECRET
    from server.wire import auth

    env = {**os.environ, "LIVEROOM_REPLY_INTERVAL": "0", "LIVEROOM_REPLY_REPEAT_WINDOW": "0"}
    env["LIVEROOM_REPEAT_MAX"] = "0"  # one viewer asks everything
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
            "--gather",
            str(gather),
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
            asked = [
                q for q in questions if not q.get("ctx") and (m := brain.understand(q["q"])) and m.confident
            ]
            for item in asked[:count]:
                t0 = time.perf_counter()
                await ws.send(msgpack.packb({"t": "danmaku", "text": item["q"]}))
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
    parser.add_argument("--split", choices=["test", "dev"], default="test")
    parser.add_argument("--runs", type=int, default=3)
    parser.add_argument("--e2e", action="store_true", help="also measure reply latency end to end")
    parser.add_argument("--e2e-count", type=int, default=20)
    parser.add_argument("--gather", type=float, default=1.0, help="the assistant's gather window in --e2e")
    parser.add_argument("--verbose", action="store_true", help="list wrong, unanswered and false answers")
    args = parser.parse_args()
    prefix = "test_" if args.split == "test" else ""
    questions = yaml.safe_load((HERE / f"{prefix}questions.yaml").read_text(encoding="utf-8"))
    chitchat = yaml.safe_load((HERE / f"{prefix}chitchat.yaml").read_text(encoding="utf-8"))
    t0 = time.perf_counter()
    brain = Understanding(load(CATALOGUE))
    index_ms = (time.perf_counter() - t0) * 1000
    runs = [evaluate(brain, questions, chitchat) for _ in range(args.runs)]
    result = dict(runs[0])
    for key in ("latency_p50_ms", "latency_p95_ms"):
        result[key] = statistics.median(r[key] for r in runs)
    result["index_ms"] = index_ms
    texts = [item["q"] for item in questions + chitchat]
    result["danmaku_per_s"] = statistics.median(throughput(brain, texts) for _ in range(args.runs))
    result["split"] = args.split
    if args.e2e:
        result.update(asyncio.run(end_to_end(questions, args.e2e_count, args.gather)))
    details = {k: result.pop(k) for k in ("wrong", "unanswered", "false_answers")}
    result["pass"] = (
        result["precision"] >= TARGETS["precision"]
        and result["answered"] >= TARGETS["answered"]
        and result["chitchat_answered"] <= TARGETS["chitchat_answered"]
        and result["latency_p95_ms"] < TARGETS["latency_p95_ms"]
    )
    print(json.dumps(result, ensure_ascii=False))
    print()
    print("| metric | value | target |")
    print("|---|---|---|")
    print(f"| precision of answers given | {result['precision']:.1%} | >= 90% |")
    print(f"| questions answered | {result['answered']:.1%} ({result['questions']} questions) | >= 70% |")
    print(
        f"| non-questions answered | {result['chitchat_answered']:.1%} ({result['chitchat']} lines) | <= 5% |"
    )
    print(
        f"| latency p50 / p95 (no LLM) | {result['latency_p50_ms']:.2f} / {result['latency_p95_ms']:.2f} ms | p95 < 300 ms |"
    )
    print(f"| danmaku read per second (one assistant core) | {result['danmaku_per_s']:.0f} | |")
    if args.e2e:
        print(
            f"| reply end to end p50 / p95 (gather {args.gather} s) "
            f"| {result['e2e_p50_ms']:.0f} / {result['e2e_p95_ms']:.0f} ms | |"
        )
    if args.verbose:
        print(json.dumps(details, ensure_ascii=False, indent=1))


if __name__ == "__main__":
    main()
