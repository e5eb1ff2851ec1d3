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
import logging

from django.conf import settings
from django.utils.module_loading import import_string

from .base import LLM, Expansion, TokenUsage
from .errors import (
    HandedBack,
    NotCalled,
    PermanentProviderError,
    ProviderError,
    RequestFailed,
    RequestGone,
    TransientProviderError,
)
from .images import ASPECT_RATIOS, GeneratedImage, ImageModel, ProviderCall, SourceImage
from .prompting import (
    MAX_ALT_TEXT_CHARS,
    MAX_PROMPT_CHARS,
    ImagePrompt,
    alt_text_from_prompt,
    clean_alt_text,
)

__all__ = [
    "ASPECT_RATIOS",
    "Expansion",
    "GeneratedImage",
    "ImageModel",
    "ImagePrompt",
    "HandedBack",
    "ProviderCall",
    "RequestFailed",
    "RequestGone",
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
    "import_provider_modules",
]


logger = logging.getLogger(__name__)


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
        # A label may be lazy (the demo's is translated): a str in the active language.
        choices.append((name, str(options.get("LABEL", name))))
    return choices


def available_llms() -> list[tuple[str, str]]:
    return _available("LLMS")


def available_image_models(editing: bool | None = None) -> list[tuple[str, str]]:
    """The image models that can be used. With ``editing`` None these are all of them,
    with True those that can edit an image (for variations of a source image), and with
    False those that make an image from a prompt alone."""
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
    """Forget the built clients, after the settings change (in tests, for example)."""
    get_llm.cache_clear()
    get_image_model.cache_clear()


def import_provider_modules() -> None:
    """Import every configured provider's module (anthropic alone takes about 2 s), so
    that a request's first LLM call does not wait for it. A module that cannot be
    imported is reported when its provider is used."""
    for kind in ("LLMS", "IMAGE_MODELS"):
        for options in settings.KARASU.get(kind, {}).values():
            try:
                import_string(options["CLASS"])
            except Exception:
                logger.warning("Could not import provider %s.", options.get("CLASS"))
