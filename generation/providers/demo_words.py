"""The demo LLM's words in the languages it writes: English, Japanese, Chinese and Arabic.

It follows the rule the real LLMs are given (prompts in the prompt language, alt text in
the site's language or the theme's), so that an offline site shows it: a Japanese theme's
alt texts are Japanese, its prompts English. Any other language gets English.
"""

from __future__ import annotations

import re

SUBJECTS = [
    "a lone crow",
    "a lighthouse",
    "an old tram",
    "a paper lantern",
    "a mountain shrine",
    "a fox",
    "a koi pond",
    "a market stall",
    "a bamboo grove",
    "a rooftop garden",
    "a fishing boat",
    "a tea house",
    "a stone bridge",
    "a snowy torii gate",
    "a night train",
    "a bicycle",
    "a cat on a windowsill",
    "a field of sunflowers",
    "a glass greenhouse",
    "a harbour crane",
]
STYLES = [
    "watercolour",
    "ukiyo-e woodblock print",
    "35mm film photograph",
    "isometric 3D render",
    "charcoal sketch",
    "oil painting",
    "cel-shaded animation still",
    "linocut",
    "gouache",
    "cinematic still",
]
LIGHTING = [
    "at golden hour",
    "under moonlight",
    "in morning fog",
    "in neon rain",
    "in soft overcast light",
    "at blue hour",
    "in dappled sunlight",
    "by candlelight",
]
COMPOSITIONS = [
    "wide establishing shot",
    "close-up",
    "bird's-eye view",
    "low angle",
    "symmetrical framing",
    "rule-of-thirds composition",
    "silhouette against the sky",
]

# Each English phrase in the other languages, in the same order. The lighting is written
# to stand before its subject (Japanese and Chinese) or after it (Arabic).
WORDS: dict[str, dict[str, list[str]]] = {
    "ja": {
        "subjects": [
            "一羽のカラス",
            "灯台",
            "古い路面電車",
            "提灯",
            "山の神社",
            "キツネ",
            "鯉の池",
            "市場の屋台",
            "竹林",
            "屋上庭園",
            "漁船",
            "茶屋",
            "石橋",
            "雪の鳥居",
            "夜行列車",
            "自転車",
            "窓辺の猫",
            "ひまわり畑",
            "ガラスの温室",
            "港のクレーン",
        ],
        "styles": [
            "水彩画",
            "浮世絵の木版画",
            "35mmフィルム写真",
            "アイソメトリックな3Dレンダリング",
            "木炭スケッチ",
            "油絵",
            "セル画風アニメの一場面",
            "リノカット版画",
            "ガッシュ画",
            "映画のワンシーン",
        ],
        "lighting": [
            "夕日に照らされた",
            "月明かりの下の",
            "朝霧の中の",
            "ネオンの雨の中の",
            "曇り空の柔らかな光の中の",
            "ブルーアワーの",
            "木漏れ日の中の",
            "ろうそくの灯りに照らされた",
        ],
        "compositions": [
            "広角の全景",
            "クローズアップ",
            "俯瞰",
            "ローアングル",
            "左右対称の構図",
            "三分割法の構図",
            "空に浮かぶシルエット",
        ],
    },
    "zh": {
        "subjects": [
            "一只孤独的乌鸦",
            "一座灯塔",
            "一辆老式有轨电车",
            "一盏纸灯笼",
            "一座山间神社",
            "一只狐狸",
            "一方锦鲤池",
            "一个市场摊位",
            "一片竹林",
            "一座屋顶花园",
            "一艘渔船",
            "一间茶馆",
            "一座石桥",
            "一座积雪的鸟居",
            "一列夜行火车",
            "一辆自行车",
            "一只窗台上的猫",
            "一片向日葵田",
            "一座玻璃温室",
            "一台港口起重机",
        ],
        "styles": [
            "水彩画",
            "浮世绘木刻版画",
            "35毫米胶片照片",
            "等轴测3D渲染图",
            "炭笔素描",
            "油画",
            "赛璐璐风格动画截图",
            "麻胶版画",
            "水粉画",
            "电影剧照",
        ],
        "lighting": [
            "金色夕阳下的",
            "月光下的",
            "晨雾中的",
            "霓虹雨中的",
            "柔和阴天光线下的",
            "蓝调时刻的",
            "斑驳阳光下的",
            "烛光下的",
        ],
        "compositions": [
            "广角全景",
            "特写",
            "鸟瞰",
            "低角度",
            "对称构图",
            "三分法构图",
            "天空下的剪影",
        ],
    },
    "ar": {
        "subjects": [
            "غراب وحيد",
            "منارة",
            "ترام قديم",
            "فانوس ورقي",
            "مزار جبلي",
            "ثعلب",
            "بركة أسماك كوي",
            "كشك في السوق",
            "بستان خيزران",
            "حديقة على السطح",
            "قارب صيد",
            "بيت شاي",
            "جسر حجري",
            "بوابة توري مكسوة بالثلج",
            "قطار ليلي",
            "دراجة هوائية",
            "قطة على حافة النافذة",
            "حقل من عباد الشمس",
            "دفيئة زجاجية",
            "رافعة في الميناء",
        ],
        "styles": [
            "لوحة بالألوان المائية",
            "طبعة خشبية على طراز أوكييو-إه",
            "صورة بفيلم 35 مم",
            "تصيير ثلاثي الأبعاد متساوي القياس",
            "رسم بالفحم",
            "لوحة زيتية",
            "لقطة من رسوم متحركة بتظليل مسطح",
            "طبعة لينو",
            "لوحة بألوان الغواش",
            "لقطة سينمائية",
        ],
        "lighting": [
            "في الساعة الذهبية",
            "تحت ضوء القمر",
            "في ضباب الصباح",
            "تحت مطر النيون",
            "في ضوء غائم ناعم",
            "في الساعة الزرقاء",
            "في ضوء الشمس المتسلل بين الأوراق",
            "على ضوء الشموع",
        ],
        "compositions": [
            "لقطة واسعة",
            "لقطة قريبة",
            "منظر من الأعلى",
            "زاوية منخفضة",
            "تكوين متناظر",
            "تكوين بقاعدة الأثلاث",
            "ظل على خلفية السماء",
        ],
    },
}
LANGUAGES = ("en", *WORDS)

# The languages a setting may name, by code or by name (English or their own).
_NAMES = {
    "english": "en",
    "japanese": "ja",
    "日本語": "ja",
    "chinese": "zh",
    "simplified chinese": "zh",
    "traditional chinese": "zh",
    "中文": "zh",
    "简体中文": "zh",
    "繁體中文": "zh",
    "arabic": "ar",
    "العربية": "ar",
    "العربيّة": "ar",
}
_KANA = re.compile("[\u3041-\u3096\u30a1-\u30fa\u31f0-\u31ff\uff66-\uff9d]")
_HAN = re.compile("[\u3400-\u4dbf\u4e00-\u9fff\uf900-\ufaff\U00020000-\U0003134f]")
_ARABIC = re.compile("[\u0600-\u06ff\u0750-\u077f\u08a0-\u08ff\ufb50-\ufdff\ufe70-\ufeff]")


def language_of_setting(value: str) -> str:
    """The demo's language for a setting's value ("ja", "zh-hans", "Japanese", "日本語"),
    or English for one it does not write."""
    value = value.strip().lower()
    code = value.replace("_", "-").split("-")[0]
    if code in LANGUAGES:
        return code
    return _NAMES.get(value, "en")


def language_of_text(text: str) -> str:
    """The language a theme is written in, told by its script: kana are Japanese, Han
    characters without kana Chinese, Arabic letters Arabic, anything else English."""
    if _KANA.search(text):
        return "ja"
    if _HAN.search(text):
        return "zh"
    if _ARABIC.search(text):
        return "ar"
    return "en"


def _word(pool: list[str], english: str, language: str, kind: str) -> str:
    """``english`` (a phrase of ``pool``) in ``language``. A phrase of no pool, a style the
    editor typed, is kept as typed."""
    if language == "en" or english not in pool:
        return english
    return WORDS[language][kind][pool.index(english)]


def prompt(
    language: str, theme: str, subject: str, light: str, composition: str, medium: str
) -> str:
    """A prompt in ``language`` that combines the theme with a subject, light, composition
    and medium (each given in English)."""
    if language == "en":
        return f"{theme}: {subject} {light}, {composition}, {medium}"
    subject = _word(SUBJECTS, subject, language, "subjects")
    light = _word(LIGHTING, light, language, "lighting")
    composition = _word(COMPOSITIONS, composition, language, "compositions")
    medium = _word(STYLES, medium, language, "styles")
    if language == "ja":
        return f"{theme}：{light}{subject}、{composition}、{medium}"
    if language == "zh":
        return f"{theme}：{light}{subject}，{composition}，{medium}"
    return f"{theme}: {subject} {light}، {composition}، {medium}"


def variation_prompt(
    language: str,
    theme: str,
    original: str,
    subject: str,
    light: str,
    composition: str,
    medium: str,
) -> str:
    """A prompt in ``language`` that re-imagines the image ``original`` shows."""
    if language == "en":
        return f"{theme}: {original} re-imagined with {subject} {light}, {composition}, {medium}"
    subject = _word(SUBJECTS, subject, language, "subjects")
    light = _word(LIGHTING, light, language, "lighting")
    composition = _word(COMPOSITIONS, composition, language, "compositions")
    medium = _word(STYLES, medium, language, "styles")
    if language == "ja":
        return f"{theme}：「{original}」に{light}{subject}を加えて描き直す、{composition}、{medium}"
    if language == "zh":
        return f"{theme}：以{light}{subject}重新演绎“{original}”，{composition}，{medium}"
    return f"{theme}: إعادة تخيل «{original}» مع {subject} {light}، {composition}، {medium}"


def alt_text(language: str, theme: str, subject: str, light: str, medium: str) -> str:
    """A literal alt text in ``language``: what the picture shows, then the theme."""
    if language == "en":
        return f"{medium[:1].upper()}{medium[1:]} of {subject} {light}: {theme}"
    subject = _word(SUBJECTS, subject, language, "subjects")
    light = _word(LIGHTING, light, language, "lighting")
    medium = _word(STYLES, medium, language, "styles")
    if language == "ja":
        return f"{light}{subject}を描いた{medium}：{theme}"
    if language == "zh":
        return f"{light}{subject}，{medium}：{theme}"
    return f"{medium} تصور {subject} {light}: {theme}"


def variation_alt_text(
    language: str, theme: str, original: str, subject: str, light: str, medium: str
) -> str:
    """The alt text in ``language`` of a variation of the image ``original`` shows."""
    if language == "en":
        return (
            f"{medium[:1].upper()}{medium[1:]} variation of {original} with {subject} "
            f"{light}: {theme}"
        )
    subject = _word(SUBJECTS, subject, language, "subjects")
    light = _word(LIGHTING, light, language, "lighting")
    medium = _word(STYLES, medium, language, "styles")
    if language == "ja":
        return f"「{original}」に{light}{subject}を加えた{medium}：{theme}"
    if language == "zh":
        return f"加入{light}{subject}的“{original}”变体，{medium}：{theme}"
    return f"{medium}: تنويع على «{original}» مع {subject} {light}: {theme}"
