"""Prompt expansion with any OpenAI-compatible chat completions API (OpenAI, vLLM, Ollama)."""

from __future__ import annotations

import json

import httpx
from django.conf import settings

from .base import LLM, PromptBatch, TokenUsage
from .errors import (
    PermanentProviderError,
    ProviderError,
    TransientProviderError,
    error_for_status,
)
from .prompting import configured_languages, prompts_schema, system_prompt, user_prompt


class OpenAICompatibleLLM(LLM):
    requires_setting = "OPENAI_API_KEY"

    def __init__(self, name: str, **options):
        super().__init__(name, **options)
        self.model = options.get("MODEL", "gpt-4o-mini")
        self.base_url = (options.get("BASE_URL") or settings.OPENAI_BASE_URL).rstrip("/")
        self.client = httpx.Client(
            # The transport retries connection failures, and the task retries error statuses.
            transport=httpx.HTTPTransport(retries=int(options.get("MAX_RETRIES", 2))),
            timeout=float(options.get("TIMEOUT", 120)),
            headers={"Authorization": f"Bearer {settings.OPENAI_API_KEY}"},
        )

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
        payload = {
            "model": self.model,
            "messages": [
                {"role": "system", "content": system_prompt(languages)},
                {
                    "role": "user",
                    "content": user_prompt(theme, count, brief, style, avoid, source, angle),
                },
            ],
            "response_format": {
                "type": "json_schema",
                "json_schema": {
                    "name": "prompts",
                    "strict": True,
                    "schema": prompts_schema(count, languages),
                },
            },
        }
        try:
            response = self.client.post(f"{self.base_url}/chat/completions", json=payload)
        except httpx.TimeoutException:
            raise TransientProviderError(f"{self.name}: request timed out") from None
        except httpx.HTTPError as exc:
            raise TransientProviderError(f"{self.name}: connection failed: {exc}") from None
        if response.status_code != 200:
            raise error_for_status(
                self.name,
                response.status_code,
                _detail(response),
                response.headers.get("retry-after"),
            )
        try:
            body = response.json()
        except ValueError:
            raise PermanentProviderError(f"{self.name}: malformed response") from None
        try:
            return PromptBatch(self.prompts_of(body), _usage(body))
        except ProviderError as exc:
            exc.usage = _usage(body)  # It was answered, so it is paid for, even if unusable.
            raise

    def prompts_of(self, body) -> list:
        try:
            choice = body["choices"][0]
            message = choice["message"]
        except (KeyError, IndexError, TypeError):
            raise PermanentProviderError(f"{self.name}: malformed response") from None
        if message.get("refusal"):
            raise PermanentProviderError(f"{self.name}: the model refused: {message['refusal']}")
        if choice.get("finish_reason") == "length":
            raise PermanentProviderError(f"{self.name}: output truncated; lower BATCH_SIZE")
        try:
            prompts = json.loads(message.get("content") or "")["prompts"]
        except (ValueError, KeyError, TypeError):
            raise PermanentProviderError(
                f"{self.name}: malformed output (not the JSON schema)"
            ) from None
        if not isinstance(prompts, list):
            raise PermanentProviderError(f"{self.name}: malformed output (prompts not a list)")
        return prompts


def _usage(body: dict) -> TokenUsage:
    """OpenAI's usage block. Compatible servers may leave it out or fill it in partly."""
    usage = body.get("usage") if isinstance(body, dict) else None
    if not isinstance(usage, dict):
        return TokenUsage()

    def count(key: str) -> int:
        value = usage.get(key)
        return value if isinstance(value, int) and value >= 0 else 0

    return TokenUsage(count("prompt_tokens"), count("completion_tokens"))


def _detail(response: httpx.Response) -> str:
    try:
        return response.json()["error"]["message"]
    except (ValueError, KeyError, TypeError):
        return response.text[:200]
