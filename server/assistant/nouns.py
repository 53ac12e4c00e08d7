"""Which goods a message names, whether or not the catalogue sells them.

"鞋子多少钱" in a room that sells no shoes must not be answered with the price of the product
being discussed: the assistant needs to see that a product noun is there. Chinese nouns come
from jieba's part-of-speech tags plus a list of goods words; jieba splits many compound goods
nouns it does not know (充电宝 -> 充电 + 宝, 暖手宝, 电蚊拍), so pieces that join into a listed
goods word, or a word followed by a goods head character (宝, 器, 机, 杯, 鞋 ...: the character
that says what kind of thing a Chinese compound names), are joined back into one noun. English
ones from a list of goods words. Words for what is asked (price, size, colour...) and
for the room itself (主播, 宝贝, this one) are not product nouns. Nothing here names a product
of a particular catalogue: the caller decides which nouns the catalogue knows.
"""

from __future__ import annotations

import re

import jieba.posseg

from server.assistant.intent import ASPECTS
from server.assistant.text import has_cjk, normalise, noun_stem

# goods jieba does not tag as one noun, or that shoppers abbreviate
GOODS_ZH = frozenset(
    [
        "充电宝",
        "耳机",
        "手机",
        "手机壳",
        "数据线",
        "充电器",
        "音箱",
        "手表",
        "项链",
        "耳环",
        "耳钉",
        "戒指",
        "手链",
        "眼镜",
        "墨镜",
        "帽",
        "帽子",
        "手套",
        "皮带",
        "腰带",
        "钱包",
        "背包",
        "书包",
        "行李箱",
        "雨伞",
        "杯",
        "水杯",
        "保温杯",
        "锅",
        "碗",
        "筷",
        "毛巾",
        "枕头",
        "被子",
        "床单",
        "拖鞋",
        "靴",
        "靴子",
        "凉鞋",
        "高跟鞋",
        "运动鞋",
        "鞋",
        "裤",
        "裙",
        "衬衫",
        "毛衣",
        "羽绒服",
        "夹克",
        "西装",
        "内衣",
        "睡衣",
        "泳衣",
        "香水",
        "精华",
        "粉底",
        "眼影",
        "睫毛膏",
        "面膜",
        "洗面奶",
        "防晒",
        "防晒霜",
        "洗发水",
        "护发素",
        "身体乳",
        "牙膏",
        "牙刷",
        "零食",
        "坚果",
        "咖啡",
        "巧克力",
        "饼干",
        "蜂蜜",
        "大米",
        "玩具",
        "吹风机",
        "卷发棒",
        "电脑",
        "平板",
        "键盘",
        "鼠标",
        "台灯",
        "加湿器",
        "香薰",
        "蜡烛",
        "发夹",
        "发圈",
        "领带",
        "背心",
        "马甲",
        "风衣",
        "棉服",
        "短裤",
        "打底裤",
        "丝袜",
        "胸针",
        "口罩",
        "水壶",
        "茶杯",
        "月饼",
        "粽子",
        "奶粉",
        "尿不湿",
    ]
)
GOODS_EN = frozenset(
    [
        "shoe",
        "boot",
        "heel",
        "sandal",
        "slipper",
        "sneaker",
        "trainer",
        "loafer",
        "jacket",
        "shirt",
        "blouse",
        "top",
        "tshirt",
        "pant",
        "trouser",
        "short",
        "skirt",
        "sweater",
        "jumper",
        "cardigan",
        "vest",
        "hat",
        "cap",
        "beanie",
        "glove",
        "belt",
        "wallet",
        "purse",
        "backpack",
        "handbag",
        "luggage",
        "suitcase",
        "umbrella",
        "watch",
        "ring",
        "necklace",
        "earring",
        "bracelet",
        "glass",
        "sunglass",
        "phone",
        "case",
        "charger",
        "cable",
        "earphone",
        "earbud",
        "headphone",
        "speaker",
        "laptop",
        "tablet",
        "keyboard",
        "mouse",
        "lamp",
        "mug",
        "cup",
        "bottle",
        "pan",
        "pot",
        "knife",
        "towel",
        "pillow",
        "blanket",
        "sheet",
        "perfume",
        "serum",
        "toner",
        "cleanser",
        "mask",
        "shampoo",
        "conditioner",
        "lotion",
        "sunscreen",
        "foundation",
        "mascara",
        "eyeliner",
        "eyeshadow",
        "blush",
        "palette",
        "polish",
        "coffee",
        "snack",
        "chocolate",
        "cookie",
        "biscuit",
        "honey",
        "rice",
        "toy",
        "book",
        "powerbank",
        "jeans",
        "dress",
        "coat",
        "hoodie",
        "scarf",
        "bag",
        "sock",
        "lipstick",
        "cream",
        "tea",
        "suit",
        "pajama",
        "swimsuit",
        "bra",
        "underwear",
        "legging",
        "jumpsuit",
        "blazer",
        "parka",
        "kettle",
        "candle",
        "diffuser",
        "humidifier",
        "hairdryer",
        "straightener",
        "brush",
        "comb",
    ]
)
# nouns that say what is asked or who asks, not which product
NOT_PRODUCT_ZH = frozenset(
    [
        "钱",
        "价",
        "价格",
        "价钱",
        "价位",
        "售价",
        "码",
        "码数",
        "尺码",
        "尺寸",
        "号",
        "号码",
        "颜色",
        "色",
        "色号",
        "货",
        "现货",
        "库存",
        "链接",
        "快递",
        "运费",
        "邮费",
        "主播",
        "直播",
        "直播间",
        "宝贝",
        "宝宝",
        "东西",
        "衣服",
        "商品",
        "款",
        "款式",
        "这款",
        "件",
        "质量",
        "面料",
        "材质",
        "身高",
        "体重",
        "斤",
        "公斤",
        "厘米",
        "优惠",
        "优惠券",
        "券",
        "发票",
        "客服",
        "地址",
        "订单",
        "赠品",
        "小样",
        "福袋",
        "抽奖",
        "保质期",
        "日期",
        "效果",
        "味道",
        "小姐姐",
        "姐妹",
        "家人",
        "大家",
        "朋友",
        "老板",
        "时候",
        "时间",
        "今天",
        "明天",
        "现在",
        "活动",
        "折扣",
        "包装",
        "型号",
        "规格",
        "版型",
        "图",
        "尺码表",
        "米",
        "块",
        "元",
        "人",
        "女生",
        "男生",
        "皮肤",
        "肤色",
        "脸",
        "腿",
        "腰",
        "个子",
        "号数",
        "车",
        "购物车",
        "小黄车",
        "链",
        "哪个",
        "哪款",
        "一下",
        "均码",
        "大码",
        "小码",
        "颜值",
        "效果图",
        "上身",
        "实物",
        "买家",
        "卖家",
        "店",
        "店铺",
        "平台",
        "国内",
        "全国",
        "省",
        "市",
    ]
)
# the last character of a Chinese compound names its kind: 充电宝, 暖手宝, 剃须刀, 电蚊拍
GOODS_HEADS = frozenset("宝器机仪杯壶锅鞋靴裤裙衫衣帽袜包袋箱盒灯镜表链扇伞刀剪拍垫毯枕被巾膏霜乳笔")
_JOIN_FLAGS = ("n", "nz", "ng", "vn", "v", "a", "nr", "b")  # a modifier piece jieba left apart
_EN_WORD = re.compile(r"[a-z]+")
_POS_NOUN = ("n", "nz", "ng", "vn")  # not 'ns' (places: a topic) nor 'nr' (names: "多少钱" at times)
_ASKED = tuple(p for zh, _ in ASPECTS.values() for p in zh)  # "多少钱", "链接": what is asked


def _en_stem(word: str) -> str:
    if word.endswith("ies") and len(word) > 4:
        return word[:-3] + "y"
    if word.endswith(("ses", "xes", "shes", "ches")):
        return word[:-2]
    if word.endswith("s") and not word.endswith("ss") and len(word) > 3:
        return word[:-1]
    return word


def _not_goods(word: str) -> bool:
    return not word or not has_cjk(word) or word in NOT_PRODUCT_ZH or any(a in word for a in _ASKED)


def _pieces(norm: str) -> list[tuple[str, str]]:
    """jieba's (word, flag) pieces with split compound goods nouns joined back: two or three
    pieces that make a listed goods word, or a modifier of 2+ characters and a goods head
    character ("充电" + "宝" -> "充电宝", flag n)."""
    raw = [(p.word.strip(), p.flag) for p in jieba.posseg.lcut(norm) if p.word.strip()]
    out: list[tuple[str, str]] = []
    i = 0
    while i < len(raw):
        for span in (3, 2):
            joined = "".join(w for w, _ in raw[i : i + span])
            if i + span <= len(raw) and joined in GOODS_ZH:
                out.append((joined, "n"))
                i += span
                break
        else:
            word, flag = raw[i]
            nxt = raw[i + 1][0] if i + 1 < len(raw) else ""
            if (
                len(nxt) == 1
                and nxt in GOODS_HEADS
                and len(word) >= 2
                and flag in _JOIN_FLAGS
                and has_cjk(word)
                and not _not_goods(word)
            ):
                out.append((word + nxt, "n"))
                i += 2
            else:
                out.append((word, flag))
                i += 1
    return out


def product_nouns(text: str) -> list[str]:
    """The goods words in a message, in order ("鞋子多少钱" -> ["鞋"], "shoes how much" -> ["shoe"],
    "充电宝多少钱" -> ["充电宝"] although jieba splits it)."""
    norm = normalise(text)
    found: list[str] = []
    if has_cjk(norm):
        for piece, flag in _pieces(norm):
            word = noun_stem(piece)
            if _not_goods(word):
                continue
            solo_head = len(word) == 1 and word in GOODS_HEADS and word != "宝"  # "灯多少钱"
            if word in GOODS_ZH or (flag in _POS_NOUN and (len(word) >= 2 or solo_head)):
                found.append(word)
    for word in _EN_WORD.findall(norm):
        stem = _en_stem(word)
        if stem in GOODS_EN or word in GOODS_EN:
            found.append(stem)
    return list(dict.fromkeys(found))
