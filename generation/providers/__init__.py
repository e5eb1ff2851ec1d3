"""Provider clients, configured by name in ``settings.KARASU``.

get_llm("claude").expand(theme, count, brief="", style="")
    -> Expansion (ImagePrompt items with .prompt and .alt_text; .usage in tokens)
get_image_model("flux-schnell").generate(prompt, aspect_ratio="1:1", seed=None)
    -> GeneratedImage
get_image_model("nano-banana-edit").edit(prompt, SourceImage(...), aspect_ratio, seed)
    -> GeneratedImage (models that can edit: image_model_can_edit(name))
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
    SourceImage,
    TokenUsage,
    alt_text_from_prompt,
    clean_alt_text,
)
from .errors import NotCalled, PermanentProviderError, ProviderError, TransientProviderError

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
    "SourceImage",
    "TokenUsage",
    "TransientProviderError",
    "alt_text_from_prompt",
    "available_image_models",
    "available_llms",
    "clean_alt_text",
    "get_image_model",
    "get_llm",
    "image_model_can_edit",
    "image_model_can_generate",
]


class UnknownProvider(NotCalled):
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


def _available(kind: str, editing: bool | None = None) -> list[tuple[str, str]]:
    choices = []
    for name, options in settings.KARASU[kind].items():
        cls = import_string(options["CLASS"])
        if not cls.is_available():
            continue
        if editing is True and not cls.can_edit(options):
            continue
        if editing is False and not cls.can_generate(options):
            continue
        choices.append((name, options.get("LABEL", name)))
    return choices


def available_llms() -> list[tuple[str, str]]:
    return _available("LLMS")


def available_image_models(editing: bool | None = None) -> list[tuple[str, str]]:
    """The image models that can be used: all of them (``editing`` None), those that can
    edit an image (True: for variations of a source image), or those that make an image
    from a prompt alone (False)."""
    return _available("IMAGE_MODELS", editing)


def _capability(name: str, method: str) -> bool:
    options = settings.KARASU["IMAGE_MODELS"].get(name)
    if options is None:
        return False
    return getattr(import_string(options["CLASS"]), method)(options)


def image_model_can_edit(name: str) -> bool:
    """Whether the configured image model ``name`` makes images from a source image."""
    return _capability(name, "can_edit")


def image_model_can_generate(name: str) -> bool:
    """Whether the configured image model ``name`` makes images from a prompt alone."""
    return _capability(name, "can_generate")


def reset_cache() -> None:
    """Forget built clients (after settings change, e.g. in tests)."""
    get_llm.cache_clear()
    get_image_model.cache_clear()
