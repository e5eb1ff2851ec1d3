"""Prompt expansion with Claude through the official anthropic SDK (a strict forced tool)."""

from __future__ import annotations

import anthropic
from django.conf import settings

from .base import LLM, PromptBatch, TokenUsage, prompts_schema, system_prompt, user_prompt
from .errors import (
    PermanentProviderError,
    ProviderError,
    TransientProviderError,
    error_for_status,
)

TOOL_NAME = "submit_prompts"


class ClaudeLLM(LLM):
    requires_setting = "ANTHROPIC_API_KEY"

    def __init__(self, name: str, **options):
        super().__init__(name, **options)
        # ANTHROPIC_BASE_URL, if set, is honoured by the SDK itself.
        self.client = anthropic.Anthropic(
            api_key=settings.ANTHROPIC_API_KEY or None,
            max_retries=int(options.get("MAX_RETRIES", 2)),
            timeout=float(options.get("TIMEOUT", 120)),
        )
        self.model = options.get("MODEL", "claude-sonnet-4-6")
        self.max_tokens = int(options.get("MAX_TOKENS", 8192))

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
        try:
            message = self.client.messages.create(
                model=self.model,
                max_tokens=self.max_tokens,
                system=system_prompt(),
                messages=[
                    {
                        "role": "user",
                        "content": user_prompt(theme, count, brief, style, avoid, source),
                    }
                ],
                tools=[
                    {
                        "name": TOOL_NAME,
                        "description": "Submit the image prompts.",
                        "input_schema": prompts_schema(count),
                        "strict": True,
                    }
                ],
                tool_choice={"type": "tool", "name": TOOL_NAME},
            )
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
            exc.usage = _usage(message)  # answered, so paid for, even if unusable
            raise

    def prompts_of(self, message: anthropic.types.Message) -> list:
        if message.stop_reason == "refusal":
            raise PermanentProviderError(f"{self.name}: the model refused this theme")
        if message.stop_reason == "max_tokens":
            raise PermanentProviderError(
                f"{self.name}: output truncated at max_tokens={self.max_tokens}; "
                "lower BATCH_SIZE or raise MAX_TOKENS"
            )
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


def _detail(exc: anthropic.APIStatusError) -> str:
    body = exc.body if isinstance(exc.body, dict) else {}
    error = body.get("error") if isinstance(body.get("error"), dict) else {}
    return error.get("message") or exc.message
