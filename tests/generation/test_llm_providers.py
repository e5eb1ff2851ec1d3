"""Claude through the real anthropic SDK against a fake server; OpenAI-compatible via respx."""

import json

import httpx
import pytest
import respx

from generation.providers import (
    PermanentProviderError,
    TransientProviderError,
    available_llms,
    get_llm,
)
from tests.support.fake_http import FakeHTTPServer

CLAUDE_KEY = "sk-ant-api03-SECRETSECRETSECRET-claudekey"
OPENAI_KEY = "sk-proj-SECRETSECRETSECRET-openaikey"


def claude_message(prompts=None, stop_reason="tool_use", content=None):
    if content is None:
        content = [
            {"type": "tool_use", "id": "toolu_1", "name": "submit_prompts",
             "input": {"prompts": prompts}}
        ]
    return {
        "id": "msg_1", "type": "message", "role": "assistant", "model": "claude-sonnet-4-6",
        "content": content, "stop_reason": stop_reason, "stop_sequence": None,
        "usage": {"input_tokens": 10, "output_tokens": 10},
    }


def numbered(start, count, theme="crows"):
    return [f"{theme} scene number {i} with distinct lighting" for i in range(start, start + count)]


@pytest.fixture
def claude(settings, monkeypatch):
    server = FakeHTTPServer()
    monkeypatch.setenv("ANTHROPIC_BASE_URL", server.url)
    settings.ANTHROPIC_API_KEY = CLAUDE_KEY
    settings.KARASU = {
        **settings.KARASU,
        "LLMS": {
            **settings.KARASU["LLMS"],
            "claude": {**settings.KARASU["LLMS"]["claude"], "BATCH_SIZE": 25, "MAX_RETRIES": 0},
        },
    }
    yield server
    server.close()


def test_claude_happy_path_batches_and_uses_a_strict_forced_tool(claude):
    claude.reply(body=claude_message(numbered(0, 25)))
    claude.reply(body=claude_message(numbered(25, 25)))
    claude.reply(body=claude_message(numbered(50, 10)))
    prompts = get_llm("claude").expand("crows", 60, brief="for a poster", style="ink")
    assert prompts == numbered(0, 60)
    assert len(claude.requests) == 3
    first = claude.requests[0]
    assert first["path"] == "/v1/messages"
    headers = {name.lower(): value for name, value in first["headers"].items()}
    assert CLAUDE_KEY in (headers.get("x-api-key"), headers.get("authorization", "")[7:])
    assert first["json"]["tool_choice"] == {"type": "tool", "name": "submit_prompts"}
    assert first["json"]["tools"][0]["strict"] is True
    assert "Write exactly 25 prompts" in first["json"]["messages"][0]["content"]
    assert "Visual style for every prompt: ink" in first["json"]["messages"][0]["content"]


def test_claude_drops_duplicates_and_near_empty_prompts_and_tops_up(claude):
    batch = numbered(0, 3) + [numbered(0, 1)[0].upper(), "  ", "two words", 17]
    claude.reply(body=claude_message(batch))
    claude.reply(body=claude_message(numbered(3, 2)))
    prompts = get_llm("claude").expand("crows", 5)
    assert prompts == numbered(0, 5)
    assert "existing prompts" in claude.requests[1]["json"]["messages"][0]["content"]


def test_claude_trims_long_prompts(claude):
    long_prompt = "a very long prompt " * 200
    claude.reply(body=claude_message([long_prompt]))
    [prompt] = get_llm("claude").expand("crows", 1)
    assert len(prompt) <= 1000 and prompt.startswith("a very long prompt")


def test_claude_short_output_is_a_clear_permanent_error(claude):
    for _ in range(5):
        claude.reply(body=claude_message(numbered(0, 2)))
    with pytest.raises(PermanentProviderError, match="only 2 distinct usable prompts of 5"):
        get_llm("claude").expand("crows", 5)


def test_claude_429_keeps_retry_after(claude):
    claude.reply(429, {"type": "error", "error": {"type": "rate_limit_error",
                                                 "message": "slow down"}}, **{"retry-after": "7"})
    with pytest.raises(TransientProviderError) as error:
        get_llm("claude").expand("crows", 3)
    assert error.value.retry_after == 7
    assert "429" in error.value.reason and "slow down" in error.value.reason


def test_claude_overloaded_529_is_transient(claude):
    claude.reply(529, {"type": "error", "error": {"type": "overloaded_error",
                                                 "message": "Overloaded"}})
    with pytest.raises(TransientProviderError, match="529"):
        get_llm("claude").expand("crows", 3)


def test_claude_500_then_success_with_sdk_retries(claude, settings):
    settings.KARASU["LLMS"]["claude"]["MAX_RETRIES"] = 1
    claude.reply(500, {"type": "error", "error": {"type": "api_error", "message": "boom"}},
                 **{"retry-after-ms": "10"})
    claude.reply(body=claude_message(numbered(0, 3)))
    assert get_llm("claude").expand("crows", 3) == numbered(0, 3)
    assert len(claude.requests) == 2


def test_claude_refusal_max_tokens_and_malformed_output(claude):
    claude.reply(body=claude_message(content=[], stop_reason="refusal"))
    with pytest.raises(PermanentProviderError, match="refused"):
        get_llm("claude").expand("crows", 3)
    claude.reply(body=claude_message(numbered(0, 1), stop_reason="max_tokens"))
    with pytest.raises(PermanentProviderError, match="max_tokens"):
        get_llm("claude").expand("crows", 3)
    claude.reply(body=claude_message(content=[{"type": "text", "text": "Here you go!"}],
                                     stop_reason="end_turn"))
    with pytest.raises(PermanentProviderError, match="malformed output"):
        get_llm("claude").expand("crows", 3)


def test_claude_auth_error_is_permanent_and_never_shows_the_key(claude):
    claude.reply(401, {"type": "error", "error": {
        "type": "authentication_error", "message": f"invalid x-api-key {CLAUDE_KEY}"}})
    with pytest.raises(PermanentProviderError) as error:
        get_llm("claude").expand("crows", 3)
    assert "401" in str(error.value)
    assert CLAUDE_KEY not in str(error.value)
    assert "SECRETSECRET" not in repr(error.value)


def test_claude_is_offered_only_with_a_key(settings):
    settings.ANTHROPIC_API_KEY = ""
    assert "claude" not in dict(available_llms())
    with pytest.raises(PermanentProviderError, match="needs ANTHROPIC_API_KEY"):
        get_llm("claude")


# OpenAI-compatible ----------------------------------------------------------------------
@pytest.fixture
def openai_api(settings):
    settings.OPENAI_API_KEY = OPENAI_KEY
    settings.KARASU = {
        **settings.KARASU,
        "LLMS": {
            **settings.KARASU["LLMS"],
            "openai": {**settings.KARASU["LLMS"]["openai"], "BASE_URL": "https://llm.test/v1"},
        },
    }
    with respx.mock(base_url="https://llm.test/v1", assert_all_called=False) as router:
        yield router.post("/chat/completions")


def completion(content=None, refusal=None, finish_reason="stop"):
    message = {"role": "assistant", "content": content, "refusal": refusal}
    return {"choices": [{"index": 0, "message": message, "finish_reason": finish_reason}]}


def test_openai_happy_path_uses_json_schema(openai_api):
    openai_api.return_value = httpx.Response(
        200, json=completion(json.dumps({"prompts": numbered(0, 4)}))
    )
    assert get_llm("openai").expand("crows", 4) == numbered(0, 4)
    request = openai_api.calls.last.request
    body = json.loads(request.content)
    assert body["response_format"]["type"] == "json_schema"
    assert body["response_format"]["json_schema"]["strict"] is True
    assert request.headers["authorization"] == f"Bearer {OPENAI_KEY}"


def test_openai_errors(openai_api):
    openai_api.side_effect = [
        httpx.Response(429, json={"error": {"message": "rate limited"}},
                       headers={"retry-after": "3"}),
        httpx.Response(503, text="upstream unavailable"),
        httpx.Response(200, json=completion(refusal="I can't help with that")),
        httpx.Response(200, json=completion("not json")),
        httpx.Response(200, json=completion('{"prompts": [1, 2]}', finish_reason="length")),
        httpx.Response(400, json={"error": {"message": f"bad key {OPENAI_KEY}"}}),
    ]
    with pytest.raises(TransientProviderError) as error:
        get_llm("openai").expand("crows", 2)
    assert error.value.retry_after == 3
    with pytest.raises(TransientProviderError, match="503"):
        get_llm("openai").expand("crows", 2)
    with pytest.raises(PermanentProviderError, match="refused"):
        get_llm("openai").expand("crows", 2)
    with pytest.raises(PermanentProviderError, match="malformed output"):
        get_llm("openai").expand("crows", 2)
    with pytest.raises(PermanentProviderError, match="truncated"):
        get_llm("openai").expand("crows", 2)
    with pytest.raises(PermanentProviderError) as error:
        get_llm("openai").expand("crows", 2)
    assert OPENAI_KEY not in str(error.value) and "[redacted]" in str(error.value)


def test_openai_timeout_is_transient(openai_api):
    openai_api.side_effect = httpx.ReadTimeout("slow")
    with pytest.raises(TransientProviderError, match="timed out"):
        get_llm("openai").expand("crows", 2)


# Demo -------------------------------------------------------------------------------------
def test_demo_llm_is_offline_distinct_and_deterministic():
    first = get_llm("demo").expand("Crows over Kyoto", 500, style="ink wash")
    assert len(set(first)) == 500
    assert all(p.startswith("Crows over Kyoto: ") and p.endswith("ink wash") for p in first)
    assert get_llm("demo").expand("Crows over Kyoto", 500, style="ink wash") == first
