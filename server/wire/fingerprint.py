"""When two answers are "the same": shared by the server's reply throttle and the assistant."""

from __future__ import annotations

import unicodedata


def answer_fingerprint(text: str) -> str:
    """What makes two answers "the same": the text without mentions, case, spaces and punctuation."""
    words = [w for w in text.split() if not w.startswith("@")]
    folded = unicodedata.normalize("NFKC", " ".join(words)).casefold()
    return "".join(ch for ch in folded if ch.isalnum())
