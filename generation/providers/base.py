"""What every LLM implements: the expansion of a theme into prompts, in calls and streams.

The image side lives in ``images`` and the prompt text helpers in ``prompting``. Their names
stay importable from here as well.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from typing import Any

from .errors import PermanentProviderError, ProviderError
from .images import (
    ASPECT_RATIOS,
    SPOOL_BYTES,
    GeneratedImage,
    ImageBody,
    ImageModel,
    ProviderCall,
    SourceImage,
    StopCheck,
    temporary_directory,
)
from .prompting import (
    ANGLES,
    MAX_ALT_TEXT_CHARS,
    MAX_PROMPT_CHARS,
    MIN_PROMPT_WORDS,
    ImagePrompt,
    _cut,
    _one_line,
    alt_text_from_prompt,
    angle_for,
    clean_alt_text,
    clean_prompts,
    normalise,
    prompts_schema,
    system_prompt,
    user_prompt,
)
from .provider import Provider

__all__ = [
    "ANGLES",
    "ASPECT_RATIOS",
    "LLM",
    "MAX_ALT_TEXT_CHARS",
    "MAX_PROMPT_CHARS",
    "MIN_PROMPT_WORDS",
    "SPOOL_BYTES",
    "Expansion",
    "GeneratedImage",
    "ImageBody",
    "ImageModel",
    "ImagePrompt",
    "PromptBatch",
    "Provider",
    "ProviderCall",
    "SourceImage",
    "StopCheck",
    "StreamAborted",
    "TokenUsage",
    "_cut",
    "_one_line",
    "alt_text_from_prompt",
    "angle_for",
    "clean_alt_text",
    "clean_prompts",
    "normalise",
    "prompts_schema",
    "system_prompt",
    "temporary_directory",
    "user_prompt",
]


@dataclass(frozen=True)
class TokenUsage:
    """The tokens an LLM call used, as the provider reported them (0 when it did not
    say)."""

    input_tokens: int = 0
    output_tokens: int = 0

    def __add__(self, other: TokenUsage) -> TokenUsage:
        return TokenUsage(
            self.input_tokens + other.input_tokens, self.output_tokens + other.output_tokens
        )


@dataclass(frozen=True)
class PromptBatch:
    """What one model call returned: its raw items (validated by ``clean_prompts``) and its
    usage."""

    items: list[Any]
    usage: TokenUsage = field(default_factory=TokenUsage)


@dataclass(frozen=True)
class Expansion:
    """``count`` distinct prompts with their alt texts, and the tokens that all the calls
    used."""

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
    max_rounds_extra = 3  # The top-up rounds beyond what the batches need.
    # The first call of a pipeline expansion asks for this many prompts only, so the first
    # images start after a handful of prompts rather than a whole batch.
    first_call_size = 4

    default_concurrency = 8  # The calls in flight at once, across every worker.

    def plan_calls(self, count: int) -> list[int]:
        """The sizes of the calls that write ``count`` prompts. They grow from a small first
        call (FIRST_CALL_SIZE, then twice and three times that, and so on) up to BATCH_SIZE.

        Calls run side by side, so the small ones return first. The images start after a
        handful of prompts, and have more to do at each step while the big calls write."""
        batch_size = int(self.options.get("BATCH_SIZE", self.batch_size))
        step = max(1, int(self.options.get("FIRST_CALL_SIZE", self.first_call_size)))
        sizes: list[int] = []
        left = count
        while left > 0:
            sizes.append(min(left, batch_size, step * (len(sizes) + 1)))
            left -= sizes[-1]
        return sizes

    def expand(
        self,
        theme: str,
        count: int,
        *,
        brief: str = "",
        style: str = "",
        source: str = "",
        angle: str = "",
        avoid: list[str] | None = None,
        single_call: bool = False,
    ) -> Expansion:
        """Expand ``theme`` into ``count`` distinct prompts.

        ``source`` is what an existing image shows (its prompt or title), for variations of
        it, and the prompts then describe edits of that image.

        With ``single_call``, only one call is made (a pipeline expansion's call). It
        returns the distinct usable prompts it got, possibly fewer than ``count``, instead
        of raising. ``angle`` and ``avoid`` steer it away from what other calls write.
        """
        batch_size = int(self.options.get("BATCH_SIZE", self.batch_size))
        prompts: list[ImagePrompt] = []
        usage = TokenUsage()
        seen: set[str] = {normalise(p) for p in avoid or []}
        rounds = 1 if single_call else -(-count // batch_size) + self.max_rounds_extra
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
                    avoid=[*(avoid or [])[-20:], *(item.prompt for item in prompts[-20:])][-20:],
                    source=source,
                    angle=angle,
                )
            except ProviderError as exc:
                # The usage of the earlier batches is counted too.
                exc.usage = usage + (exc.usage or TokenUsage())
                raise
            usage += batch.usage
            for item in clean_prompts(batch.items):
                key = normalise(item.prompt)
                if key not in seen:
                    seen.add(key)
                    prompts.append(item)
        if len(prompts) < count and not single_call:
            error = PermanentProviderError(
                f"{self.name}: returned only {len(prompts)} distinct usable prompts of {count}"
            )
            error.usage = usage
            raise error
        return Expansion(prompts[:count], usage)

    def stream_call(
        self,
        theme: str,
        count: int,
        *,
        brief: str = "",
        style: str = "",
        source: str = "",
        angle: str = "",
        avoid: list[str] | None = None,
        on_prompts: Callable[[list[ImagePrompt]], None],
    ) -> TokenUsage:
        """Make one call for ``count`` prompts and return its usage. The call hands its
        distinct usable prompts to ``on_prompts`` as the LLM completes them (for a provider
        that streams), or all at once when the call returns (for one that does not). Each
        prompt is handed out once, even when the call fails after it. A ProviderError
        carries the usage known when it failed.

        ``on_prompts`` may raise ``StreamAborted`` to end the call at once, when nothing
        more will be written from it. The exception carries the usage known then.
        """
        seen = {normalise(p) for p in avoid or []}

        def take(items: list) -> None:
            fresh = []
            for item in clean_prompts(items):
                key = normalise(item.prompt)
                if key not in seen:
                    seen.add(key)
                    fresh.append(item)
            if fresh:
                on_prompts(fresh)

        options = dict(
            brief=brief, style=style, avoid=(avoid or [])[-20:], source=source, angle=angle
        )
        if self.streams:
            return self.request_prompts(theme, count, on_items=take, **options).usage
        batch = self.request_prompts(theme, count, **options)
        try:
            take(batch.items)
        except StreamAborted as exc:
            exc.usage = batch.usage
            raise
        return batch.usage

    # Whether request_prompts takes ``on_items`` and hands out each item as it is complete.
    streams = False

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
        """Make one call to the model for ``count`` prompts. It may return fewer, or
        duplicates.

        Items are ``{"prompt": ..., "alt_text": ...}`` objects, and plain strings are taken
        as prompts without alt text. ``clean_prompts`` validates them. A provider that
        ``streams`` also takes ``on_items``, which it calls with the raw items as they
        complete: every item exactly once, and the last ones when the answer ends.
        """
        raise NotImplementedError


class StreamAborted(Exception):
    """Raised by a stream's receiver to end the call, because nothing more is wanted from
    it: its request was cancelled, or another attempt took the call over."""

    usage: TokenUsage | None = None
