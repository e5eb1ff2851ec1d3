"""The text of prompts: cleaning the LLM's prompts and alt texts, and the prompts, angles,
schema and languages that every LLM is asked with."""

from __future__ import annotations

import re
import unicodedata
from dataclasses import dataclass
from typing import Any

from django.conf import settings
from django.utils.translation import get_language_info

MAX_PROMPT_CHARS = 1000
MIN_PROMPT_WORDS = 3
# An image's alt text (its Wagtail description) is kept short enough for a screen reader,
# and within the description field's 255 characters.
MAX_ALT_TEXT_CHARS = 250
# Scripts written without spaces between words (Han, kana), in which a prompt's words are
# counted by characters.
_UNSPACED = re.compile(
    "[\u3005-\u3007\u3041-\u3096\u309d-\u309f\u30a1-\u30fa\u30fc-\u30ff\u31f0-\u31ff"
    "\u3400-\u4dbf\u4e00-\u9fff\uf900-\ufaff\uff66-\uff9f\U00020000-\U0003134f]"
)
# Thai, Lao, Myanmar (Burmese) and Khmer, also written without spaces between words.
_UNSPACED_ALPHABETS = re.compile("[\u0e00-\u0eff\u1000-\u109f\u1780-\u17ff]")


@dataclass(frozen=True)
class ImagePrompt:
    """One prompt and the alt text of the image it will make.

    The alt text is always usable. When it is blank or missing, it is derived from the
    prompt, and when it is too long, it is cut at a word to ``MAX_ALT_TEXT_CHARS``.
    """

    prompt: str
    alt_text: str = ""

    def __post_init__(self) -> None:
        object.__setattr__(self, "alt_text", clean_alt_text(self.alt_text, self.prompt))


# Each call of an expansion that runs beside others gets its own angle on the theme, so
# that parallel calls, which cannot see each other's answers, write different prompts.
ANGLES = [
    "wide establishing views of places",
    "close-up details and textures",
    "people and daily life",
    "animals and nature",
    "night and artificial light",
    "weather and seasons",
    "architecture and interiors",
    "objects and still life",
    "motion and action",
    "quiet, minimal compositions",
    "historical or traditional takes",
    "playful, whimsical takes",
    "aerial and high viewpoints",
    "low viewpoints and silhouettes",
    "reflections, water and glass",
    "crowds and festivals",
    "abstract and graphic takes",
    "food, craft and markets",
    "dawn and dusk",
    "unusual materials and media",
]


def angle_for(number: int) -> str:
    """The angle of call ``number``. Beyond the list, the angles repeat with a part
    number."""
    angle = ANGLES[number % len(ANGLES)]
    rounds = number // len(ANGLES)
    return f"{angle} (variant {rounds + 1})" if rounds else angle


def word_count(text: str) -> int:
    """The words of ``text``: those between spaces, and in scripts that put no spaces
    between words, one for every two characters in Chinese or Japanese and one for every
    four in Thai, Lao, Burmese or Khmer, whose words are longer (vowel signs included)."""
    count = 0
    for token in text.split():
        unspaced = len(_UNSPACED.findall(token)) // 2 + len(_UNSPACED_ALPHABETS.findall(token)) // 4
        count += max(1, unspaced)
    return count


def normalise(prompt: str) -> str:
    """The form that two prompts are compared in. Case and punctuation are ignored, and the
    letters of every script are kept, so a Japanese prompt is not reduced to nothing."""
    return re.sub(r"[\W_]+", " ", prompt.casefold()).strip()


def _one_line(text: str) -> str:
    """``text`` with its whitespace collapsed and its control characters dropped
    (PostgreSQL refuses NUL)."""
    text = "".join(" " if unicodedata.category(c) == "Cc" else c for c in text)
    return " ".join(text.split())


def _cut(text: str, limit: int) -> str:
    """``text`` within ``limit`` characters, cut at a word and marked with an ellipsis."""
    if len(text) <= limit:
        return text
    head = text[: limit - 1]
    if " " in head:
        head = head.rsplit(" ", 1)[0]
    return head.rstrip(" ,;:-") + "…"


def alt_text_from_prompt(prompt: str) -> str:
    """A literal alt text for when the LLM wrote none. It is the prompt's first sentence,
    which names the subject and the setting, without a trailing full stop."""
    text = _one_line(prompt)
    first = re.split(r"(?<=[.!?])\s+|(?<=[。！？])", text, maxsplit=1)[0]
    if word_count(first) >= MIN_PROMPT_WORDS:
        text = first
    text = _cut(text.rstrip(" .。"), MAX_ALT_TEXT_CHARS)
    return text[:1].upper() + text[1:] if text else "Generated image"


def clean_alt_text(alt_text: Any, prompt: str) -> str:
    """The LLM's alt text on one line and at most MAX_ALT_TEXT_CHARS long. It is derived
    from the prompt when it is missing or blank, so that an image never goes without one."""
    text = _one_line(alt_text) if isinstance(alt_text, str) else ""
    if not text:
        return alt_text_from_prompt(prompt)
    return _cut(text, MAX_ALT_TEXT_CHARS)


def clean_prompts(raw: list[Any]) -> list[ImagePrompt]:
    """Drop malformed items and near-empty prompts, trim each prompt to a sane length, and
    give each a valid alt text."""
    cleaned = []
    for item in raw:
        if isinstance(item, dict):
            text, alt_text = item.get("prompt"), item.get("alt_text")
        else:
            text, alt_text = item, ""
        if not isinstance(text, str):
            continue
        # Control characters are dropped, NUL included, which PostgreSQL refuses.
        prompt = _one_line(text)
        if word_count(prompt) < MIN_PROMPT_WORDS:
            continue
        if len(prompt) > MAX_PROMPT_CHARS:
            prompt = prompt[:MAX_PROMPT_CHARS].rsplit(" ", 1)[0]
        cleaned.append(ImagePrompt(prompt, alt_text))
    return cleaned


@dataclass(frozen=True)
class Languages:
    """The languages an LLM writes in: ``prompts`` for the image model, and ``alt_text``
    for the site's readers ("" for the language of each theme). Both are names an LLM
    understands ("English", "Japanese")."""

    prompts: str = "English"
    alt_text: str = ""

    def alt_text_rule(self) -> str:
        if self.alt_text:
            return f"in {self.alt_text}, the language of the site that publishes the images"
        return (
            "in the language the theme is written in (a Japanese theme gets Japanese alt "
            "text, an Arabic one Arabic alt text), because the site's readers share it"
        )


# Codes Django's language table does not know, by their names.
_LANGUAGE_NAMES = {"zh": "Chinese", "zh-cn": "Simplified Chinese", "zh-tw": "Traditional Chinese"}


def language_name(value: str) -> str:
    """The name an LLM is told for a setting's language: a code Django knows ("ja",
    "zh-hans", "pt-br") becomes its English name, and anything else (a name such as
    "Swiss German") is kept as written."""
    value = value.strip()
    if not value:
        return ""
    if value.lower() in _LANGUAGE_NAMES:
        return _LANGUAGE_NAMES[value.lower()]
    try:
        return get_language_info(value.lower())["name"]
    except KeyError:
        return value


def configured_languages() -> Languages:
    """The languages from the settings: KARASU_PROMPT_LANGUAGE (English unless set) and
    KARASU_ALT_TEXT_LANGUAGE (unset: each theme's own)."""
    karasu = settings.KARASU
    return Languages(
        prompts=language_name(karasu.get("PROMPT_LANGUAGE", "")) or "English",
        alt_text=language_name(karasu.get("ALT_TEXT_LANGUAGE", "")),
    )


def system_prompt(languages: Languages | None = None) -> str:
    languages = languages or configured_languages()
    return (
        "You write prompts for a text-to-image model. Given a theme, write distinct, "
        "concrete, visual prompts: each names a subject, setting, composition, lighting and "
        "style in one or two sentences. No numbering, no commentary, no text overlays. "
        f"Write every prompt in {languages.prompts}, whatever the language of the theme, "
        f"because the image model follows {languages.prompts} best. "
        "For each prompt also write its alt text: one short, literal sentence (at most "
        f"{MAX_ALT_TEXT_CHARS} characters) saying what the picture shows, for someone who "
        "cannot see it; no 'image of', no camera or style jargon. "
        f"Write every alt text {languages.alt_text_rule()}."
    )


def user_prompt(
    theme: str,
    count: int,
    brief: str,
    style: str,
    avoid: list[str],
    source: str = "",
    angle: str = "",
) -> str:
    parts = [f"Theme: {theme}", f"Write exactly {count} prompts, each with its alt text."]
    if angle:
        parts.append(
            "Other writers cover other angles of this theme at the same time; keep to this "
            f"one so that no prompt repeats theirs: {angle}."
        )
    if source:
        parts.append(
            "These are variations of an existing image, made by an image-editing model from "
            f"that image. It shows: {source}\nEach prompt is an edit instruction for it: keep "
            "its main subject recognisable and vary the setting, lighting, composition or "
            "style. Each alt text describes the resulting picture."
        )
    if brief:
        parts.append(f"Brief: {brief}")
    if style:
        parts.append(f"Visual style for every prompt: {style}")
    if avoid:
        parts.append("Make them clearly different from these existing prompts:")
        parts.extend(f"- {prompt}" for prompt in avoid)
    return "\n".join(parts)


def prompts_schema(count: int, languages: Languages | None = None) -> dict:
    languages = languages or configured_languages()
    alt_language = languages.alt_text or "the language of the theme"
    # There is no maxLength, because strict schemas (Claude's tools, OpenAI's json_schema) do
    # not accept string-length bounds. The limit is stated here and enforced by
    # clean_alt_text.
    return {
        "type": "object",
        "properties": {
            "prompts": {
                "type": "array",
                "items": {
                    "type": "object",
                    "properties": {
                        "prompt": {
                            "type": "string",
                            "description": f"The image prompt, in {languages.prompts}.",
                        },
                        "alt_text": {
                            "type": "string",
                            "description": (
                                "Alt text for the image: a short, literal description of "
                                f"what it shows, in {alt_language}, at most "
                                f"{MAX_ALT_TEXT_CHARS} characters."
                            ),
                        },
                    },
                    "required": ["prompt", "alt_text"],
                    "additionalProperties": False,
                },
                "description": f"Exactly {count} distinct image prompts with their alt texts.",
            }
        },
        "required": ["prompts"],
        "additionalProperties": False,
    }
