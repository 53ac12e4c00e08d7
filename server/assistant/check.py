"""`liveroom assistant check`: a catalogue's problems, and how the assistant does on labelled
questions, offline and in seconds (the project's own evaluation runs through `score`).

Labelled questions are JSON lines: {"q": "多少钱", "want": ["price:tee"], "ctx": "tee"}.
`want` lists the acceptable answer keys (aspect:product[:size] or faq:<id>); an empty list means
the line must get no reply (chitchat, or a question the catalogue cannot answer). `ctx` is the
product pinned when the line is said (null or absent: none).

Two ways to score. Alone: every line on its own, with only its pinned product as context.
Room order (the way a room sees them): every line is a danmaku from its own viewer, one a
second, through the assistant's own core (context, grouping, pacing, follow-ups), with two lines
of chitchat (preferably naming other products) between questions and pins following `ctx`.
"""

from __future__ import annotations

import argparse
import json
import time
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from server.assistant.catalogue import KINDS, OTHER, Catalogue, CatalogueError, load
from server.assistant.core import Assistant, Understanding
from server.assistant.phrasing import BUY_HERE
from server.assistant.text import has_cjk, normalise

STEP = 1.0  # seconds between two lines in room order
CHITCHAT_BETWEEN = 2  # chitchat lines between two questions in room order


@dataclass(slots=True)
class Item:
    q: str
    want: list[str]
    ctx: str | None = None

    @property
    def answerable(self) -> bool:
        return bool(self.want)


@dataclass
class Score:
    questions: int = 0
    chitchat: int = 0
    replied: int = 0  # lines replied to (questions and chitchat)
    correct: int = 0
    answered: int = 0  # answerable questions replied to (right or wrong)
    chitchat_replied: int = 0
    wrong: list[dict[str, Any]] = field(default_factory=list)
    unanswered: list[str] = field(default_factory=list)
    false_replies: list[dict[str, Any]] = field(default_factory=list)
    order: str = "alone"

    def summary(self) -> dict[str, Any]:
        return {
            "order": self.order,
            "questions": self.questions,
            "chitchat": self.chitchat,
            "precision": self.correct / self.replied if self.replied else 0.0,
            "answered": self.answered / self.questions if self.questions else 0.0,
            "chitchat_replied": self.chitchat_replied / self.chitchat if self.chitchat else 0.0,
        }

    def record(self, item: Item, key: str | None) -> None:
        if item.answerable:
            self.questions += 1
        else:
            self.chitchat += 1
        if key is None:
            if item.answerable:
                self.unanswered.append(item.q)
            return
        self.replied += 1
        if item.answerable:
            self.answered += 1
            if key in item.want:
                self.correct += 1
            else:
                self.wrong.append({"q": item.q, "got": key, "want": item.want})
        else:
            self.chitchat_replied += 1
            self.false_replies.append({"q": item.q, "got": key})


def read_items(path: str | Path) -> list[Item]:
    """JSON lines (blank lines and lines starting with # skipped)."""
    items = []
    for n, line in enumerate(Path(path).read_text(encoding="utf-8").splitlines(), 1):
        if not line.strip() or line.lstrip().startswith("#"):
            continue
        try:
            data = json.loads(line)
            items.append(Item(str(data["q"]), [str(w) for w in data.get("want") or []], data.get("ctx")))
        except (ValueError, KeyError, TypeError) as exc:
            raise ValueError(f"{path}:{n}: {exc}") from None
    return items


def score_alone(brain: Understanding, items: list[Item]) -> Score:
    score = Score(order="alone")
    for item in items:
        match = brain.understand(item.q, item.ctx)
        score.record(item, match.key if match is not None and match.confident else None)
    return score


def room_order(brain: Understanding, items: list[Item]) -> list[Item]:
    """Questions in file order, CHITCHAT_BETWEEN chitchat lines before each (those naming a
    product other than the question's first, when there are), chitchat left over at the end."""
    questions = [i for i in items if i.answerable]
    chitchat = [i for i in items if not i.answerable]

    def product_of(item: Item) -> str | None:
        hits = [h for h in brain.index.search(item.q) if h.kind == "product" and h.confidence >= 0.6]
        return hits[0].id if hits else None

    about = {id(c): product_of(c) for c in chitchat}
    out: list[Item] = []
    for question in questions:
        wanted = {w.split(":")[1] for w in question.want if w.count(":") >= 1 and not w.startswith("faq:")}
        for _ in range(CHITCHAT_BETWEEN):
            if not chitchat:
                break
            pick = next((c for c in chitchat if about[id(c)] and about[id(c)] not in wanted), chitchat[0])
            chitchat.remove(pick)
            out.append(Item(pick.q, [], question.ctx))  # said while the question's product is pinned
        out.append(question)
    return out + chitchat


def score_room(
    brain: Understanding, items: list[Item], *, reply_interval: float = 3.0, gather: float = 1.0
) -> Score:
    """The lines as danmaku of one room through the assistant's core; a line counts as replied
    when a reply names its seq (the key of the reply is the one scored)."""
    bot = Assistant(
        brain.catalogue, "assistant", understanding=brain, reply_interval=reply_interval, gather=gather
    )
    replied: dict[int, str] = {}  # seq -> the key of the reply that named it
    line_seqs: list[int] = []
    pinned: str | None = None
    seq = 0
    clock = 0.0

    def run_until(until: float) -> None:
        nonlocal clock
        while clock <= until:
            _, reply = bot.due(clock)
            if reply is not None:
                replied.update(dict.fromkeys(reply.frame["seqs"], reply.match.key))
            clock += 0.1

    for n, item in enumerate(items):
        events: list[dict[str, Any]] = []
        if item.ctx != pinned:
            if pinned is not None:
                seq += 1
                events.append({"t": "unpin", "id": f"product:{pinned}", "seq": seq})
            if item.ctx is not None and brain.catalogue.product(item.ctx) is not None:
                seq += 1
                events.append({"t": "pin", "kind": "product", "id": f"product:{item.ctx}", "seq": seq})
            pinned = item.ctx
        seq += 1
        line_seqs.append(seq)
        events.append({"t": "danmaku", "seq": seq, "uid": f"v{seq}", "name": f"v{seq}", "text": item.q})
        bot.on_frame({"t": "batch", "events": events}, clock)
        run_until((n + 1) * STEP - 0.05)
    run_until(clock + 120.0)  # what is still queued gets its (paced) reply
    score = Score(order="room")
    for item, line_seq in zip(items, line_seqs, strict=True):
        score.record(item, replied.get(line_seq))
    return score


def findings(catalogue: Catalogue, brain: Understanding) -> list[str]:
    """What a shop owner should fix or know before going live, one line each."""
    out: list[str] = []
    for i, p in enumerate(catalogue.products):
        where = f"products[{i}] {p.id!r}"
        if not p.link and not catalogue.link:
            out.append(f"{where}: no link (nor a shop-wide one): 'how do I buy' answers {BUY_HERE!r}")
        if any(has_cjk(s) for s in p.sizes) and not p.sizes_en:
            out.append(f"{where}: Chinese sizes and no sizes_en: English answers translate or leave them out")
        if any(has_cjk(c) for c in p.colours) and not p.colours_en:
            out.append(f"{where}: Chinese colours and no colours_en: English answers leave them out")
    for i, f in enumerate(catalogue.faq):
        if f.kind != OTHER and f.kind not in KINDS:
            out.append(
                f"faq[{i}] {f.id!r}: kind {f.kind!r} is not one the assistant knows ({', '.join(KINDS)})"
            )
    if catalogue.faq_of_kind("shipping") is None:
        out.append("no FAQ of kind shipping: '包邮吗 / free shipping?' is left to the host")
    if catalogue.faq_of_kind("overseas") is None:
        out.append("no FAQ of kind overseas: shipping abroad ('ship to Canada?') is left to the host")
    owners: dict[str, set[str]] = {}
    for kind, entry, phrase in brain.index.phrases:
        owners.setdefault(normalise(phrase), set()).add(f"{kind}:{entry}")
    for phrase, who in sorted(owners.items()):
        if len(who) > 1:
            out.append(f"{phrase!r} names {' and '.join(sorted(who))}: asked alone, the host answers")
    return out


def kinds(catalogue: Catalogue) -> str:
    return ", ".join(f"{f.id}={f.kind}" for f in catalogue.faq)


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--catalogue", required=True, help="catalogue YAML (docs/ASSISTANT.md)")
    parser.add_argument("--questions", help="labelled questions, JSON lines (docs/ASSISTANT.md)")
    parser.add_argument("--room-order", action="store_true", help="score in room order (interleaved)")
    parser.add_argument("--json", action="store_true", help="print the figures as one JSON line too")


def run(args: argparse.Namespace) -> int:
    try:
        catalogue = load(args.catalogue)
    except CatalogueError as exc:
        print(f"liveroom assistant check: {exc}")
        return 2
    t0 = time.perf_counter()
    brain = Understanding(catalogue)
    print(f"catalogue: {len(catalogue.products)} products, {len(catalogue.faq)} FAQ ({kinds(catalogue)})")
    for line in findings(catalogue, brain):
        print(f"  - {line}")
    if not args.questions:
        return 0
    try:
        items = read_items(args.questions)
    except (OSError, ValueError) as exc:
        print(f"liveroom assistant check: {exc}")
        return 2
    score = score_room(brain, room_order(brain, items)) if args.room_order else score_alone(brain, items)
    report(score)
    if args.json:
        print(json.dumps({**score.summary(), "seconds": round(time.perf_counter() - t0, 2)}))
    return 0


def report(score: Score) -> None:
    s = score.summary()
    print(
        f"{s['order']}: precision {s['precision']:.1%} of {score.replied} replies, "
        f"answered {s['answered']:.1%} of {s['questions']} questions, "
        f"chitchat replied {s['chitchat_replied']:.1%} of {s['chitchat']} lines"
    )
    for w in score.wrong:
        print(f"  wrong: {w['q']!r} -> {w['got']} (want {', '.join(w['want'])})")
    for f in score.false_replies:
        print(f"  replied to chitchat: {f['q']!r} -> {f['got']}")
    for q in score.unanswered:
        print(f"  left to the host: {q!r}")
    counts = Counter(w["got"].split(":")[0] for w in score.wrong)
    if counts:
        print(f"  wrong by aspect: {dict(counts)}")
