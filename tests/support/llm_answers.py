"""What the LLM providers answer on the wire, for the fake servers: Claude's Messages API
(a forced ``submit_prompts`` tool call) and an OpenAI-compatible chat completion."""

from __future__ import annotations

# Fake keys; the tests check that they never show in errors or logs.
CLAUDE_KEY = "sk-ant-api03-SECRETSECRETSECRET-claudekey"
OPENAI_KEY = "sk-proj-SECRETSECRETSECRET-openaikey"


def alt_for(prompt: str) -> str:
    return f"Literal alt text for: {prompt}"


def with_alt(items: list) -> list:
    """Strings become the schema's {prompt, alt_text} objects; anything else is sent as is."""
    return [
        {"prompt": item, "alt_text": alt_for(item)} if isinstance(item, str) else item
        for item in items
    ]


def claude_message(
    prompts: list | None = None,
    stop_reason: str = "tool_use",
    content: list | None = None,
    usage: tuple[int, int] = (10, 10),
) -> dict:
    """A Messages API response: the ``prompts`` as the tool's input, or ``content`` as is."""
    if content is None:
        content = [
            {
                "type": "tool_use",
                "id": "toolu_1",
                "name": "submit_prompts",
                "input": {"prompts": with_alt(prompts)},
            }
        ]
    return {
        "id": "msg_1",
        "type": "message",
        "role": "assistant",
        "model": "claude-sonnet-4-6",
        "content": content,
        "stop_reason": stop_reason,
        "stop_sequence": None,
        "usage": {"input_tokens": usage[0], "output_tokens": usage[1]},
    }


def numbered(start: int, count: int, theme: str = "crows") -> list[str]:
    """``count`` distinct prompts, numbered from ``start``."""
    return [f"{theme} scene number {i} with distinct lighting" for i in range(start, start + count)]


def completion(
    content: str | None = None,
    refusal: str | None = None,
    finish_reason: str = "stop",
    usage: dict | None = None,
) -> dict:
    """A chat completion with one choice."""
    message = {"role": "assistant", "content": content, "refusal": refusal}
    body = {"choices": [{"index": 0, "message": message, "finish_reason": finish_reason}]}
    if usage is not None:
        body["usage"] = usage
    return body
