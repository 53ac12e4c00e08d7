"""Rank catalogue entries for a question with BM25 (bm25s), one document per phrasing.

Each product name, English name and alias, and each FAQ question, is its own short document, so
a score divided by the document's score against itself says how much of that phrasing the
question covers (1.0: all of it): the confidence the thresholds apply to. A product is also
found by the pinyin of its Chinese names, written out (xiaobaixie) or as initials (xbx), and by
a word of its English name that no other product uses and that is not a colour or a generic
word ("longjing" for "spring Longjing green tea"), or the name written as one word
("powerbank"). English words missing from the vocabulary are corrected to the nearest known
word (rapidfuzz) before ranking.
"""

from __future__ import annotations

import itertools
import logging
from dataclasses import dataclass

import bm25s
import numpy as np
from rapidfuzz import process
from rapidfuzz.distance import OSA

from server.assistant.catalogue import Catalogue, Product
from server.assistant.text import (
    EN_STOP,
    has_cjk,
    initials,
    normalise,
    noun_stem,
    pinyin,
    plausible_typo,
    teach,
    tokens,
)

logging.getLogger("bm25s").setLevel(logging.WARNING)  # bm25s sets DEBUG on import: a line per start

# words of English names that say nothing about which product it is
GENERIC_EN = frozenset(
    [
        "white",
        "black",
        "red",
        "blue",
        "green",
        "yellow",
        "pink",
        "grey",
        "gray",
        "brown",
        "beige",
        "cream",
        "navy",
        "purple",
        "orange",
        "gold",
        "silver",
        "new",
        "classic",
        "premium",
        "spring",
        "summer",
        "winter",
        "autumn",
        "fall",
        "mini",
        "large",
        "small",
        "big",
        "set",
        "pack",
        "pairs",
        "pair",
        "pcs",
        "piece",
        "style",
        "women",
        "men",
        "kids",
        "unisex",
        "with",
        "and",
        "for",
        "the",
        "of",
        "in",
        "high",
        "low",
        "waist",
        "straight",
        "double",
        "faced",
        "lined",
        "face",
        "neck",
        "crew",
        "wide",
        "slim",
        "long",
        "short",
        "soft",
        "light",
        "dark",
        "deep",
        "warm",
        "cool",
        "plus",
        "midi",
        "maxi",
        "matte",
    ]
)
# pinyin initials that are chat words or sizes before they are a product ("bb", "xl")
CHAT_INITIALS = frozenset(
    [
        "ok",
        "hi",
        "no",
        "so",
        "bb",
        "wt",
        "dy",
        "yy",
        "hh",
        "gg",
        "mm",
        "jj",
        "bt",
        "cp",
        "pk",
        "vs",
        "xs",
        "xl",
        "ml",
        "kg",
        "cm",
        "qq",
        "wx",
    ]
)


@dataclass(frozen=True, slots=True)
class Hit:
    kind: str  # "product" or "faq"
    id: str
    confidence: float  # best phrasing's coverage, 0..1
    specific: bool = True  # that phrasing has more than one token (not just "size")


def product_phrases(catalogue: Catalogue, product: Product) -> list[str]:
    """Every phrase that names the product: name, English name, aliases and their pinyin, and
    the English name's distinctive words (see the module docstring)."""
    named = [p for p in (product.name, product.name_en, *product.aliases) if p]
    phrases = list(named)
    for phrase in named:
        if has_cjk(phrase):
            if len(full := pinyin(phrase)) >= 3:
                phrases.append(full)
            short = initials(phrase)
            if short and len(noun_stem(phrase)) >= 2 and short not in EN_STOP and short not in CHAT_INITIALS:
                phrases.append(short)
    if product.name_en:
        others = {
            w
            for other in catalogue.products
            if other.id != product.id
            for phrase in (other.name_en, *other.aliases)
            for w in _en_words(phrase)
        }
        words = _en_words(product.name_en)
        phrases += [w for w in words if w not in others and w not in GENERIC_EN and len(w) >= 3]
        phrases += ["".join(pair) for pair in itertools.pairwise(words)]  # "power bank": "powerbank"
    colours = {normalise(c) for c in (*product.colours, *product.colours_en)}
    return list(dict.fromkeys(p for p in phrases if normalise(p) not in colours))


def _en_words(phrase: str) -> list[str]:
    return [
        w for w in "".join(ch if ch.isalpha() else " " for ch in normalise(phrase)).split() if w.isascii()
    ]


class Index:
    def __init__(self, catalogue: Catalogue) -> None:
        docs: list[tuple[str, str, str, list[str]]] = []
        for p in catalogue.products:
            for phrase in (p.name, *p.aliases):
                teach(phrase)
            for phrase in product_phrases(catalogue, p):
                docs.append(("product", p.id, phrase, tokens(phrase)))
        for f in catalogue.faq:
            for phrase in f.questions:
                docs.append(("faq", f.id, phrase, tokens(phrase)))
        docs = [d for d in docs if d[3]]
        self.phrases = [(kind, entry, phrase) for kind, entry, phrase, _ in docs]  # for `check`
        self._docs = [(kind, entry, len(set(toks)) > 1) for kind, entry, _, toks in docs]
        corpus = [toks for _, _, _, toks in docs]
        self._vocab = sorted({t for toks in corpus for t in toks if t.isascii() and ":" not in t})
        self._bm25 = bm25s.BM25()
        self._bm25.index(corpus, show_progress=False)
        self._self = np.array(
            [max(float(self._bm25.get_scores(toks)[i]), 1e-9) for i, toks in enumerate(corpus)]
        )

    def _correct(self, token: str) -> str:
        """An English typo (`pirce`) becomes the nearest vocabulary word within 1-2 edits (a swap is one)."""
        if len(token) < 4 or not token.isalpha() or token in self._vocab:
            return token
        limit = 1 if len(token) < 7 else 2
        found = process.extractOne(token, self._vocab, scorer=OSA.distance, score_cutoff=limit)
        return found[0] if found and plausible_typo(token, found[0]) else token

    def search(self, text: str) -> list[Hit]:
        """Entries the text mentions, best first (one hit per entry)."""
        query = [self._correct(t) for t in tokens(text)]
        known = [t for t in query if t in self._bm25.vocab_dict]
        if not known:
            return []
        scores = self._bm25.get_scores(known) / self._self
        best: dict[tuple[str, str], Hit] = {}
        for i in np.nonzero(scores > 0)[0]:
            kind, entry, specific = self._docs[i]
            hit = Hit(kind, entry, min(1.0, float(scores[i])), specific)
            known_hit = best.get((kind, entry))
            if known_hit is None or (hit.confidence, hit.specific) > (
                known_hit.confidence,
                known_hit.specific,
            ):
                best[kind, entry] = hit
        return sorted(best.values(), key=lambda h: -h.confidence)
