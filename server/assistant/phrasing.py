"""Template answers from catalogue entries, in the asker's language (no LLM needed)."""

from __future__ import annotations

import re

from server.assistant.catalogue import Catalogue, Faq, Product
from server.assistant.text import has_cjk

# how to buy when neither the product nor the shop has a `link`: where every live room sells
BUY_HERE = "点直播间下方的购物车下单 / order from the cart below the video"
# Chinese size words an English answer can still say (sizes_en, when given, wins)
_SIZE_EN = {"均码": "one size", "大码": "plus size", "小码": "small", "中码": "medium", "加大码": "plus size"}
_CJK_RUN = re.compile(r"[\u3400-\u9fff]+")


def money(catalogue: Catalogue, price: float) -> str:
    return f"{catalogue.currency}{int(price) if float(price).is_integer() else f'{price:.2f}'}"


def bilingual(text: str, lang: str) -> str:
    """Catalogue texts may hold "中文 / English": keep the asker's half."""
    zh, sep, en = text.partition(" / ")
    if not sep:
        return text
    return zh.strip() if lang == "zh" else en.strip()


def _name(product: Product, lang: str) -> str:
    return product.name if lang == "zh" or not product.name_en else product.name_en


def _english(values: list[str], known: dict[str, str]) -> list[str]:
    """Catalogue values for an English answer: known words translated, other Chinese dropped
    ("#01 正红" -> "#01"); a value that is only Chinese and unknown is left out."""
    out = []
    for value in values:
        value = known.get(value.strip(), value)
        if has_cjk(value):
            value = " ".join(_CJK_RUN.sub(" ", value).split())
        if value:
            out.append(value)
    return out


def sizes(product: Product, lang: str) -> list[str]:
    if lang == "zh":
        return product.sizes
    return product.sizes_en or _english(product.sizes, _SIZE_EN)


def _colours(product: Product, lang: str) -> list[str]:
    if lang == "zh":
        return product.colours
    return product.colours_en or _english(product.colours, {})


def product_answer(catalogue: Catalogue, product: Product, aspect: str, lang: str, size: str | None) -> str:
    name, zh = _name(product, lang), lang == "zh"
    listed = "/".join(sizes(product, lang))
    sold_out = product.stock == 0
    if aspect == "price":
        price = money(catalogue, product.price)
        extra = (f"，{listed}" if zh else f", {listed}") if listed else ""
        if sold_out:
            extra += "（暂时售罄）" if zh else " (sold out for now)"
        return f"{name} {price}{extra}" if zh else f"{name}: {price}{extra}"
    if aspect == "size":
        if sold_out:  # "do you have 42?" of a sold-out product: no size is available
            return f"{name}暂时售罄（尺码{listed}）" if zh else f"{name} is sold out for now (sizes {listed})"
        if size is not None and product.sizes:
            if size in (s.upper() for s in product.sizes):
                return f"{name}有{size}码（{listed}）" if zh else f"{name} comes in {size} ({listed})"
            return f"{name}没有{size}码，有{listed}" if zh else f"{name}: no {size}, sizes {listed}"
        if not listed:
            return f"{name}只有一个尺码" if zh else f"{name} comes in one size"
        return f"{name}尺码：{listed}" if zh else f"{name} sizes: {listed}"
    if aspect == "colour":
        colours = _colours(product, lang)
        if not colours:
            return f"{name}只有一个款式" if zh else f"{name} comes in one style"
        return f"{name}颜色：{'/'.join(colours)}" if zh else f"{name} colours: {', '.join(colours)}"
    if aspect == "stock":
        if product.stock == 0:
            return f"{name}暂时售罄" if zh else f"{name} is sold out for now"
        return f"{name}有现货，还剩{product.stock}件" if zh else f"{name} in stock: {product.stock} left"
    if aspect == "link":
        link = bilingual(product.link or catalogue.link or BUY_HERE, lang)
        if sold_out:
            return f"{name}暂时售罄（{link}）" if zh else f"{name} is sold out for now ({link})"
        return f"{name}：{link}" if zh else f"{name}: {link}"
    raise ValueError(f"unknown aspect {aspect!r}")


def faq_answer(faq: Faq, lang: str) -> str:
    return bilingual(faq.answer, lang)


def follow_up(answer: str, lang: str) -> str:
    """The answer again for askers who came just after it was given (the server refuses the
    very same answer twice within its repeat window)."""
    return f"同上：{answer}" if lang == "zh" else f"as above: {answer}"


def mention(names: list[str], answer: str) -> str:
    """ "@a @b: answer" (at most 5 names, then "+N")."""
    shown = " ".join(f"@{n}" for n in names[:5])
    if len(names) > 5:
        shown += f" +{len(names) - 5}"
    return f"{shown}: {answer}" if shown else answer
