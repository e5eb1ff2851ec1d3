"""Offline providers: a deterministic prompt writer here (its words in ``demo_words``), and
an image model (``demo_images``) that renders with Pillow (``demo_render``).

They make the whole pipeline runnable without keys, and their knobs (latency, transient
failures, content-policy rejections, concurrency, image size and format) drive load, chaos
and benchmark runs.
"""

from __future__ import annotations

import itertools
import random

from . import demo_words
from .base import LLM, PromptBatch

# The image model and its rendering live in their own modules. Their names stay importable
# from here, where settings and tests have always found them.
from .demo_images import (
    EXPIRES_AFTER,
    FORMATS,
    MAX_CONSECUTIVE_FAILURES,
    MAX_SIZE,
    MIN_SIZE,
    PURGE_EVERY,
    REQUEST_ID,
    WAIT_STEP,
    DemoImageModel,
    _fraction,
    _write_atomically,
    call_key,
    default_state_dir,
)
from .demo_render import (
    _PLAIN_PUNCTUATION,
    DEFAULT_SIZE,
    NOISE_AMPLITUDE,
    NOISE_ROWS,
    SIZES,
    Writable,
    _add_detail,
    _caption,
    _caption_font,
    _encode,
    _noise_band,
    drawable_caption,
    edit_into,
    image_size,
    render,
    render_into,
)
from .demo_words import (
    COMPOSITIONS,
    LIGHTING,
    STYLES,
    SUBJECTS,
    language_of_setting,
    language_of_text,
)
from .prompting import configured_languages

__all__ = [
    "COMPOSITIONS",
    "DEFAULT_SIZE",
    "EXPIRES_AFTER",
    "FORMATS",
    "LIGHTING",
    "MAX_CONSECUTIVE_FAILURES",
    "MAX_SIZE",
    "MIN_SIZE",
    "NOISE_AMPLITUDE",
    "NOISE_ROWS",
    "PURGE_EVERY",
    "REQUEST_ID",
    "SIZES",
    "STYLES",
    "SUBJECTS",
    "WAIT_STEP",
    "DemoImageModel",
    "DemoLLM",
    "Writable",
    "_PLAIN_PUNCTUATION",
    "_add_detail",
    "_caption",
    "_caption_font",
    "_encode",
    "_fraction",
    "_noise_band",
    "_short",
    "_write_atomically",
    "call_key",
    "default_state_dir",
    "drawable_caption",
    "edit_into",
    "image_size",
    "render",
    "render_into",
]


class DemoLLM(LLM):
    """Combines the theme with subjects, lighting, composition and styles into distinct,
    readable prompts.

    Each prompt's alt text says literally what it combines (style, subject, light, theme),
    and no tokens are used. With a ``source`` (variations of an image), each prompt
    re-imagines that image with one of the subjects added, and names it. It follows the
    real LLMs' language rule in the languages it knows (``demo_words``): prompts in
    KARASU_PROMPT_LANGUAGE, alt texts in KARASU_ALT_TEXT_LANGUAGE or else in the theme's
    language, told by its script.
    """

    batch_size = 500

    def request_prompts(
        self,
        theme: str,
        count: int,
        *,
        brief: str,
        style: str,
        avoid: list[str],
        source: str = "",
        angle: str = "",
    ) -> PromptBatch:
        languages = configured_languages()
        in_prompts = language_of_setting(languages.prompts)
        in_alt_texts = (
            language_of_setting(languages.alt_text)
            if languages.alt_text
            else language_of_text(theme)
        )
        pools = [SUBJECTS, LIGHTING, COMPOSITIONS] + ([] if style else [STYLES])
        combos = list(itertools.product(*pools))
        seed = f"{theme}|{source}|{len(avoid)}" if source else f"{theme}|{len(avoid)}"
        rng = random.Random(f"{seed}|{angle}" if angle else seed)
        original = _short(source)
        items = []
        for combo in rng.sample(combos, min(count, len(combos))):
            subject, light, composition, *look = combo
            medium = style or look[0]
            if source:
                items.append(
                    {
                        "prompt": demo_words.variation_prompt(
                            in_prompts, theme, original, subject, light, composition, medium
                        ),
                        "alt_text": demo_words.variation_alt_text(
                            in_alt_texts, theme, original, subject, light, medium
                        ),
                    }
                )
                continue
            items.append(
                {
                    "prompt": demo_words.prompt(
                        in_prompts, theme, subject, light, composition, medium
                    ),
                    "alt_text": demo_words.alt_text(in_alt_texts, theme, subject, light, medium),
                }
            )
        return PromptBatch(items)


def _short(text: str, limit: int = 60) -> str:
    """A source description short enough to quote in a prompt."""
    text = " ".join(text.split()).split(". Prompt: ")[0]
    return text if len(text) <= limit else text[: limit - 1].rsplit(" ", 1)[0] + "…"
