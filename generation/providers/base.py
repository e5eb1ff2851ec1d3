"""What every provider implements, and the prompt clean-up shared by the LLMs."""

from __future__ import annotations

import re
from dataclasses import dataclass
from typing import Any

from .errors import PermanentProviderError

ASPECT_RATIOS = ["1:1", "4:3", "3:4", "16:9", "9:16"]
MAX_PROMPT_CHARS = 1000
MIN_PROMPT_WORDS = 3


@dataclass(frozen=True)
class GeneratedImage:
    data: bytes
    content_type: str
    width: int
    height: int
    seed: int | None = None
    provider_request_id: str = ""

    @property
    def extension(self) -> str:
        return {"image/png": "png", "image/webp": "webp"}.get(self.content_type, "jpg")


class Provider:
    """Configured by name from ``settings.KARASU``; ``options`` is that entry."""

    #: Environment variable this provider needs, if any (shown in validation errors).
    requires_setting: str = ""

    def __init__(self, name: str, **options: Any):
        self.name = name
        self.options = options
        self.label = options.get("LABEL", name)

    @classmethod
    def is_available(cls) -> bool:
        from django.conf import settings

        return not cls.requires_setting or bool(getattr(settings, cls.requires_setting, ""))


class LLM(Provider):
    """Expands a theme into ``count`` distinct image prompts."""

    batch_size = 25
    max_rounds_extra = 3  # top-up rounds beyond what the batches need

    def expand(self, theme: str, count: int, *, brief: str = "", style: str = "") -> list[str]:
        batch_size = int(self.options.get("BATCH_SIZE", self.batch_size))
        prompts: list[str] = []
        seen: set[str] = set()
        rounds = -(-count // batch_size) + self.max_rounds_extra
        for _ in range(rounds):
            missing = count - len(prompts)
            if missing <= 0:
                break
            batch = self.request_prompts(
                theme, min(missing, batch_size), brief=brief, style=style, avoid=prompts[-20:]
            )
            for prompt in clean_prompts(batch):
                key = normalise(prompt)
                if key not in seen:
                    seen.add(key)
                    prompts.append(prompt)
        if len(prompts) < count:
            raise PermanentProviderError(
                f"{self.name}: returned only {len(prompts)} distinct usable prompts of {count}"
            )
        return prompts[:count]

    def request_prompts(
        self, theme: str, count: int, *, brief: str, style: str, avoid: list[str]
    ) -> list[str]:
        """One call to the model for ``count`` prompts (may return fewer or duplicates)."""
        raise NotImplementedError


class ImageModel(Provider):
    def generate(
        self, prompt: str, *, aspect_ratio: str = "1:1", seed: int | None = None
    ) -> GeneratedImage:
        raise NotImplementedError

    @property
    def concurrency(self) -> int:
        return int(self.options.get("CONCURRENCY", 4))

    @property
    def requests_per_minute(self) -> int | None:
        value = self.options.get("REQUESTS_PER_MINUTE")
        return int(value) if value else None


def normalise(prompt: str) -> str:
    return re.sub(r"[^a-z0-9]+", " ", prompt.lower()).strip()


def clean_prompts(raw: list[Any]) -> list[str]:
    """Drop non-strings and near-empty prompts; trim each to a sane length."""
    cleaned = []
    for item in raw:
        if not isinstance(item, str):
            continue
        prompt = " ".join(item.split())
        if len(prompt.split()) < MIN_PROMPT_WORDS:
            continue
        if len(prompt) > MAX_PROMPT_CHARS:
            prompt = prompt[:MAX_PROMPT_CHARS].rsplit(" ", 1)[0]
        cleaned.append(prompt)
    return cleaned


def system_prompt() -> str:
    return (
        "You write prompts for a text-to-image model. Given a theme, write distinct, "
        "concrete, visual prompts: each names a subject, setting, composition, lighting and "
        "style in one or two sentences. No numbering, no commentary, no text overlays."
    )


def user_prompt(theme: str, count: int, brief: str, style: str, avoid: list[str]) -> str:
    parts = [f"Theme: {theme}", f"Write exactly {count} prompts."]
    if brief:
        parts.append(f"Brief: {brief}")
    if style:
        parts.append(f"Visual style for every prompt: {style}")
    if avoid:
        parts.append("Make them clearly different from these existing prompts:")
        parts.extend(f"- {prompt}" for prompt in avoid)
    return "\n".join(parts)


def prompts_schema(count: int) -> dict:
    return {
        "type": "object",
        "properties": {
            "prompts": {
                "type": "array",
                "items": {"type": "string"},
                "description": f"Exactly {count} distinct image prompts.",
            }
        },
        "required": ["prompts"],
        "additionalProperties": False,
    }
