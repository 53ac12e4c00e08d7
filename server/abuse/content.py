"""Content checks on danmaku and DMs: Unicode normalisation, banned words, link/contact spam, repeats.

Matching runs on a normalised copy (NFKC, which also folds full-width to
half-width, then case folding, with zero-width/format/control characters and
variation selectors removed) while masking edits the *original* text: the
normaliser keeps, for every normalised character, the index of the original
character it came from.

Banned-words file (``--banned-words PATH``), UTF-8, one entry per line::

    # a comment line; blank lines are ignored
    [reject]
    badword
    [mask]
    darn
    shadow: buy followers

A ``[reject]``/``[mask]``/``[shadow]`` line sets the policy for the entries
below it (before any section: reject); a ``reject:``/``mask:``/``shadow:``
prefix sets it for one entry.

Policies: ``reject`` (the sender gets error 4303), ``mask`` (the matched
characters become ``*``), ``shadow`` (the sender sees the message as if it were
broadcast; nobody else does). When several entries match, the strictest wins
(reject > shadow > mask). Entries made only of ASCII letters and digits match
whole words ("ass" does not match "class"); other entries (Chinese) match
anywhere. The file is re-read when its mtime changes (checked every few
seconds) and on SIGHUP; a file that fails to load keeps the previous list.
"""

from __future__ import annotations

import logging
import os
import re
import unicodedata
from collections import deque
from dataclasses import dataclass
from pathlib import Path

import ahocorasick

log = logging.getLogger("liveroom.abuse.content")

MASK, SHADOW, REJECT = 1, 2, 3
POLICIES = {"mask": MASK, "shadow": SHADOW, "reject": REJECT}
POLICY_NAMES = {v: k for k, v in POLICIES.items()}

# -- normalisation ---------------------------------------------------------------------

_VARIATION = {*range(0xFE00, 0xFE10), *range(0xE0100, 0xE01F0)}
_INVISIBLE = {0x115F, 0x1160, 0x3164, 0xFFA0, 0x034F, 0x180E}  # fillers that render as nothing
_CHAR_CACHE: dict[str, str] = {}
_CHAR_CACHE_MAX = 1 << 16


def _fold_char(ch: str) -> str:
    """The normalised form of one character ('' when it is invisible)."""
    cached = _CHAR_CACHE.get(ch)
    if cached is not None:
        return cached
    code = ord(ch)
    if code in _VARIATION or code in _INVISIBLE or unicodedata.category(ch) in ("Cf", "Cc", "Cs"):
        folded = ""
    else:
        folded = unicodedata.normalize("NFKC", ch).casefold()
        if not folded.isascii():  # NFKC may yield invisible or format characters too
            folded = "".join(c for c in folded if unicodedata.category(c) not in ("Cf", "Cc"))
    if len(_CHAR_CACHE) < _CHAR_CACHE_MAX:
        _CHAR_CACHE[ch] = folded
    return folded


def normalise(text: str) -> tuple[str, list[int] | None]:
    """(normalised text, original index of each normalised char); None means the identity map.

    ASCII text (most danmaku in Latin scripts) only needs lower-casing, which
    keeps positions, so it takes a fast path with no per-character work.
    """
    if text.isascii():
        return text.lower(), None
    out: list[str] = []
    index: list[int] = []
    for i, ch in enumerate(text):
        folded = _fold_char(ch)
        if folded:
            out.append(folded)
            index.extend([i] * len(folded))
    return "".join(out), index


# -- banned words --------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class Verdict:
    """What the filter decided: policy 0 means clean; text is the (maybe masked) original."""

    policy: int
    text: str

    @property
    def name(self) -> str:
        return POLICY_NAMES.get(self.policy, "clean")


def parse_word_list(lines: list[str]) -> list[tuple[str, int]]:
    """(normalised word, policy) for each entry; see the module docstring for the format."""
    entries: list[tuple[str, int]] = []
    policy = REJECT
    for lineno, raw in enumerate(lines, 1):
        line = raw.strip()
        if not line or line.startswith("#"):
            continue
        if line.startswith("[") and line.endswith("]"):
            name = line[1:-1].strip().lower()
            if name not in POLICIES:
                raise ValueError(f"line {lineno}: unknown section {line!r} (reject, mask, shadow)")
            policy = POLICIES[name]
            continue
        word_policy = policy
        prefix, sep, rest = line.partition(":")
        if sep and prefix.strip().lower() in POLICIES:
            word_policy, line = POLICIES[prefix.strip().lower()], rest.strip()
        word, _ = normalise(line)
        if word:
            entries.append((word, word_policy))
    return entries


def _is_word_char(ch: str) -> bool:
    return ch.isascii() and ch.isalnum()


class WordFilter:
    """An Aho-Corasick automaton over the normalised entries, swapped whole on reload."""

    def __init__(self, entries: list[tuple[str, int]] | None = None) -> None:
        self.size = 0
        self._automaton: ahocorasick.Automaton | None = None
        if entries:
            self._build(entries)

    def _build(self, entries: list[tuple[str, int]]) -> None:
        automaton = ahocorasick.Automaton()
        for word, policy in entries:
            whole = all(_is_word_char(c) for c in word)
            previous = automaton.get(word, None)
            if previous is None or previous[1] < policy:
                automaton.add_word(word, (len(word), policy, whole))
        automaton.make_automaton()
        self._automaton, self.size = automaton, len(automaton)

    def check(self, text: str, norm: str | None = None, index: list[int] | None = None) -> Verdict:
        """Match on the normalised text; mask by original positions."""
        automaton = self._automaton
        if automaton is None:
            return Verdict(0, text)
        if norm is None:
            norm, index = normalise(text)
        worst = 0
        spans: list[tuple[int, int]] = []
        end_max = len(norm) - 1
        for end, (length, policy, whole) in automaton.iter(norm):
            start = end - length + 1
            if whole and (
                (start > 0 and _is_word_char(norm[start - 1]))
                or (end < end_max and _is_word_char(norm[end + 1]))
            ):
                continue
            if policy > worst:
                worst = policy
            if policy == MASK:
                spans.append((start, end))
        if worst != MASK:
            return Verdict(worst, text)
        chars = list(text)
        for start, end in spans:
            first = index[start] if index is not None else start
            last = index[end] if index is not None else end
            for i in range(first, last + 1):
                if not chars[i].isspace():
                    chars[i] = "*"
        return Verdict(MASK, "".join(chars))


class WordList:
    """A WordFilter loaded from a file, reloaded when the file changes (or on demand)."""

    def __init__(self, path: str | None) -> None:
        self.path = Path(path) if path else None
        self.filter = WordFilter()
        self._mtime: float | None = None
        if self.path is not None:
            self.reload(strict=True)

    def reload(self, strict: bool = False) -> bool:
        """Re-read the file; on error keep the previous list (raise instead when strict)."""
        if self.path is None:
            return False
        try:
            mtime = os.stat(self.path).st_mtime
            entries = parse_word_list(self.path.read_text(encoding="utf-8").splitlines())
            new = WordFilter(entries)
        except (OSError, ValueError, UnicodeDecodeError) as exc:
            if strict:
                raise ValueError(f"banned words {self.path}: {exc}") from exc
            log.error("banned words %s not reloaded: %s", self.path, exc)
            return False
        self.filter, self._mtime = new, mtime
        log.info("banned words loaded from %s: %d entries", self.path, new.size)
        return True

    def maybe_reload(self) -> bool:
        """Reload when the file's mtime changed; a stat call, cheap enough for a periodic task."""
        if self.path is None:
            return False
        try:
            mtime = os.stat(self.path).st_mtime
        except OSError:
            return False
        return mtime != self._mtime and self.reload()


# -- link and contact spam ---------------------------------------------------------------------

_TLDS = "com|net|org|cn|io|xyz|top|cc|me|tv|ly|gg|link|site|vip|club|info|co|ru|app|shop|live|pw|biz"
_LINK = re.compile(
    r"https?://|www\.|\b[a-z0-9][a-z0-9-]*\.(?:" + _TLDS + r")\b(?:/|\b)"
    r"|(?:wx|vx|v信|微信|威信|薇信|weixin|wechat|加v|加微|扣扣|企鹅|qq)\s*(?:号|id)?\s*[:=]?\s*[a-z0-9_-]{5,}"
)
_DIGITS = re.compile(r"\+?\d(?:[\s.\-]?\d){6,}")


def has_contact_spam(norm: str) -> bool:
    """URLs, domain names, WeChat/QQ ids and phone numbers in normalised text.

    Digit runs count as phone numbers only with at least four distinct digits,
    so that cheering ("6666666", "88888888") is not taken for a phone number.
    """
    if _LINK.search(norm) is not None:
        return True
    for match in _DIGITS.finditer(norm):
        digits = {c for c in match.group() if c.isdigit()}
        if len(digits) >= 4:
            return True
    return False


# -- repeats --------------------------------------------------------------------------------------

_NON_WORD = re.compile(r"[\W_]+")
_RUNS = re.compile(r"(.)\1+")


def fingerprint(norm: str) -> int:
    """Equal for near-same texts: punctuation and spacing dropped, repeated characters collapsed."""
    core = _RUNS.sub(r"\1", _NON_WORD.sub("", norm))
    return hash(core or norm)


class RepeatTracker:
    """The last few fingerprints of one user's texts, to refuse the same text said too often."""

    __slots__ = ("_recent",)

    def __init__(self, keep: int = 8) -> None:
        self._recent: deque[tuple[int, float]] = deque(maxlen=keep)

    def check(self, fp: int, now: float, window: float, allowed: int) -> float:
        """0.0 and record when fewer than `allowed` equal texts fall in the window; else seconds to wait."""
        same = [t for f, t in self._recent if f == fp and now - t < window]
        if len(same) >= allowed:
            return max(0.001, window - (now - same[-allowed]))
        self._recent.append((fp, now))
        return 0.0

    def idle(self, now: float, window: float) -> bool:
        """Nothing recent enough to matter: the tracker can be forgotten."""
        return not self._recent or now - self._recent[-1][1] >= window
