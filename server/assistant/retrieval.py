"""Rank catalogue entries for a question with BM25 (bm25s), one document per phrasing.

Each product name, English name and alias, and each FAQ question, is its own short document, so
a score divided by the document's score against itself says how much of that phrasing the
question covers (1.0: all of it): the confidence the thresholds apply to. English words missing
from the vocabulary are corrected to the nearest known word (rapidfuzz) before ranking.
"""

from __future__ import annotations

from dataclasses import dataclass

import bm25s
import numpy as np
from rapidfuzz import process
from rapidfuzz.distance import OSA

from server.assistant.catalogue import Catalogue
from server.assistant.text import tokens


@dataclass(frozen=True, slots=True)
class Hit:
    kind: str  # "product" or "faq"
    id: str
    confidence: float  # best phrasing's coverage, 0..1
    specific: bool = True  # that phrasing has more than one token (not just "size")


class Index:
    def __init__(self, catalogue: Catalogue) -> None:
        docs: list[tuple[str, str, list[str]]] = []
        for p in catalogue.products:
            for phrase in {p.name, p.name_en, *p.aliases} - {""}:
                docs.append(("product", p.id, tokens(phrase)))
        for f in catalogue.faq:
            for phrase in f.questions:
                docs.append(("faq", f.id, tokens(phrase)))
        self._docs = [(kind, entry, len(set(toks)) > 1) for kind, entry, toks in docs if toks]
        corpus = [toks for _, _, toks in docs if toks]
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
        return found[0] if found else token

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
