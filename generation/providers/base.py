"""What every provider implements, and the prompt clean-up shared by the LLMs."""

from __future__ import annotations

import hashlib
import io
import re
import tempfile
import unicodedata
from collections.abc import Iterator
from dataclasses import dataclass, field
from typing import IO, Any

from .errors import PermanentProviderError, ProviderError

ASPECT_RATIOS = ["1:1", "4:3", "3:4", "16:9", "9:16"]
MAX_PROMPT_CHARS = 1000
MIN_PROMPT_WORDS = 3
# An image's alt text (its Wagtail description): short enough for a screen reader, and
# within the description field's 255 characters.
MAX_ALT_TEXT_CHARS = 250


# Bodies up to this size stay in memory; larger ones go to a temporary file, so a worker
# holding 20 results of 5-20 MB does not hold them in RAM.
SPOOL_BYTES = 1024 * 1024


def temporary_directory() -> str | None:
    """Where large bodies spool: Django's FILE_UPLOAD_TEMP_DIR, else the system default."""
    from django.conf import settings

    return getattr(settings, "FILE_UPLOAD_TEMP_DIR", None) if settings.configured else None


class ImageBody:
    """An image's bytes, counted and SHA-1 hashed as they are written.

    Up to ``spool_bytes`` they stay in memory; past that they move to an unnamed temporary
    file (``tempfile.TemporaryFile``: no directory entry, so even a killed worker leaves
    nothing behind). ``close()`` frees the file; an in-memory body has nothing to free and
    stays readable, so a caller may still file it again.
    """

    def __init__(self, spool_bytes: int | None = None) -> None:
        self._spool_bytes = SPOOL_BYTES if spool_bytes is None else spool_bytes
        self._memory: io.BytesIO | None = io.BytesIO()
        self._file: IO[bytes] | None = None
        self._sha1 = hashlib.sha1()
        self.size = 0

    @classmethod
    def from_bytes(cls, data: bytes) -> ImageBody:
        body = cls()
        body._memory = io.BytesIO(data)  # shares ``data`` until written to: no copy
        body._sha1.update(data)
        body.size = len(data)
        return body

    def write(self, chunk: bytes) -> int:
        if self.closed:
            raise ValueError("write to a closed image body")
        self._sha1.update(chunk)
        self.size += len(chunk)
        if self._memory is not None:
            self._memory.write(chunk)
            if self.size > self._spool_bytes:
                self._roll_over()
        else:
            self._file.write(chunk)
        return len(chunk)

    def flush(self) -> None:
        """Pillow flushes what it saves into; there is nothing to flush here."""

    def _roll_over(self) -> None:
        file = tempfile.TemporaryFile(dir=temporary_directory())
        try:
            file.write(self._memory.getbuffer())
        except BaseException:
            file.close()
            raise
        self._memory, self._file = None, file

    @property
    def sha1(self) -> str:
        return self._sha1.hexdigest()

    @property
    def on_disk(self) -> bool:
        return self._file is not None

    @property
    def closed(self) -> bool:
        return self._file is not None and self._file.closed

    def open(self) -> IO[bytes]:
        """The body as a readable file, rewound (shared: one reader at a time)."""
        if self.closed:
            raise ValueError("the image body is closed")
        stream = self._memory if self._memory is not None else self._file
        stream.seek(0)
        return stream

    def read(self) -> bytes:
        return self.open().read()

    def close(self) -> None:
        if self._file is not None:
            self._file.close()


class GeneratedImage:
    """A provider's result: the image body, what it is, and where it came from.

    ``data`` may be the bytes themselves or an :class:`ImageBody` a provider streamed into.
    Whoever files the image closes it (``ingest`` does, whatever its outcome).
    """

    def __init__(
        self,
        data: bytes | ImageBody,
        content_type: str,
        width: int,
        height: int,
        seed: int | None = None,
        provider_request_id: str = "",
    ) -> None:
        self.body = data if isinstance(data, ImageBody) else ImageBody.from_bytes(data)
        self.content_type = content_type
        self.width = width
        self.height = height
        self.seed = seed
        self.provider_request_id = provider_request_id

    def __repr__(self) -> str:
        return (
            f"<GeneratedImage {self.content_type} {self.width}x{self.height} "
            f"{self.size} bytes{' on disk' if self.on_disk else ''}>"
        )

    @property
    def data(self) -> bytes:
        """The whole body in memory: for small results and tests; ingest streams instead."""
        return self.body.read()

    @property
    def size(self) -> int:
        return self.body.size

    @property
    def sha1(self) -> str:
        return self.body.sha1

    @property
    def on_disk(self) -> bool:
        return self.body.on_disk

    @property
    def file(self) -> IO[bytes]:
        """The body as a readable file, rewound."""
        return self.body.open()

    def open(self) -> IO[bytes]:
        return self.body.open()

    @property
    def closed(self) -> bool:
        return self.body.closed

    def close(self) -> None:
        self.body.close()

    def __enter__(self) -> GeneratedImage:
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.close()

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


@dataclass(frozen=True)
class TokenUsage:
    """Tokens an LLM call used, as the provider reported them (0 when it did not say)."""

    input_tokens: int = 0
    output_tokens: int = 0

    def __add__(self, other: TokenUsage) -> TokenUsage:
        return TokenUsage(
            self.input_tokens + other.input_tokens, self.output_tokens + other.output_tokens
        )


@dataclass(frozen=True)
class ImagePrompt:
    """One prompt and the alt text of the image it will make.

    The alt text is always usable: blank or missing, it is derived from the prompt; too
    long, it is cut at a word to ``MAX_ALT_TEXT_CHARS``.
    """

    prompt: str
    alt_text: str = ""

    def __post_init__(self) -> None:
        object.__setattr__(self, "alt_text", clean_alt_text(self.alt_text, self.prompt))


@dataclass(frozen=True)
class PromptBatch:
    """What one model call returned: raw items (validated by ``clean_prompts``) and usage."""

    items: list[Any]
    usage: TokenUsage = field(default_factory=TokenUsage)


@dataclass(frozen=True)
class Expansion:
    """``count`` distinct prompts with their alt texts, and the tokens all calls used."""

    prompts: list[ImagePrompt]
    usage: TokenUsage = field(default_factory=TokenUsage)

    def __iter__(self) -> Iterator[ImagePrompt]:
        return iter(self.prompts)

    def __len__(self) -> int:
        return len(self.prompts)

    def __getitem__(self, index: int) -> ImagePrompt:
        return self.prompts[index]


class LLM(Provider):
    """Expands a theme into ``count`` distinct image prompts, each with its alt text."""

    batch_size = 25
    max_rounds_extra = 3  # top-up rounds beyond what the batches need

    def expand(
        self, theme: str, count: int, *, brief: str = "", style: str = "", source: str = ""
    ) -> Expansion:
        """``source``: what an existing image shows (its prompt or title), for variations of
        it; the prompts then describe edits of that image."""
        batch_size = int(self.options.get("BATCH_SIZE", self.batch_size))
        prompts: list[ImagePrompt] = []
        usage = TokenUsage()
        seen: set[str] = set()
        rounds = -(-count // batch_size) + self.max_rounds_extra
        for _ in range(rounds):
            missing = count - len(prompts)
            if missing <= 0:
                break
            try:
                batch = self.request_prompts(
                    theme,
                    min(missing, batch_size),
                    brief=brief,
                    style=style,
                    avoid=[item.prompt for item in prompts[-20:]],
                    source=source,
                )
            except ProviderError as exc:
                exc.usage = usage + (exc.usage or TokenUsage())  # the earlier batches too
                raise
            usage += batch.usage
            for item in clean_prompts(batch.items):
                key = normalise(item.prompt)
                if key not in seen:
                    seen.add(key)
                    prompts.append(item)
        if len(prompts) < count:
            error = PermanentProviderError(
                f"{self.name}: returned only {len(prompts)} distinct usable prompts of {count}"
            )
            error.usage = usage
            raise error
        return Expansion(prompts[:count], usage)

    def request_prompts(
        self,
        theme: str,
        count: int,
        *,
        brief: str,
        style: str,
        avoid: list[str],
        source: str = "",
    ) -> PromptBatch:
        """One call to the model for ``count`` prompts (may return fewer or duplicates).

        Items are ``{"prompt": ..., "alt_text": ...}`` objects (plain strings are taken as
        prompts without alt text); ``clean_prompts`` validates them.
        """
        raise NotImplementedError


@dataclass(frozen=True)
class SourceImage:
    """An existing image an editing model derives a new one from (variations)."""

    data: bytes
    content_type: str
    name: str = "source.jpg"

    @property
    def sha1(self) -> str:
        return hashlib.sha1(self.data).hexdigest()


class ImageModel(Provider):
    """Text to image (``generate``) and, for models that can, image editing (``edit``).

    ``can_generate(options)`` and ``can_edit(options)`` say which a configured model does,
    without building it (the request form filters its model list with them).
    """

    @classmethod
    def can_generate(cls, options: dict) -> bool:
        return True

    @classmethod
    def can_edit(cls, options: dict) -> bool:
        return False

    def generate(
        self, prompt: str, *, aspect_ratio: str = "1:1", seed: int | None = None
    ) -> GeneratedImage:
        raise NotImplementedError

    def edit(
        self,
        prompt: str,
        source: SourceImage,
        *,
        aspect_ratio: str = "1:1",
        seed: int | None = None,
    ) -> GeneratedImage:
        """A new image made from ``source`` as ``prompt`` describes."""
        raise PermanentProviderError(f"{self.name}: this model cannot edit images")

    @property
    def concurrency(self) -> int:
        return int(self.options.get("CONCURRENCY", 4))

    @property
    def requests_per_minute(self) -> int | None:
        value = self.options.get("REQUESTS_PER_MINUTE")
        return int(value) if value else None


def normalise(prompt: str) -> str:
    return re.sub(r"[^a-z0-9]+", " ", prompt.lower()).strip()


def _one_line(text: str) -> str:
    """Whitespace collapsed, control characters dropped (PostgreSQL refuses NUL)."""
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
    """A literal alt text when the LLM wrote none: the prompt's first sentence, which names
    the subject and setting, without a trailing full stop."""
    text = _one_line(prompt)
    first = re.split(r"(?<=[.!?])\s+", text, maxsplit=1)[0]
    if len(first.split()) >= MIN_PROMPT_WORDS:
        text = first
    text = _cut(text.rstrip(" ."), MAX_ALT_TEXT_CHARS)
    return text[:1].upper() + text[1:] if text else "Generated image"


def clean_alt_text(alt_text: Any, prompt: str) -> str:
    """The LLM's alt text on one line and at most MAX_ALT_TEXT_CHARS; derived from the
    prompt when it is missing or blank, so an image never goes without one."""
    text = _one_line(alt_text) if isinstance(alt_text, str) else ""
    if not text:
        return alt_text_from_prompt(prompt)
    return _cut(text, MAX_ALT_TEXT_CHARS)


def clean_prompts(raw: list[Any]) -> list[ImagePrompt]:
    """Drop malformed items and near-empty prompts; trim each prompt to a sane length and
    give each a valid alt text."""
    cleaned = []
    for item in raw:
        if isinstance(item, dict):
            text, alt_text = item.get("prompt"), item.get("alt_text")
        else:
            text, alt_text = item, ""
        if not isinstance(text, str):
            continue
        prompt = " ".join(text.split())
        if len(prompt.split()) < MIN_PROMPT_WORDS:
            continue
        if len(prompt) > MAX_PROMPT_CHARS:
            prompt = prompt[:MAX_PROMPT_CHARS].rsplit(" ", 1)[0]
        cleaned.append(ImagePrompt(prompt, alt_text))
    return cleaned


def system_prompt() -> str:
    return (
        "You write prompts for a text-to-image model. Given a theme, write distinct, "
        "concrete, visual prompts: each names a subject, setting, composition, lighting and "
        "style in one or two sentences. No numbering, no commentary, no text overlays. "
        "For each prompt also write its alt text: one short, literal sentence (at most "
        f"{MAX_ALT_TEXT_CHARS} characters) saying what the picture shows, for someone who "
        "cannot see it; no 'image of', no camera or style jargon."
    )


def user_prompt(
    theme: str, count: int, brief: str, style: str, avoid: list[str], source: str = ""
) -> str:
    parts = [f"Theme: {theme}", f"Write exactly {count} prompts, each with its alt text."]
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


def prompts_schema(count: int) -> dict:
    # No maxLength: strict schemas (Claude's tools, OpenAI's json_schema) do not accept
    # string-length bounds, so the limit is stated here and enforced by clean_alt_text.
    return {
        "type": "object",
        "properties": {
            "prompts": {
                "type": "array",
                "items": {
                    "type": "object",
                    "properties": {
                        "prompt": {"type": "string", "description": "The image prompt."},
                        "alt_text": {
                            "type": "string",
                            "description": (
                                "Alt text for the image: a short, literal description of "
                                f"what it shows, at most {MAX_ALT_TEXT_CHARS} characters."
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
