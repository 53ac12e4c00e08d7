"""Questions no catalogue answers: about the host, the music, or shipping abroad.

"主播多高?" or "how tall is the host?" is a question, and one the host may like to answer; the
catalogue cannot, so the assistant leaves it on the host's board instead of answering it with
whatever product is being discussed. Shipping to another country is answered only by an FAQ of
kind `overseas` (a domestic shipping FAQ does not say whether a parcel goes to Canada).
"""

from __future__ import annotations

import re

from server.assistant.text import normalise

HOST = "host"  # the person streaming
MUSIC = "music"
ABROAD = "abroad"  # shipping to another country or region

_HOST_ZH = re.compile(
    r"(主播|小姐姐|姐姐|模特|你)(的)?(多高|身高|多重|体重|几岁|多大了|年龄|名字|叫什么|哪里人|"
    r"是哪|结婚|男朋友|老公|微信|星座|生日|住哪|在哪里)"
)
_HOST_EN = re.compile(
    r"\b(how (tall|old|heavy) (is|are) (the |our )?(host|streamer|model|she|you)|"
    r"(host|streamer|model)'?s? (name|age|height|weight)|(what'?s|what is) your name|"
    r"where (is|are) (the host|she|you) from|are you (married|single))\b"
)
_MUSIC = re.compile(r"(歌|音乐|bgm|\bsong\b|\bmusic\b|\btune\b|\bplaylist\b)")
_PLACES_ZH = [
    "加拿大",
    "美国",
    "英国",
    "日本",
    "韩国",
    "新加坡",
    "马来西亚",
    "澳大利亚",
    "澳洲",
    "德国",
    "法国",
    "意大利",
    "西班牙",
    "泰国",
    "越南",
    "菲律宾",
    "印尼",
    "印度",
    "俄罗斯",
    "欧洲",
    "美洲",
    "非洲",
    "新西兰",
    "香港",
    "台湾",
    "澳门",
    "海外",
    "国外",
    "境外",
    "迪拜",
]
_PLACES_EN = re.compile(
    r"\b(canada|usa|the us|u\.s\.|america|uk|england|britain|japan|korea|singapore|malaysia|australia|"
    r"germany|france|italy|spain|thailand|vietnam|philippines|indonesia|india|russia|europe|"
    r"new zealand|hong kong|hk|taiwan|macau|dubai|uae|mexico|brazil|overseas|abroad|"
    r"international|internationally)\b"
)
_SEND = re.compile(r"(寄|发|运|邮|快递|送|ship|deliver|send|post|mail)")


def off_catalogue(text: str) -> str | None:
    """HOST, MUSIC or ABROAD when the question is about that, else None."""
    norm = normalise(text)
    if _HOST_ZH.search(norm) or _HOST_EN.search(norm):
        return HOST
    if _MUSIC.search(norm):
        return MUSIC
    abroad = any(p in norm for p in _PLACES_ZH) or _PLACES_EN.search(norm)
    if abroad and _SEND.search(norm):
        return ABROAD
    return None
