"""Prompt expansion with Claude through the official anthropic SDK (a strict forced tool)."""

from __future__ import annotations

from collections.abc import Callable

import anthropic
import httpx2  # The anthropic SDK's HTTP client; its errors end a stream under way.
import jiter  # The anthropic SDK's JSON parser, which reads partial JSON too.
from django.conf import settings

from .base import LLM, PromptBatch, StreamAborted, TokenUsage
from .errors import (
    PermanentProviderError,
    ProviderError,
    TransientProviderError,
    error_for_status,
)
from .prompting import configured_languages, prompts_schema, system_prompt, user_prompt

TOOL_NAME = "submit_prompts"
# The room each prompt with its alt text takes: about 140 tokens in English, and more in
# other scripts.
TOKENS_PER_PROMPT = 400


class ClaudeLLM(LLM):
    requires_setting = "ANTHROPIC_API_KEY"

    def __init__(self, name: str, **options):
        super().__init__(name, **options)
        # The base URL is BASE_URL if set, else ANTHROPIC_BASE_URL (which the SDK itself
        # honours), else Anthropic's own.
        self.client = anthropic.Anthropic(
            api_key=settings.ANTHROPIC_API_KEY or None,
            base_url=options.get("BASE_URL") or None,
            max_retries=int(options.get("MAX_RETRIES", 2)),
            timeout=float(options.get("TIMEOUT", 120)),
        )
        self.model = options.get("MODEL", "claude-sonnet-4-6")
        self.max_tokens = int(options.get("MAX_TOKENS", 8192))

    streams = True

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
        on_items: Callable[[list], None] | None = None,
    ) -> PromptBatch:
        languages = configured_languages()
        params = dict(
            model=self.model,
            # max_tokens is sized to the call. While a call runs, its max_tokens is reserved
            # against the organisation's per-minute limit of output tokens, so 8 parallel
            # calls of 8192 would hit that limit early on low tiers.
            max_tokens=min(self.max_tokens, TOKENS_PER_PROMPT * count + 1024),
            system=system_prompt(languages),
            messages=[
                {
                    "role": "user",
                    "content": user_prompt(theme, count, brief, style, avoid, source, angle),
                }
            ],
            tools=[
                {
                    "name": TOOL_NAME,
                    "description": "Submit the image prompts.",
                    "input_schema": prompts_schema(count, languages),
                    "strict": True,
                }
            ],
            tool_choice={"type": "tool", "name": TOOL_NAME},
        )
        if on_items is not None:
            return self._stream(params, on_items)
        try:
            message = self.client.messages.create(**params)
        except anthropic.APIStatusError as exc:
            raise error_for_status(
                self.name, exc.status_code, _detail(exc), exc.response.headers.get("retry-after")
            ) from None
        except anthropic.APITimeoutError:
            raise TransientProviderError(f"{self.name}: request timed out") from None
        except anthropic.APIConnectionError as exc:
            raise TransientProviderError(f"{self.name}: connection failed: {exc}") from None

        try:
            return PromptBatch(self.prompts_of(message), _usage(message))
        except ProviderError as exc:
            exc.usage = _usage(message)  # It was answered, so it is paid for, even if unusable.
            raise

    def _stream(self, params: dict, on_items: Callable[[list], None]) -> PromptBatch:
        """Make the call streamed. Each prompt goes to ``on_items`` as soon as it is
        complete, and the rest when the stream ends. (In a partial parse of the tool input,
        the last element may still be incomplete.) The SDK retries the request before the
        stream starts, but never a stream under way. An error during the stream is raised
        with the usage known so far, and the prompts handed out stay handed out.

        The raw events are read instead of the SDK's MessageStream, which parses the whole
        input again and builds a snapshot for every delta. The input is parsed only when a
        delta may close an item, which spares the worker's CPU at 8 calls in parallel."""
        handed = 0
        usage = TokenUsage()
        pieces: list[str] = []
        stop_reason = None
        tool_seen = False
        try:
            with self.client.messages.create(**params, stream=True) as stream:
                for event in stream:
                    kind = event.type
                    if kind == "content_block_delta":
                        if event.delta.type != "input_json_delta":
                            continue
                        pieces.append(event.delta.partial_json)
                        if "}" not in event.delta.partial_json:
                            continue  # No item can have ended in this delta.
                        items = _prompts(
                            jiter.from_json("".join(pieces).encode(), partial_mode=True)
                        )
                        if items:
                            ready = len(items) if _complete(items[-1]) else len(items) - 1
                            if ready > handed:
                                complete, handed = items[handed:ready], ready
                                on_items(complete)
                    elif kind == "content_block_start":
                        block = event.content_block
                        tool_seen = tool_seen or (
                            block.type == "tool_use" and block.name == TOOL_NAME
                        )
                    elif kind == "message_start":
                        # The input tokens are billed from here on.
                        usage = _usage(event.message)
                    elif kind == "message_delta":
                        stop_reason = event.delta.stop_reason
                        usage = TokenUsage(usage.input_tokens, int(event.usage.output_tokens or 0))
            self._check_stop(stop_reason)
            try:
                items = _prompts(jiter.from_json("".join(pieces).encode())) if tool_seen else None
            except ValueError:
                items = None
            if items is None:
                raise PermanentProviderError(f"{self.name}: malformed output (no prompts list)")
            on_items(items[handed:])
        except anthropic.APIStatusError as exc:
            error = _stream_error(self.name, exc)
            error.usage = usage
            raise error from None
        except (anthropic.APITimeoutError, httpx2.TimeoutException):
            error = TransientProviderError(f"{self.name}: request timed out")
            error.usage = usage
            raise error from None
        except (anthropic.APIConnectionError, httpx2.HTTPError) as exc:
            error = TransientProviderError(f"{self.name}: connection failed: {exc}")
            error.usage = usage
            raise error from None
        except (ProviderError, StreamAborted) as exc:
            exc.usage = usage  # It was answered (or cut off by us), so it is paid for.
            raise
        return PromptBatch(items, usage)

    def _check_stop(self, stop_reason: str | None) -> None:
        if stop_reason == "refusal":
            raise PermanentProviderError(f"{self.name}: the model refused this theme")
        if stop_reason == "max_tokens":
            raise PermanentProviderError(
                f"{self.name}: output truncated at max_tokens={self.max_tokens}; "
                "lower BATCH_SIZE or raise MAX_TOKENS"
            )

    def prompts_of(self, message: anthropic.types.Message) -> list:
        self._check_stop(message.stop_reason)
        for block in message.content:
            if block.type == "tool_use" and block.name == TOOL_NAME:
                prompts = block.input.get("prompts") if isinstance(block.input, dict) else None
                if isinstance(prompts, list):
                    return prompts
        raise PermanentProviderError(f"{self.name}: malformed output (no prompts list)")


def _usage(message: anthropic.types.Message) -> TokenUsage:
    usage = getattr(message, "usage", None)
    return TokenUsage(
        int(getattr(usage, "input_tokens", 0) or 0), int(getattr(usage, "output_tokens", 0) or 0)
    )


def _prompts(tool_input) -> list | None:
    prompts = tool_input.get("prompts") if isinstance(tool_input, dict) else None
    return prompts if isinstance(prompts, list) else None


def _complete(item) -> bool:
    """Whether the last item of a partial snapshot is whole. The SDK's partial parse leaves
    out strings that are still open, and the strict schema has exactly these two fields."""
    return isinstance(item, dict) and "prompt" in item and "alt_text" in item


# The HTTP status that an error event inside a stream stands for, because the stream's own
# status is 200.
STREAM_ERROR_STATUSES = {
    "overloaded_error": 529,
    "rate_limit_error": 429,
    "api_error": 500,
    "timeout_error": 504,
    "invalid_request_error": 400,
    "authentication_error": 401,
    "permission_error": 403,
    "not_found_error": 404,
    "request_too_large": 413,
}


def _stream_error(name: str, exc: anthropic.APIStatusError) -> ProviderError:
    """The provider error for an error answered before the stream started (told by its
    HTTP status) or for an SSE ``error`` event inside the stream (a 200 response, told by
    the error's type)."""
    status = exc.status_code
    if status == 200:
        body = exc.body if isinstance(exc.body, dict) else {}
        error = body.get("error") if isinstance(body.get("error"), dict) else {}
        status = STREAM_ERROR_STATUSES.get(error.get("type"), 500)
    return error_for_status(
        name,
        status,
        _detail(exc),
        exc.response.headers.get("retry-after") if exc.status_code != 200 else None,
    )


def _detail(exc: anthropic.APIStatusError) -> str:
    body = exc.body if isinstance(exc.body, dict) else {}
    error = body.get("error") if isinstance(body.get("error"), dict) else {}
    return error.get("message") or exc.message
