"""The room's catalogue: products and FAQ pairs, loaded from YAML and edited live by the host."""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml


class CatalogueError(ValueError):
    """The catalogue file cannot be used; the message names the entry and the field."""


# FAQ kinds the assistant treats specially, and the words that give a kind away when an entry
# has no `kind:` (Chinese, English). Kinds are matched on the FAQ's questions and answer.
KINDS: dict[str, tuple[tuple[str, ...], tuple[str, ...]]] = {
    "overseas": (("海外", "国外", "境外", "香港", "台湾", "澳门"), ("overseas", "international", "abroad")),
    "size_advice": (
        ("什么码", "哪个码", "尺码推荐", "推荐尺码", "身高体重", "尺码表", "选码"),
        ("what size should", "size advice", "size chart", "which size"),
    ),
    "returns": (("退货", "退换", "无理由", "退款"), ("return", "refund")),
    "payment": (("支付", "付款", "花呗", "分期", "信用卡"), ("pay", "payment", "instalment", "installment")),
    "restock": (("补货", "到货提醒", "断码"), ("restock", "back in stock")),
    "dispatch": (("发货", "几天发", "多久发"), ("dispatch", "when will it ship", "ships within")),
    "shipping": (("包邮", "运费", "邮费", "免邮", "快递费"), ("free shipping", "shipping cost", "postage")),
}
OTHER = "other"  # an FAQ of no special kind: answered when its questions match, nothing more


def infer_kind(faq_id: str, questions: list[str]) -> str:
    """The kind of an FAQ without `kind:`: its id when the id is a kind (the old, id-based
    behaviour), else the kind whose words its questions use most, else OTHER. (Not the answer:
    "tenfold refund if not genuine" is not a returns policy.)"""
    if faq_id in KINDS:
        return faq_id
    text = " ".join(questions).casefold()
    counts = {kind: sum(w in text for w in (*zh, *en)) for kind, (zh, en) in KINDS.items()}
    best = max(counts, key=lambda k: counts[k])  # ties: the first in KINDS (the more specific)
    return best if counts[best] else OTHER


@dataclass(slots=True)
class Product:
    id: str
    name: str
    name_en: str = ""
    aliases: list[str] = field(default_factory=list)
    price: float = 0.0
    sizes: list[str] = field(default_factory=list)
    sizes_en: list[str] = field(default_factory=list)
    colours: list[str] = field(default_factory=list)
    colours_en: list[str] = field(default_factory=list)
    stock: int = 0
    shipping: str = ""
    link: str = ""

    def card(self) -> dict[str, Any]:
        """The pinned product card (the fields protocol.PRODUCT_FIELDS allows)."""
        card: dict[str, Any] = {"id": self.id, "name": self.name, "price": self.price, "stock": self.stock}
        card.update(sizes=self.sizes[:20], colours=self.colours[:20])
        if self.link:
            card["link"] = self.link[:200]
        return card


@dataclass(slots=True)
class Faq:
    id: str
    questions: list[str]
    answer: str
    kind: str = OTHER  # shipping, size_advice, ... (KINDS), from `kind:` or inferred


@dataclass(slots=True)
class Catalogue:
    products: list[Product]
    faq: list[Faq]
    shop: str = ""
    currency: str = "¥"
    shipping: str = ""
    link: str = ""

    def product(self, product_id: str) -> Product | None:
        return next((p for p in self.products if p.id == product_id), None)

    def faq_of_kind(self, kind: str) -> Faq | None:
        return next((f for f in self.faq if f.kind == kind), None)

    def edit(self, product_id: str, price: float | None = None, stock: int | None = None) -> bool:
        """A host's edit (a `product` event): True when the product exists."""
        product = self.product(product_id)
        if product is None:
            return False
        if price is not None:
            product.price = price
        if stock is not None:
            product.stock = stock
        return True


def _strings(entry: dict[str, Any], key: str, where: str) -> list[str]:
    value = entry.get(key, [])
    if not isinstance(value, list) or not all(isinstance(v, (str, int, float)) for v in value):
        raise CatalogueError(f"{where}: '{key}' must be a list of strings")
    return [str(v) for v in value]


def parse(data: Any) -> Catalogue:
    if not isinstance(data, dict):
        raise CatalogueError("the catalogue must be a map with 'products' and 'faq'")
    products, faq, seen = [], [], set()
    for i, entry in enumerate(data.get("products") or []):
        where = f"products[{i}]"
        if not isinstance(entry, dict) or not isinstance(entry.get("id"), str) or not entry.get("name"):
            raise CatalogueError(f"{where}: needs 'id' and 'name'")
        if entry["id"] in seen:
            raise CatalogueError(f"{where}: duplicate id {entry['id']!r}")
        seen.add(entry["id"])
        price, stock = entry.get("price", 0), entry.get("stock", 0)
        if isinstance(price, bool) or not isinstance(price, (int, float)) or price < 0:
            raise CatalogueError(f"{where}: 'price' must be a number >= 0")
        if isinstance(stock, bool) or not isinstance(stock, int) or stock < 0:
            raise CatalogueError(f"{where}: 'stock' must be an integer >= 0")
        products.append(
            Product(
                id=entry["id"],
                name=str(entry["name"]),
                name_en=str(entry.get("name_en", "")),
                aliases=_strings(entry, "aliases", where),
                price=price,
                sizes=_strings(entry, "sizes", where),
                sizes_en=_strings(entry, "sizes_en", where),
                colours=_strings(entry, "colours", where),
                colours_en=_strings(entry, "colours_en", where),
                stock=stock,
                shipping=str(entry.get("shipping", "")),
                link=str(entry.get("link", "")),
            )
        )
    for i, entry in enumerate(data.get("faq") or []):
        where = f"faq[{i}]"
        if not isinstance(entry, dict) or not isinstance(entry.get("id"), str) or not entry.get("a"):
            raise CatalogueError(f"{where}: needs 'id', 'q' (list) and 'a'")
        questions = _strings(entry, "q", where)
        if not questions:
            raise CatalogueError(f"{where}: 'q' must list at least one question")
        kind = entry.get("kind")
        if kind is not None and (not isinstance(kind, str) or not kind):
            raise CatalogueError(f"{where}: 'kind' must be a word (shipping, size_advice, returns, ...)")
        answer = str(entry["a"])
        kind = kind or infer_kind(entry["id"], questions)
        faq.append(Faq(id=entry["id"], questions=questions, answer=answer, kind=kind))
    if not products and not faq:
        raise CatalogueError("the catalogue has no products and no faq")
    return Catalogue(
        products=products,
        faq=faq,
        shop=str(data.get("shop", "")),
        currency=str(data.get("currency", "¥")),
        shipping=str(data.get("shipping", "")),
        link=str(data.get("link", "")),
    )


def load(path: str | Path) -> Catalogue:
    try:
        data = yaml.safe_load(Path(path).read_text(encoding="utf-8"))
    except (OSError, yaml.YAMLError) as exc:
        raise CatalogueError(f"cannot read {path}: {exc}") from None
    return parse(data)
