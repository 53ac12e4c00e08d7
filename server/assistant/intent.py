"""Is a danmaku a question, and about what aspect of a product (price, size, colour, stock, link,
shipping)? Word lists of how shoppers ask, in Chinese and English, written once for any catalogue:
nothing here names a product.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field

from rapidfuzz import process
from rapidfuzz.distance import OSA

from server.assistant.text import has_cjk, normalise

# aspect -> (Chinese phrases found anywhere, English phrases matched on word boundaries)
ASPECTS: dict[str, tuple[tuple[str, ...], tuple[str, ...]]] = {
    "link": (
        (
            "链接",
            "怎么买",
            "怎么拍",
            "在哪买",
            "哪里买",
            "咋买",
            "怎么下单",
            "哪里拍",
            "在哪拍",
            "购物车",
            "小黄车",
            "几号",
        ),
        (
            "link",
            "how to buy",
            "how do i buy",
            "how can i buy",
            "where to buy",
            "where can i buy",
            "where do i buy",
            "url",
            "cart",
            "how to order",
        ),
    ),
    "stock": (
        (
            "有货",
            "现货",
            "库存",
            "还有吗",
            "还有没有",
            "卖完",
            "售罄",
            "没货",
            "断货",
            "抢光",
            "还剩",
            "剩多少",
            "剩几",
        ),
        (
            "in stock",
            "stock",
            "sold out",
            "any left",
            "still available",
            "available",
            "how many left",
            "left",
        ),
    ),
    "price": (
        (
            "多少钱",
            "多钱",
            "几钱",
            "价格",
            "价钱",
            "啥价",
            "什么价",
            "几块",
            "贵不贵",
            "贵吗",
            "怎么卖",
            "价位",
            "售价",
            "到手价",
            "多少米",
            "几米",
            "什么价位",
            "多少一件",
            "咋卖",
        ),
        ("how much", "price", "cost", "pricing", "expensive", "cheap", "priced"),
    ),
    "colour": (
        ("颜色", "什么色", "几个色", "几种色", "色号", "哪些色", "有色"),
        ("colour", "color", "shade", "what colors", "what colours"),
    ),
    "size": (
        (
            "尺码",
            "尺寸",
            "码数",
            "多大码",
            "几码",
            "什么码",
            "码吗",
            "码有",
            "码?",
            "码呢",
            "大码",
            "小码",
            "号码",
            "码还有",
        ),
        ("size", "sizes", "sizing", "sz", "xs", "xxl", "plus size"),
    ),
    "shipping": (
        ("包邮", "邮费", "运费", "免邮", "快递费"),
        ("free shipping", "shipping", "postage", "delivery fee"),
    ),
}
PRODUCT_ASPECTS = ("link", "stock", "price", "colour", "size")

_ZH_MARKERS = (
    "吗",
    "呢",
    "么",
    "嘛",
    "多少",
    "几",
    "什么",
    "啥",
    "怎么",
    "咋",
    "哪",
    "有没有",
    "能不能",
    "可不可以",
    "是不是",
    "会不会",
    "求",
    "问",
    "请问",
    "想知道",
    "如何",
    "多久",
    "多大",
)
_EN_START = re.compile(
    r"^(how|what|whats|what's|which|when|where|who|why|is|are|do|does|did|can|could|will|would|should|any|got|u have|you have|have you)\b"
)
_EN_MARKERS = re.compile(r"\b(how much|how many|how long|what|which|when|where|pls|please|plz|wanna know)\b")
_SIZE_TOKEN = re.compile(r"(?<![a-z0-9])(xs|s|m|l|xl|xxl|2xl|3xl|3[4-9]|4[0-4])(?![a-z0-9])\s*(码|号|size)?")
SHORT_ZH = 6  # characters: "M码", "价格", "链接" alone are questions in a selling room
SHORT_EN = 3  # words: "price?", "link pls"


@dataclass(slots=True)
class Intent:
    question: bool
    aspects: list[str] = field(default_factory=list)  # in priority order
    size: str | None = None  # a size named in the question ("M码?")
    lang: str = "en"


# single English words of the lists above: a typo of one of them ("pirce", "shiping") is corrected
_EN_WORDS = sorted(
    {w for _, en in ASPECTS.values() for p in en for w in p.split() if len(w) >= 4}
    | {"what", "which", "when", "where", "much", "many", "please", "available"}
)


def _correct_english(norm: str) -> str:
    out = []
    for word in norm.split():
        bare = word.strip("?!.,")
        if len(bare) >= 4 and bare.isalpha() and bare.isascii() and bare not in _EN_WORDS:
            found = process.extractOne(bare, _EN_WORDS, scorer=OSA.distance, score_cutoff=1)
            if found is not None:
                word = word.replace(bare, found[0])
        out.append(word)
    return " ".join(out)


def _has_phrase(text: str, phrase: str) -> bool:
    if has_cjk(phrase) or not phrase.isascii():
        return phrase in text
    return re.search(rf"(?<![a-z]){re.escape(phrase)}(?:s|es)?(?![a-z])", text) is not None


def detect(text: str) -> Intent:
    norm = normalise(text)
    lang = "zh" if has_cjk(norm) else "en"
    if lang == "en":
        norm = _correct_english(norm)
    aspects = [
        aspect
        for aspect, (zh, en) in ASPECTS.items()
        if any(_has_phrase(norm, p) for p in zh) or any(_has_phrase(norm, p) for p in en)
    ]
    size_match = _SIZE_TOKEN.search(norm)
    size = None
    if size_match and (size_match.group(2) or "size" in aspects or "?" in norm or "？" in text):
        size = size_match.group(1).upper()
        if "size" not in aspects:
            aspects.append("size")
    marked = "?" in norm or any(m in norm for m in _ZH_MARKERS) if lang == "zh" else False
    if lang == "en":
        marked = "?" in norm or bool(_EN_START.search(norm) or _EN_MARKERS.search(norm))
    short = len(norm.replace(" ", "")) <= SHORT_ZH if lang == "zh" else len(norm.split()) <= SHORT_EN
    question = marked or (bool(aspects) and short)
    return Intent(question=question, aspects=aspects, size=size, lang=lang)
