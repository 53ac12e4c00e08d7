"""Template answers from catalogue entries, in the asker's language (no LLM needed)."""

from __future__ import annotations

from server.assistant.catalogue import Catalogue, Faq, Product


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


def _colours(product: Product, lang: str) -> list[str]:
    return product.colours_en if lang == "en" and product.colours_en else product.colours


def product_answer(catalogue: Catalogue, product: Product, aspect: str, lang: str, size: str | None) -> str:
    name, zh = _name(product, lang), lang == "zh"
    sizes = "/".join(product.sizes)
    if aspect == "price":
        price = money(catalogue, product.price)
        extra = f"，{sizes}" if zh else f", {sizes}"
        if product.stock == 0:
            extra += "（暂时售罄）" if zh else " (sold out for now)"
        return f"{name} {price}{extra if sizes else ''}" if zh else f"{name}: {price}{extra if sizes else ''}"
    if aspect == "size":
        if size is not None and product.sizes:
            if size in (s.upper() for s in product.sizes):
                return f"{name}有{size}码（{sizes}）" if zh else f"{name} comes in {size} ({sizes})"
            return f"{name}没有{size}码，有{sizes}" if zh else f"{name}: no {size}, sizes {sizes}"
        return f"{name}尺码：{sizes}" if zh else f"{name} sizes: {sizes}"
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
        link = bilingual(product.link or catalogue.link, lang)
        return f"{name}：{link}" if zh else f"{name}: {link}"
    raise ValueError(f"unknown aspect {aspect!r}")


def faq_answer(faq: Faq, lang: str) -> str:
    return bilingual(faq.answer, lang)


def mention(names: list[str], answer: str) -> str:
    """ "@a @b: answer" (at most 5 names, then "+N")."""
    shown = " ".join(f"@{n}" for n in names[:5])
    if len(names) > 5:
        shown += f" +{len(names) - 5}"
    return f"{shown}: {answer}" if shown else answer
