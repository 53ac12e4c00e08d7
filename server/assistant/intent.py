"""Is a danmaku a question, and about what aspect of a product (price, size, colour, stock, link,
shipping)? Word lists of how shoppers ask, in Chinese and English, written once for any catalogue:
nothing here names a product.
"""

from __future__ import annotations

import re
import unicodedata
from dataclasses import dataclass, field

from rapidfuzz import process
from rapidfuzz.distance import OSA

from server.assistant.text import has_cjk, normalise, plausible_typo

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
# words that ask about stock only when nothing else is asked ("is it available in red?" is colour)
_WEAK_STOCK = frozenset(["available", "still available", "left"])

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
    "多高",
    "多重",
    "多长",
    "多厚",
    "谁",
)
_EN_START = re.compile(
    r"^(how|what|whats|what's|which|when|where|who|why|is|are|do|does|did|can|could|will|would|should|any|got|u have|you have|have you)\b"
)
_EN_MARKERS = re.compile(r"\b(how much|how many|how long|what|which|when|where|pls|please|plz|wanna know)\b")
_SIZE_TOKEN = re.compile(r"(?<![a-z0-9])(xs|s|m|l|xl|xxl|2xl|3xl|3[4-9]|4[0-4])(?![a-z0-9])\s*(码|号|size)?")
_ZH_SIZE = re.compile(r"(?<!二维)(?<!密)(?<!号)(?<!编)(?<!条)码")  # 码 in a question is a size, not a code
_ZH_TAIL = re.compile(r"(不|没|没有)[?？]?$")  # "缩水不", "有货没": a yes/no question
_ZH_A_NOT_A = re.compile(r"(.)[不没]\1")  # "包不包邮", "是不是", "有没有": a yes/no question
_EXCLAIM = re.compile(r"^(what an?|how (cute|nice|pretty|beautiful|lovely|cool|gorgeous|sweet|great))\b")
# height, weight: "160斤穿什么码" asks for advice, not for the list of sizes
_ADVICE = re.compile(r"\d+\s*(斤|kg|公斤|cm|厘米|lbs?)|身高|体重")
_SHORTHAND = {
    "hw": "how",
    "wat": "what",
    "wot": "what",
    "whats": "what is",
    "u": "you",
    "r": "are",
    "ur": "your",
    "plz": "please",
    "pls": "please",
    "avail": "available",
}
_PARTICLES = re.compile(r"[吗呢啊呀嘛哦么?？!！。.,，~ ]|这个|这件|这款|那个|please|pls")
SHORT_ZH = 1  # characters left once the aspect and product words are taken out: "M码", "价格", "T恤链接"
SHORT_EN = 1  # words left: "price", "link pls", "sizes"


@dataclass(slots=True)
class Intent:
    question: bool
    aspects: list[str] = field(default_factory=list)  # in priority order
    size: str | None = None  # a size named in the question ("M码?")
    lang: str = "en"
    advice: bool = False  # height or weight given: the asker wants a size recommended


# single English words of the lists above: a typo of one of them ("pirce", "shiping") is corrected
_EN_WORDS = sorted(
    {w for _, en in ASPECTS.values() for p in en for w in p.split() if len(w) >= 4}
    | {"what", "which", "when", "where", "much", "many", "please", "available"}
)


def _correct_english(norm: str, known: frozenset[str]) -> str:
    """Shorthand expanded and typos of the word lists corrected; catalogue words ("coat") kept."""
    out = []
    for word in norm.split():
        bare = word.strip("?!.,")
        if bare in _SHORTHAND:
            word = word.replace(bare, _SHORTHAND[bare])
        elif (
            len(bare) >= 4
            and bare.isalpha()
            and bare.isascii()
            and bare not in _EN_WORDS
            and bare not in known
        ):
            found = process.extractOne(bare, _EN_WORDS, scorer=OSA.distance, score_cutoff=1)
            if found is not None and plausible_typo(bare, found[0]):
                word = word.replace(bare, found[0])
        out.append(word)
    return " ".join(out)


def _size(norm: str, original: str, marked: bool, sizes: frozenset[str] = frozenset()) -> str | None:
    """A size named in the text: with 码/号/size, or a multi-letter size (XL), or an upper-case
    S/M/L in a question ("do you have M?"), or a number the catalogue sells as a size in a
    question ("有42吗"); a bare "s" or "m" in English text is not one."""
    for found in _SIZE_TOKEN.finditer(norm):
        token = found.group(1)
        if found.group(2) or (marked and (len(token) > 1 and not token.isdigit())):
            return token.upper()
        if token.isdigit() and (re.search(rf"size\s*{token}", norm) or (marked and token in sizes)):
            return token.upper()
        if marked and len(token) == 1 and re.search(rf"(?<![A-Za-z]){token.upper()}(?![A-Za-z])", original):
            return token.upper()
    return None


def _has_phrase(text: str, phrase: str) -> bool:
    if has_cjk(phrase) or not phrase.isascii():
        return phrase in text
    return re.search(rf"(?<![a-z]){re.escape(phrase)}(?:s|es)?(?![a-z])", text) is not None


def detect(
    text: str,
    products: tuple[str, ...] = (),
    colours: tuple[str, ...] = (),
    sizes: frozenset[str] = frozenset(),
) -> Intent:
    """products, colours, sizes: the catalogue's product phrases, colour and size names (normalised)."""
    norm = normalise(text)
    lang = "zh" if has_cjk(norm) else "en"
    if lang == "en":
        known = frozenset(w for phrase in (*products, *colours) for w in phrase.split())
        norm = _correct_english(norm, known)
    found = {aspect: [p for p in (*zh, *en) if _has_phrase(norm, p)] for aspect, (zh, en) in ASPECTS.items()}
    aspects = [aspect for aspect, phrases in found.items() if phrases]
    if lang == "zh":
        marked = "?" in norm or any(m in norm for m in _ZH_MARKERS) or bool(_ZH_TAIL.search(norm))
        marked = marked or bool(_ZH_A_NOT_A.search(norm))
        norm = _ZH_A_NOT_A.sub(r"\1", norm)  # "包不包邮" asks "包邮?"
        if marked and "size" not in aspects and _ZH_SIZE.search(norm):
            aspects.append("size")
    else:
        marked = "?" in norm or bool(_EN_START.search(norm) or _EN_MARKERS.search(norm))
        if _EXCLAIM.search(norm) and "?" not in norm:
            marked = False
    size = _size(norm, unicodedata.normalize("NFKC", text), marked or bool(aspects), sizes)
    if size is not None and "size" not in aspects:
        aspects.append("size")
    named_colours = [c for c in colours if c and _has_phrase(norm, c)]
    if marked and named_colours and "colour" not in aspects:
        aspects.append("colour")
    if "stock" in aspects and set(found["stock"]) <= _WEAK_STOCK and len(aspects) > 1:
        aspects.remove("stock")  # "is it available in pink?", "what sizes are available": not stock
    rest = norm
    for phrase in sorted(
        {p for ps in found.values() for p in ps} | set(products) | set(named_colours), key=len, reverse=True
    ):
        if phrase:
            rest = rest.replace(phrase, " ")
    if size is not None:
        rest = re.sub(rf"(?<![a-z0-9]){re.escape(size.lower())}(?![a-z0-9])", " ", rest)
    rest = _PARTICLES.sub(" ", rest).replace("码", " ")
    short = len(rest.replace(" ", "")) <= SHORT_ZH if lang == "zh" else len(rest.split()) <= SHORT_EN
    question = marked or (bool(aspects) and short)
    return Intent(question, aspects, size, lang, advice=bool(_ADVICE.search(norm)))
