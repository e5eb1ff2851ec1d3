"""Provider clients, configured by name in ``settings.KARASU``.

    get_llm("claude").expand(theme, count, brief="", style="")
        -> Expansion (ImagePrompt items with .prompt and .alt_text; .usage in tokens)
    get_image_model("flux-schnell").generate(prompt, aspect_ratio="1:1", seed=None)
        -> GeneratedImage
"""

from __future__ import annotations

import functools

from django.conf import settings
from django.utils.module_loading import import_string

from .base import (
    ASPECT_RATIOS,
    LLM,
    MAX_ALT_TEXT_CHARS,
    MAX_PROMPT_CHARS,
    Expansion,
    GeneratedImage,
    ImageModel,
    ImagePrompt,
    TokenUsage,
    alt_text_from_prompt,
    clean_alt_text,
)
from .errors import PermanentProviderError, ProviderError, TransientProviderError

__all__ = [
    "ASPECT_RATIOS",
    "Expansion",
    "GeneratedImage",
    "ImageModel",
    "ImagePrompt",
    "LLM",
    "MAX_ALT_TEXT_CHARS",
    "MAX_PROMPT_CHARS",
    "PermanentProviderError",
    "ProviderError",
    "TokenUsage",
    "TransientProviderError",
    "alt_text_from_prompt",
    "available_image_models",
    "available_llms",
    "clean_alt_text",
    "get_image_model",
    "get_llm",
]


class UnknownProvider(PermanentProviderError):
    pass


def _build(kind: str, name: str):
    config = settings.KARASU[kind]
    if name not in config:
        raise UnknownProvider(f"unknown {kind.lower().replace('_', ' ')[:-1]} {name!r}")
    options = dict(config[name])
    cls = import_string(options.pop("CLASS"))
    if not cls.is_available():
        raise UnknownProvider(f"{name} needs {cls.requires_setting} in the environment")
    return cls(name, **options)


@functools.cache
def get_llm(name: str) -> LLM:
    return _build("LLMS", name)


@functools.cache
def get_image_model(name: str) -> ImageModel:
    return _build("IMAGE_MODELS", name)


def _available(kind: str) -> list[tuple[str, str]]:
    choices = []
    for name, options in settings.KARASU[kind].items():
        if import_string(options["CLASS"]).is_available():
            choices.append((name, options.get("LABEL", name)))
    return choices


def available_llms() -> list[tuple[str, str]]:
    return _available("LLMS")


def available_image_models() -> list[tuple[str, str]]:
    return _available("IMAGE_MODELS")


def reset_cache() -> None:
    """Forget built clients (after settings change, e.g. in tests)."""
    get_llm.cache_clear()
    get_image_model.cache_clear()
