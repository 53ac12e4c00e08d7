"""Text to tokens for ranking: jieba words, CJK characters and the pinyin of Chinese words.

Pinyin makes homophone typos (包油 for 包邮) land on the same token; single characters make a
partial word (裙 for 裙子) still count. English words are case-folded and lightly stemmed.
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


def _stem(word: str) -> str:
    if len(word) > 4 and word.endswith("es") and word[-3] in "sxz":
        return word[:-2]
    if len(word) > 3 and word.endswith("s") and not word.endswith("ss"):
        return word[:-1]
    return word


def words(text: str) -> list[str]:
    """jieba's segmentation of normalised text, punctuation and spaces dropped."""
    out = []
    for piece in jieba.lcut(normalise(text)):
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
            if word not in ZH_STOP:
                out.append(word)
                out.append("py:" + "".join(lazy_pinyin(word)))
            chars = [ch for ch in word if _CJK.match(ch) and ch not in ZH_STOP]
            out.extend("c:" + ch for ch in chars)
            out.extend("p:" + py for py in lazy_pinyin(chars))
        elif word not in EN_STOP:
            out.append(_stem(word))
    return out
