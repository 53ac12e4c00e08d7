"""The assistant's decisions, with no I/O: what a danmaku asks, which askers to group, when to reply.

The runner feeds it the frames the server sends (snapshot, batches, errors) and sends what
`due(now)` returns; `understand` is also what the benchmark measures. Time is passed in.
"""

from __future__ import annotations

import itertools
import re
from collections import Counter
from dataclasses import dataclass, field
from typing import Any

from server.assistant import phrasing
from server.assistant.catalogue import Catalogue, Faq
from server.assistant.intent import PRODUCT_ASPECTS, detect
from server.assistant.nouns import product_nouns
from server.assistant.retrieval import Index, product_phrases
from server.assistant.text import has_cjk, normalise, noun_stem
from server.assistant.topics import ABROAD, off_catalogue
from server.wire.fingerprint import answer_fingerprint
from server.wire.protocol import ErrorCode

PRODUCT_MENTION = 0.6  # a product phrasing this well covered is the product asked about
NOUN_KNOWN = 0.5  # a goods noun this close to a product phrasing is that product, not an unknown one
FAQ_ANSWER = 0.55  # an FAQ phrasing this well covered is answered
FAQ_STRONG = 0.85  # ... and wins over an aspect word ("what size should I get" is advice, not a size)
GATHER = 1.0  # seconds later askers of an answered question wait to be answered together
ASKER_TTL = 60.0  # seconds the product an asker named stays that asker's context
CONTEXT_TTL = 30.0  # seconds a product named in chat stays "the one being talked about"
PIN_ASKERS = 3  # askers of one product in a reply before the assistant pins its card
PIN_EVERY = 60.0  # seconds between two pins by the assistant
MAX_TAG = 20  # seqs per `question` message (protocol.MAX_REPLY_TARGETS)


@dataclass(frozen=True, slots=True)
class Match:
    key: str  # what is asked: price:tee, size:tee:M, faq:shipping, ask:...
    label: str  # for the host's question board
    confident: bool  # the assistant answers only these
    confidence: float
    product: str | None
    aspect: str | None  # product aspect, or None for an FAQ
    faq: str | None
    size: str | None
    lang: str
    named: bool = False  # the product was named in the message (not taken from context)
    other: str | None = None  # goods the catalogue does not sell, named in the message


def _fallback_key(text: str) -> str:
    return "ask:" + re.sub(r"\W+", "", normalise(text))[:24]


class Understanding:
    """Question -> Match with the catalogue's index (the part the benchmark measures)."""

    def __init__(self, catalogue: Catalogue, index: Index | None = None) -> None:
        self.catalogue = catalogue
        self.index = index or Index(catalogue)
        self.refresh()

    def refresh(self) -> None:
        """The catalogue's words the intent detector needs (product phrases, colour names)."""
        self._products = tuple(
            normalise(p)
            for product in self.catalogue.products
            for p in product_phrases(self.catalogue, product)
        )
        self._colours = tuple(
            normalise(c)
            for product in self.catalogue.products
            for c in (*product.colours, *product.colours_en)
            if c
        )
        self._sizes = frozenset(normalise(s) for product in self.catalogue.products for s in product.sizes)
        self._nouns: dict[str, str | None] = {}  # goods noun -> product (see _noun)

    def understand(self, text: str, current: str | None = None) -> Match | None:
        """None for a non-question; a Match (confident or not) for a question. `current` is the
        product in context, used only when the question names no goods at all."""
        intent = detect(text, self._products, self._colours, self._sizes)
        if not intent.question:
            return None
        topic = off_catalogue(text)
        if topic == ABROAD and (overseas := self.catalogue.faq_of_kind("overseas")) is not None:
            return self._faq_match(overseas, 0.9, intent.lang)
        if topic is not None:  # the host, the music, shipping abroad: the catalogue cannot say
            return self._open(text, intent.lang, f"{topic}: {text}")
        hits = self.index.search(text)
        products = [h for h in hits if h.kind == "product" and h.confidence >= PRODUCT_MENTION]
        faq = next((h for h in hits if h.kind == "faq"), None)
        named = products[0] if products else None
        ambiguous = len(products) > 1 and products[1].confidence >= products[0].confidence
        if ambiguous:
            named = None  # two products named as well ("T恤和裤子", "ms"): the host picks
        aspects = [a for a in intent.aspects if a in PRODUCT_ASPECTS]
        if intent.size and "link" not in aspects:
            aspects = ["size", *[a for a in aspects if a != "size"]]
        strong_faq = faq is not None and faq.confidence >= FAQ_STRONG and faq.specific and named is None
        advice = self.catalogue.faq_of_kind("size_advice")
        if intent.advice and advice and ("size" in aspects or (faq is not None and faq.id == advice.id)):
            return self._faq_match(advice, 0.9, intent.lang)
        shipping = self.catalogue.faq_of_kind("shipping")
        if "shipping" in intent.aspects and not aspects and not strong_faq and shipping:
            return self._faq_match(shipping, 0.9, intent.lang)
        if aspects and not strong_faq:
            aspect = aspects[0]
            unknown: list[str] = []
            product = named.id if named else None
            if ambiguous:
                unknown = [products[0].id, products[1].id]
            elif named is None:  # goods the shop does not sell: never answered about the context
                sold, unknown = self.goods(text)
                product = sold[0] if len(sold) == 1 and not unknown else None
                if not sold and not unknown:
                    product = current
            if product is None or self.catalogue.product(product) is None:
                what = f" · {unknown[0]}?" if unknown else " (which product?)"
                key = f"ask:{aspect}" + (f":{normalise(unknown[0])[:20]}" if unknown else "")
                other = unknown[0] if unknown else None
                return Match(
                    key, f"{aspect}{what}", False, 0.0, None, aspect, None, None, intent.lang, False, other
                )
            size = intent.size if aspect == "size" else None
            entry = self.catalogue.product(product)
            assert entry is not None
            key = f"{aspect}:{product}" + (f":{size}" if size else "")
            named_here = named is not None or product != current
            confidence = 0.95 if named_here else 0.8
            label = f"{aspect}{' ' + size if size else ''} · {entry.name}"
            return Match(key, label, True, confidence, product, aspect, None, size, intent.lang, named_here)
        if faq is not None and faq.confidence >= FAQ_ANSWER:
            entry_faq = next(f for f in self.catalogue.faq if f.id == faq.id)
            return self._faq_match(entry_faq, faq.confidence, intent.lang)
        return self._open(text, intent.lang, text, faq.confidence if faq else 0.0)

    def goods(self, text: str) -> tuple[list[str], list[str]]:
        """(products the message's goods nouns name, goods nouns the catalogue does not sell):
        "鞋有36的吗" -> (["sneakers"], []); "耳机多少钱" in a clothes shop -> ([], ["耳机"])."""
        sold: list[str] = []
        unknown: list[str] = []
        for noun in product_nouns(text):
            found = self._noun(noun)
            if found is None:
                unknown.append(noun)
            elif found and found not in sold:
                sold.append(found)
        return sold, unknown

    def _noun(self, noun: str) -> str | None:
        """The product a goods noun names, "" for a word of the catalogue that is no product
        (a colour, an FAQ's word), None for goods the catalogue does not sell."""
        if noun in self._nouns:
            return self._nouns[noun]
        norm = normalise(noun)
        hits = [h for h in self.index.search(noun) if h.confidence >= NOUN_KNOWN]
        found: str | None = None
        if hits and hits[0].kind == "product":
            found = hits[0].id
        elif norm in self._colours:
            found = ""
        elif self._head_only(norm):
            found = None  # "鞋" where only 拖鞋 is sold: shoes in general are not sold here
        elif hits or any(norm in p for p in self._products):
            found = ""
        if len(self._nouns) < 10_000:
            self._nouns[noun] = found
        return found

    def _head_only(self, noun: str) -> bool:
        """A bare Chinese goods noun that is only the head of longer catalogue names, and no
        name or alias itself: "鞋" in a shop selling 拖鞋 (slippers are shoes, shoes are not
        all slippers). Asked about, it is ambiguous: the host answers, not the context."""
        if not has_cjk(noun) or any(noun in (p, noun_stem(p)) for p in self._products):
            return False
        return any(len(p) > len(noun) and p.endswith(noun) and has_cjk(p) for p in self._products)

    @staticmethod
    def _open(text: str, lang: str, label: str, confidence: float = 0.0, product: str | None = None) -> Match:
        """A question the assistant leaves to the host: tagged for the board, never answered."""
        return Match(_fallback_key(text), label[:40], False, confidence, product, None, None, None, lang)

    def _faq_match(self, faq: Faq, confidence: float, lang: str) -> Match:
        label = phrasing.bilingual(faq.questions[0], lang)
        return Match(f"faq:{faq.id}", label, True, confidence, None, None, faq.id, None, lang)

    def answer(self, match: Match, lang: str) -> str:
        """The template answer, from the catalogue as it is now (host edits included)."""
        if match.faq is not None:
            faq = next(f for f in self.catalogue.faq if f.id == match.faq)
            return phrasing.faq_answer(faq, lang)
        assert match.product is not None and match.aspect is not None
        product = self.catalogue.product(match.product)
        assert product is not None
        return phrasing.product_answer(self.catalogue, product, match.aspect, lang, match.size)


@dataclass
class _Ask:
    seq: int
    uid: str
    name: str
    lang: str


@dataclass
class _Group:
    match: Match
    asks: list[_Ask] = field(default_factory=list)
    first_at: float = 0.0
    tagged: int = 0  # asks already sent in `question` tags


@dataclass
class Reply:
    """A reply the runner sends (and may rephrase with an LLM first)."""

    frame: dict[str, Any]
    match: Match
    answer: str  # the template answer, without mentions
    names: list[str]


class Assistant:
    def __init__(
        self,
        catalogue: Catalogue,
        uid: str,
        *,
        understanding: Understanding | None = None,
        reply_interval: float = 3.0,
        repeat_window: float = 20.0,
        gather: float = GATHER,
    ) -> None:
        self.catalogue = catalogue
        self.brain = understanding or Understanding(catalogue)
        self.uid = uid
        self.reply_interval = reply_interval
        self.repeat_window = repeat_window
        self.gather = gather
        self.groups: dict[str, _Group] = {}
        self.pinned: list[str] = []  # product ids pinned in the room, oldest first
        self.mentioned: tuple[str, float] | None = None  # last product named in chat, when
        self.asked: dict[str, tuple[str, float]] = {}  # asker -> the product they last named, when
        self.next_reply = 0.0
        self.given: dict[str, float] = {}  # answer fingerprint -> when
        self.answered: dict[str, float] = {}  # match key -> when last replied to (for `gather` s)
        self.demand: dict[str, list[float]] = {}  # product -> when askers of it were replied to
        self.inflight: dict[str, tuple[_Group, float, str]] = {}  # cid -> group, when sent, fingerprint
        self.last_pin = -PIN_EVERY
        self._cids = itertools.count(1)
        self.replies = 0
        self.epoch: str | None = None  # the room's stream: seqs of another epoch mean nothing

    # -- input ---------------------------------------------------------------------

    def current_product(self, now: float, uid: str = "") -> str | None:
        """What "多少钱?" is about: the product this asker named in the last ASKER_TTL s, else
        the newest pinned card, else a product named in chat in the last CONTEXT_TTL s."""
        own = self.asked.get(uid)
        if own is not None and now - own[1] <= ASKER_TTL:
            return own[0]
        if self.pinned:
            return self.pinned[-1]
        if self.mentioned is not None and now - self.mentioned[1] <= CONTEXT_TTL:
            return self.mentioned[0]
        return None

    def on_frame(self, frame: dict[str, Any], now: float) -> None:
        kind = frame.get("t")
        if kind == "snapshot":
            if frame.get("epoch") != self.epoch:  # the stream restarted: pending seqs are stale
                self.epoch = frame.get("epoch")
                self.groups.clear()
                self.inflight.clear()
            limits = frame.get("limits") or {}
            if "reply_ms" in limits:
                self.reply_interval = limits["reply_ms"] / 1000
            if "reply_repeat_ms" in limits:
                self.repeat_window = limits["reply_repeat_ms"] / 1000
            self.pinned = []
            for event in [*frame.get("pins", []), *frame.get("products", [])]:
                self._on_event(event, now)  # product edits in force: a restarted assistant knows them
        elif kind == "batch":
            for event in frame.get("events", []):
                self._on_event(event, now)
        elif kind == "error":
            self._on_error(frame, now)

    def _on_event(self, event: dict[str, Any], now: float) -> None:
        kind = event.get("t")
        if kind == "danmaku" and event.get("uid") != self.uid and isinstance(event.get("seq"), int):
            self.on_danmaku(
                event["seq"], event.get("uid", ""), event.get("name", ""), event.get("text", ""), now
            )
        elif kind == "pin" and event.get("kind") == "product":
            product_id = event["id"].removeprefix("product:")
            self.pinned = [p for p in self.pinned if p != product_id] + [product_id]
        elif kind == "unpin" and str(event.get("id", "")).startswith("product:"):
            self.pinned = [p for p in self.pinned if p != event["id"].removeprefix("product:")]
        elif kind == "product":
            self.catalogue.edit(event.get("id", ""), event.get("price"), event.get("stock"))
        elif kind == "reply" and event.get("uid") != self.uid:
            answered = set(event.get("seqs", []))  # the host answered: drop those askers
            for key, group in list(self.groups.items()):
                group.asks = [a for a in group.asks if a.seq not in answered]
                if not group.asks:
                    del self.groups[key]

    def on_danmaku(self, seq: int, uid: str, name: str, text: str, now: float) -> Match | None:
        match = self.brain.understand(text, self.current_product(now, uid))
        hits = [h for h in self.brain.index.search(text) if h.kind == "product"] if match is None else []
        if match is not None and match.named and match.product is not None:
            self.mentioned = (match.product, now)
            self.asked[uid] = (match.product, now)
        elif hits and hits[0].confidence >= PRODUCT_MENTION:
            self.mentioned = (hits[0].id, now)  # "I love the dress": now the dress is the context
            self.asked[uid] = (hits[0].id, now)
        elif match is not None and match.other:
            self.mentioned = None  # talk of goods the shop does not sell: no product in context
            self.asked.pop(uid, None)
        if len(self.asked) > 5000:  # bounded: forget the askers whose context expired
            self.asked = {u: a for u, a in self.asked.items() if now - a[1] <= ASKER_TTL}
        if match is None:
            return None
        group = self.groups.get(match.key)
        if group is None:
            group = self.groups[match.key] = _Group(match, first_at=now)
        group.asks.append(_Ask(seq, uid, name or uid, match.lang))
        return match

    def _on_error(self, frame: dict[str, Any], now: float) -> None:
        sent = self.inflight.pop(str(frame.get("ref")), None)
        if sent is None:
            return
        group, _, fingerprint = sent
        self.given.pop(fingerprint, None)  # refused: not given after all
        if frame.get("code") not in (ErrorCode.RATE_LIMITED, ErrorCode.REPEATED):
            return  # refused for good (unknown seq, banned word...): those askers are the host's
        wait = float(frame.get("retry_after") or self.reply_interval)
        self.next_reply = max(self.next_reply, now + wait)
        old = self.groups.get(group.match.key)
        if old is None:
            self.groups[group.match.key] = group
        else:
            old.asks = group.asks + old.asks

    # -- output ------------------------------------------------------------------------

    def due(self, now: float) -> tuple[list[dict[str, Any]], Reply | None]:
        """(question tags and pins to send now, the reply to send now or None)."""
        frames = self._tags()
        for cid, (_, sent_at, _) in list(self.inflight.items()):
            if now - sent_at > 30:
                del self.inflight[cid]
        self.given = {k: t for k, t in self.given.items() if now - t < self.repeat_window}
        self.answered = {k: t for k, t in self.answered.items() if now - t < self.gather}
        for key in [k for k, g in self.groups.items() if not g.match.confident and now - g.first_at > 300]:
            del self.groups[key]  # left to the host: the board keeps them, the assistant forgets
        if now < self.next_reply:
            return frames, None
        # a question not answered in the last `gather` s is answered at once (its first askers);
        # askers who come within `gather` s of a reply are gathered and get one follow-up
        ready = [
            g
            for g in self.groups.values()
            if g.match.confident
            and g.asks
            and (now - g.first_at >= self.gather or g.match.key not in self.answered)
        ]
        ready.sort(key=lambda g: (-len(g.asks), g.first_at))
        for group in ready:
            lang = Counter(a.lang for a in group.asks).most_common(1)[0][0]
            answer = self.brain.answer(group.match, lang)
            if answer_fingerprint(answer) in self.given:
                answer = phrasing.follow_up(answer, lang)  # the same answer, for later askers
                if answer_fingerprint(answer) in self.given:
                    continue  # said a moment ago: the server would refuse it; wait for the window
            del self.groups[group.match.key]
            self.answered[group.match.key] = now
            asks = group.asks[:MAX_TAG]
            if len(group.asks) > MAX_TAG:
                rest = _Group(group.match, group.asks[MAX_TAG:], now, 0)
                self.groups[group.match.key] = rest
            names = list(dict.fromkeys(a.name for a in asks))
            cid = f"r{next(self._cids)}"
            frame = {
                "t": "reply",
                "text": phrasing.mention(names, answer),
                "seqs": [a.seq for a in asks],
                "askers": list(dict.fromkeys(a.uid for a in asks)),
                "cid": cid,
            }
            self.inflight[cid] = (
                _Group(group.match, asks, group.first_at, len(asks)),
                now,
                answer_fingerprint(answer),
            )
            self.given[answer_fingerprint(answer)] = now
            self.next_reply = now + self.reply_interval
            self.replies += 1
            pin = self._maybe_pin(group.match, [now] * len(asks), now)
            if pin is not None:
                frames.append(pin)
            return frames, Reply(frame, group.match, answer, names)
        return frames, None

    def _tags(self) -> list[dict[str, Any]]:
        frames = []
        for group in self.groups.values():
            new = group.asks[group.tagged :][:MAX_TAG]
            if new:
                group.tagged += len(new)
                frames.append(
                    {
                        "t": "question",
                        "key": group.match.key[:64],
                        "label": group.match.label[:64],
                        "seqs": [a.seq for a in new],
                        "askers": [a.uid for a in new],  # askers[i] asked seqs[i]
                        "names": [a.name for a in new],  # for the board, in a room too busy to look up
                    }
                )
        return frames

    def _maybe_pin(self, match: Match, replied: list[float], now: float) -> dict[str, Any] | None:
        """Many asked about one product within PIN_EVERY s: pin its card (at most once every
        PIN_EVERY s)."""
        if match.product is None:
            return None
        recent = [t for t in self.demand.get(match.product, []) if now - t < PIN_EVERY] + replied
        self.demand[match.product] = recent[-PIN_ASKERS:]
        if len(recent) < PIN_ASKERS or now - self.last_pin < PIN_EVERY:
            return None
        if self.pinned and self.pinned[-1] == match.product:
            return None
        product = self.catalogue.product(match.product)
        if product is None:
            return None
        self.last_pin = now
        return {"t": "pin", "product": product.card()}
