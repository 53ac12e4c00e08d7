"""Text to tokens for ranking: jieba words, CJK characters and the pinyin of Chinese words.

Pinyin makes homophone typos (包油 for 包邮) land on the same token; single characters make a
partial word (裙 for 裙子) still count; a noun's suffix 子/儿 is dropped (鞋子 and 鞋 are one
word). English words are case-folded and lightly stemmed.
"""

from __future__ import annotations

import logging
import re
import unicodedata

import jieba
from pypinyin import lazy_pinyin

jieba.setLogLevel(logging.WARNING)

_CJK = re.compile(r"[\u3400-\u9fff]")
_WORD = re.compile(r"^[a-z0-9#][a-z0-9#'.-]*$")
EN_STOP = frozenset(
    [
        "a",
        "an",
        "the",
        "is",
        "are",
        "am",
        "be",
        "it",
        "its",
        "this",
        "that",
        "these",
        "those",
        "i",
        "you",
        "u",
        "we",
        "me",
        "my",
        "your",
        "to",
        "of",
        "for",
        "in",
        "on",
        "at",
        "and",
        "or",
        "do",
        "does",
        "did",
        "can",
        "could",
        "will",
        "would",
        "should",
        "pls",
        "please",
        "plz",
        "hi",
        "hey",
        "hello",
        "so",
        "just",
        "any",
        "there",
        "here",
        "one",
        "how",
        "what",
        "when",
        "which",
        "where",
        "much",
        "many",
        "have",
        "has",
        "get",
        "got",
    ]
)
ZH_STOP = frozenset(
    [
        "的",
        "了",
        "吗",
        "呢",
        "啊",
        "呀",
        "吧",
        "么",
        "嘛",
        "哦",
        "喔",
        "是",
        "这",
        "那",
        "个",
        "这个",
        "那个",
        "一",
        "我",
        "你",
        "他",
        "她",
        "有",
        "没",
        "不",
        "就",
        "也",
        "都",
        "还",
        "在",
        "和",
        "给",
        "什么",
        "怎么",
        "多少",
        "能",
        "可以",
        "请问",
        "主播",
    ]
)


def normalise(text: str) -> str:
    """Full-width to half-width, case-folded, one space between words."""
    return " ".join(unicodedata.normalize("NFKC", text).casefold().split())


def has_cjk(text: str) -> bool:
    return bool(_CJK.search(text))


_VOWELS = frozenset("aeiou")


def plausible_typo(word: str, target: str) -> bool:
    """A one-letter slip, not another word: a vowel swapped for a vowel ("stick" -> "stock",
    "much" -> "mach") makes a different English word far more often than a typo does."""
    if len(word) != len(target):
        return True
    diff = [(a, b) for a, b in zip(word, target, strict=True) if a != b]
    return not (len(diff) == 1 and diff[0][0] in _VOWELS and diff[0][1] in _VOWELS)


def _stem(word: str) -> str:
    if len(word) > 4 and word.endswith("es") and word[-3] in "sxz":
        return word[:-2]
    if len(word) > 3 and word.endswith("s") and not word.endswith("ss"):
        return word[:-1]
    return word


# words whose 子/儿 is part of the meaning, not a noun suffix ("鞋子" is 鞋, "儿子" is not 儿)
_SUFFIX_KEPT = frozenset(
    ["儿子", "女儿", "孩子", "样子", "日子", "妻子", "包子", "婴儿", "这儿", "那儿", "哪儿", "点儿", "会儿"]
)


def noun_stem(word: str) -> str:
    """A Chinese noun without its suffix 子/儿 ("鞋子", "鞋儿" -> "鞋"): shoppers use both forms."""
    if len(word) >= 2 and word[-1] in "子儿" and word not in _SUFFIX_KEPT and has_cjk(word[-2]):
        return word[:-1]
    return word


def pinyin(text: str) -> str:
    """The toneless pinyin of a Chinese phrase in one word ("小白鞋" -> "xiaobaixie")."""
    return "".join(lazy_pinyin(noun_stem(text))).casefold().replace(" ", "")


def initials(text: str) -> str:
    """The pinyin initials of an all-Chinese phrase ("小白鞋" -> "xbx"); "" when not all Chinese."""
    if not text or not all(_CJK.match(ch) for ch in text):
        return ""
    return "".join(py[0] for py in lazy_pinyin(noun_stem(text)) if py)


def teach(phrase: str) -> None:
    """Make jieba keep a catalogue phrase as one word (its dictionary is per process)."""
    phrase = normalise(phrase)
    if has_cjk(phrase) and " " not in phrase:
        jieba.add_word(phrase, freq=100_000)
        jieba.add_word(noun_stem(phrase), freq=100_000)


def words(text: str) -> list[str]:
    """jieba's segmentation of normalised text, punctuation and spaces dropped."""
    out = []
    for piece in jieba.lcut(normalise(text), HMM=False):  # HMM glues unknown characters: "鞋有"
        piece = piece.strip()
        if piece and (has_cjk(piece) or _WORD.match(piece)):
            out.append(piece)
    return out


def tokens(text: str) -> list[str]:
    """Ranking tokens: words (stop words dropped), `py:` pinyin of Chinese words, `c:` characters
    and `p:` their pinyin (a one-character homophone typo keeps most of a word's tokens)."""
    out: list[str] = []
    for word in words(text):
        if has_cjk(word):
            word = noun_stem(word)
            if word not in ZH_STOP:
                out.append(word)
                out.append("py:" + "".join(lazy_pinyin(word)))
            chars = [ch for ch in word if _CJK.match(ch) and ch not in ZH_STOP]
            out.extend("c:" + ch for ch in chars)
            out.extend("p:" + py for py in lazy_pinyin(chars))
        elif word not in EN_STOP:
            out.append(_stem(word))
    return out
