"""Claude through the real anthropic SDK against a fake server; OpenAI-compatible via respx.

Every prompt comes with its alt text from the same structured call, and the tokens each
provider reports are added up over the batches."""

import json
import runpy
from pathlib import Path

import httpx
import pytest
import respx

from generation.providers import (
    MAX_ALT_TEXT_CHARS,
    ImagePrompt,
    PermanentProviderError,
    TokenUsage,
    TransientProviderError,
    alt_text_from_prompt,
    available_llms,
    get_llm,
)
from generation.providers.demo import SUBJECTS
from generation.providers.demo_words import WORDS
from generation.providers.prompting import clean_prompts, language_name, system_prompt
from tests.support.llm_answers import (
    CLAUDE_KEY,
    OPENAI_KEY,
    alt_for,
    claude_message,
    completion,
    numbered,
    with_alt,
)


def prompts_of(expansion):
    return [item.prompt for item in expansion]


def test_claude_happy_path_batches_and_uses_a_strict_forced_tool(claude):
    claude.reply(body=claude_message(numbered(0, 25), usage=(1200, 3000)))
    claude.reply(body=claude_message(numbered(25, 25), usage=(1500, 3100)))
    claude.reply(body=claude_message(numbered(50, 10), usage=(1600, 1300)))
    expansion = get_llm("claude").expand("crows", 60, brief="for a poster", style="ink")
    assert prompts_of(expansion) == numbered(0, 60)
    assert [item.alt_text for item in expansion] == [alt_for(p) for p in numbered(0, 60)]
    assert expansion.usage == TokenUsage(input_tokens=4300, output_tokens=7400)
    assert len(claude.requests) == 3
    first = claude.requests[0]
    assert first["path"] == "/v1/messages"
    headers = {name.lower(): value for name, value in first["headers"].items()}
    assert CLAUDE_KEY in (headers.get("x-api-key"), headers.get("authorization", "")[7:])
    assert first["json"]["tool_choice"] == {"type": "tool", "name": "submit_prompts"}
    assert first["json"]["tools"][0]["strict"] is True
    assert "Write exactly 25 prompts" in first["json"]["messages"][0]["content"]
    assert "Visual style for every prompt: ink" in first["json"]["messages"][0]["content"]


def test_claude_tool_asks_for_an_alt_text_with_every_prompt(claude):
    claude.reply(body=claude_message(numbered(0, 2)))
    get_llm("claude").expand("crows", 2)
    sent = claude.requests[0]["json"]
    tool = sent["tools"][0]
    item = tool["input_schema"]["properties"]["prompts"]["items"]
    assert item["type"] == "object" and item["additionalProperties"] is False
    assert item["required"] == ["prompt", "alt_text"]
    assert set(item["properties"]) == {"prompt", "alt_text"}
    # Strict schemas take no length bounds: the limit is in the words, enforced on receipt.
    assert "maxLength" not in json.dumps(tool["input_schema"])
    assert "250 characters" in item["properties"]["alt_text"]["description"]
    assert "alt text" in sent["system"]


def test_claude_blank_missing_or_long_alt_texts_are_mended(claude):
    prompts = numbered(0, 4)
    claude.reply(
        body=claude_message(
            [
                {"prompt": prompts[0], "alt_text": "   "},
                {"prompt": prompts[1]},
                {"prompt": prompts[2], "alt_text": "A crow " * 100},
                {"prompt": prompts[3], "alt_text": "A crow\non a\tgate\x00 at dawn "},
            ]
        )
    )
    first, second, third, fourth = get_llm("claude").expand("crows", 4)
    assert (
        first.alt_text
        == alt_text_from_prompt(prompts[0])
        == ("Crows scene number 0 with distinct lighting")
    )
    assert second.alt_text == "Crows scene number 1 with distinct lighting"
    assert len(third.alt_text) <= MAX_ALT_TEXT_CHARS
    assert third.alt_text.startswith("A crow A crow") and third.alt_text.endswith("…")
    assert fourth.alt_text == "A crow on a gate at dawn"


def test_claude_drops_duplicates_and_near_empty_prompts_and_tops_up(claude):
    batch = numbered(0, 3) + [numbered(0, 1)[0].upper(), "  ", "two words", 17]
    claude.reply(body=claude_message(batch))
    claude.reply(body=claude_message(numbered(3, 2)))
    assert prompts_of(get_llm("claude").expand("crows", 5)) == numbered(0, 5)
    assert "existing prompts" in claude.requests[1]["json"]["messages"][0]["content"]


def test_claude_trims_long_prompts(claude):
    long_prompt = "a very long prompt " * 200
    claude.reply(body=claude_message([long_prompt]))
    [item] = get_llm("claude").expand("crows", 1)
    prompt = item.prompt
    assert len(prompt) <= 1000 and prompt.startswith("a very long prompt")


def test_claude_short_output_is_a_clear_permanent_error(claude):
    for _ in range(5):
        claude.reply(body=claude_message(numbered(0, 2)))
    with pytest.raises(PermanentProviderError, match="only 2 distinct usable prompts of 5"):
        get_llm("claude").expand("crows", 5)


def test_claude_429_keeps_retry_after(claude):
    claude.reply(
        429,
        {"type": "error", "error": {"type": "rate_limit_error", "message": "slow down"}},
        **{"retry-after": "7"},
    )
    with pytest.raises(TransientProviderError) as error:
        get_llm("claude").expand("crows", 3)
    assert error.value.retry_after == 7
    assert "429" in error.value.reason and "slow down" in error.value.reason


def test_claude_overloaded_529_is_transient(claude):
    claude.reply(
        529, {"type": "error", "error": {"type": "overloaded_error", "message": "Overloaded"}}
    )
    with pytest.raises(TransientProviderError, match="529"):
        get_llm("claude").expand("crows", 3)


def test_claude_500_then_success_with_sdk_retries(claude, settings):
    settings.KARASU["LLMS"]["claude"]["MAX_RETRIES"] = 1
    claude.reply(
        500,
        {"type": "error", "error": {"type": "api_error", "message": "boom"}},
        **{"retry-after-ms": "10"},
    )
    claude.reply(body=claude_message(numbered(0, 3)))
    assert prompts_of(get_llm("claude").expand("crows", 3)) == numbered(0, 3)
    assert len(claude.requests) == 2


def test_claude_refusal_max_tokens_and_malformed_output(claude):
    claude.reply(body=claude_message(content=[], stop_reason="refusal"))
    with pytest.raises(PermanentProviderError, match="refused"):
        get_llm("claude").expand("crows", 3)
    claude.reply(body=claude_message(numbered(0, 1), stop_reason="max_tokens"))
    with pytest.raises(PermanentProviderError, match="max_tokens"):
        get_llm("claude").expand("crows", 3)
    claude.reply(
        body=claude_message(
            content=[{"type": "text", "text": "Here you go!"}], stop_reason="end_turn"
        )
    )
    with pytest.raises(PermanentProviderError, match="malformed output"):
        get_llm("claude").expand("crows", 3)


def test_claude_auth_error_is_permanent_and_never_shows_the_key(claude):
    claude.reply(
        401,
        {
            "type": "error",
            "error": {"type": "authentication_error", "message": f"invalid x-api-key {CLAUDE_KEY}"},
        },
    )
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


def test_openai_happy_path_uses_json_schema(openai_api):
    openai_api.return_value = httpx.Response(
        200,
        json=completion(
            json.dumps({"prompts": with_alt(numbered(0, 4))}),
            usage={"prompt_tokens": 321, "completion_tokens": 654, "total_tokens": 975},
        ),
    )
    expansion = get_llm("openai").expand("crows", 4)
    assert prompts_of(expansion) == numbered(0, 4)
    request = openai_api.calls.last.request
    body = json.loads(request.content)
    assert body["response_format"]["type"] == "json_schema"
    assert body["response_format"]["json_schema"]["strict"] is True
    assert request.headers["authorization"] == f"Bearer {OPENAI_KEY}"
    assert [item.alt_text for item in expansion] == [alt_for(p) for p in numbered(0, 4)]
    assert expansion.usage == TokenUsage(input_tokens=321, output_tokens=654)


def test_openai_errors(openai_api):
    openai_api.side_effect = [
        httpx.Response(
            429, json={"error": {"message": "rate limited"}}, headers={"retry-after": "3"}
        ),
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
    prompts = prompts_of(first)
    assert len(set(prompts)) == 500
    assert all(p.startswith("Crows over Kyoto: ") and p.endswith("ink wash") for p in prompts)
    assert get_llm("demo").expand("Crows over Kyoto", 500, style="ink wash") == first
    assert first.usage == TokenUsage(0, 0)


def test_openai_schema_has_alt_text_and_missing_usage_counts_zero(openai_api):
    # A compatible server (vLLM, Ollama) may send no usage block at all.
    openai_api.return_value = httpx.Response(
        200, json=completion(json.dumps({"prompts": with_alt(numbered(0, 2))}))
    )
    expansion = get_llm("openai").expand("crows", 2)
    assert expansion.usage == TokenUsage(0, 0)
    schema = json.loads(openai_api.calls.last.request.content)["response_format"]["json_schema"]
    item = schema["schema"]["properties"]["prompts"]["items"]
    assert item["required"] == ["prompt", "alt_text"] and item["additionalProperties"] is False


def test_demo_llm_writes_a_literal_alt_text_for_every_prompt():
    expansion = get_llm("demo").expand("Crows over Kyoto", 50)
    for item in expansion:
        assert 0 < len(item.alt_text) <= MAX_ALT_TEXT_CHARS
        assert item.alt_text.endswith(": Crows over Kyoto")
        subject = next(subject for subject in SUBJECTS if subject in item.prompt)
        assert subject in item.alt_text  # it names what the picture shows
    assert len({item.alt_text for item in expansion}) == 50


def test_demo_alt_text_stays_short_with_a_long_theme():
    theme = "An extremely long theme " + "with many words " * 40
    [item] = get_llm("demo").expand(theme, 1)
    assert len(item.alt_text) <= MAX_ALT_TEXT_CHARS and item.alt_text.endswith("…")


# Alt text rules ---------------------------------------------------------------------------
def test_an_alt_text_is_never_empty_and_never_too_long():
    assert ImagePrompt("A crow on a torii gate at dawn. Ink wash, low angle.").alt_text == (
        "A crow on a torii gate at dawn"
    )
    assert ImagePrompt("a fox in the snow, watercolour", alt_text=None).alt_text == (
        "A fox in the snow, watercolour"
    )
    long_prompt = "word " * 400
    derived = ImagePrompt(long_prompt).alt_text
    assert 0 < len(derived) <= MAX_ALT_TEXT_CHARS and derived.endswith("…")
    written = ImagePrompt("a crow at dawn on a gate", alt_text="x" * 600).alt_text
    assert len(written) == MAX_ALT_TEXT_CHARS


# Languages: prompts for the image model, alt texts for the site's readers ---------------
JAPANESE_ITEMS = [
    {
        "prompt": "A lone crow on a Kyoto temple roof at dusk, ink wash, low angle",
        "alt_text": "夕暮れの京都の寺の屋根にとまる一羽のカラス",
    },
    {
        "prompt": "Crows circling a pagoda against an orange sky, woodblock print",
        "alt_text": "夕焼け空の五重塔の上を旋回するカラスたち",
    },
]


def alt_text_rule(schema: dict) -> str:
    return schema["properties"]["prompts"]["items"]["properties"]["alt_text"]["description"]


def test_claude_is_asked_for_english_prompts_and_alt_texts_in_the_themes_language(claude):
    claude.reply(body=claude_message(JAPANESE_ITEMS))
    expansion = get_llm("claude").expand("京都の烏、夕暮れ", 2)
    sent = claude.requests[0]["json"]
    assert "Write every prompt in English, whatever the language of the theme" in sent["system"]
    assert "Write every alt text in the language the theme is written in" in sent["system"]
    schema = sent["tools"][0]["input_schema"]
    assert "in the language of the theme" in alt_text_rule(schema)
    assert (
        "in English"
        in schema["properties"]["prompts"]["items"]["properties"]["prompt"]["description"]
    )
    # The Japanese alt texts come back whole.
    assert [item.alt_text for item in expansion] == [item["alt_text"] for item in JAPANESE_ITEMS]


def test_the_sites_language_is_asked_of_claude_and_openai_when_configured(
    claude, openai_api, settings
):
    settings.KARASU["ALT_TEXT_LANGUAGE"] = "zh-hans"
    settings.KARASU["PROMPT_LANGUAGE"] = "en"
    claude.reply(body=claude_message(numbered(0, 2)))
    openai_api.return_value = httpx.Response(
        200, json=completion(json.dumps({"prompts": with_alt(numbered(0, 2))}))
    )
    get_llm("claude").expand("Crows over Kyoto", 2)
    get_llm("openai").expand("Crows over Kyoto", 2)
    claude_sent = claude.requests[0]["json"]
    openai_sent = json.loads(openai_api.calls.last.request.content)
    openai_system = openai_sent["messages"][0]
    assert openai_system["role"] == "system"
    for system, schema in [
        (claude_sent["system"], claude_sent["tools"][0]["input_schema"]),
        (openai_system["content"], openai_sent["response_format"]["json_schema"]["schema"]),
    ]:
        assert "Write every alt text in Simplified Chinese, the language of the site" in system
        assert "Write every prompt in English" in system
        assert "in Simplified Chinese" in alt_text_rule(schema)


@pytest.mark.parametrize(
    ("setting", "name"),
    [("ja", "Japanese"), ("zh-hans", "Simplified Chinese"), ("zh", "Chinese"), ("AR", "Arabic")]
    + [("pt-br", "Brazilian Portuguese"), ("Schweizerdeutsch", "Schweizerdeutsch"), ("", "")],
)
def test_a_language_setting_is_named_for_the_llm(setting, name):
    assert language_name(setting) == name


def test_the_demo_writes_english_prompts_and_alt_texts_in_the_themes_language():
    for theme, language in [
        ("京都の烏、夕暮れ", "ja"),
        ("乌鸦在雪中", "zh"),
        ("غراب عند الغسق", "ar"),
        ("Crows — “at dusk”", "en"),
    ]:
        subjects = SUBJECTS if language == "en" else WORDS[language]["subjects"]
        for item in get_llm("demo").expand(theme, 10):
            assert any(subject in item.prompt for subject in SUBJECTS), item.prompt
            assert any(subject in item.alt_text for subject in subjects), item.alt_text
            assert theme in item.alt_text


def test_the_demo_follows_the_configured_languages(settings):
    settings.KARASU["ALT_TEXT_LANGUAGE"] = "Arabic"
    for item in get_llm("demo").expand("Crows over Kyoto", 10):
        assert any(subject in item.alt_text for subject in WORDS["ar"]["subjects"])
    # Prompts in Japanese are written without spaces: all 30 still count as prompts.
    settings.KARASU["PROMPT_LANGUAGE"] = "ja"
    settings.KARASU["ALT_TEXT_LANGUAGE"] = ""
    expansion = get_llm("demo").expand("乌鸦在雪中", 30)
    assert len(expansion) == 30
    for item in expansion:
        assert any(subject in item.prompt for subject in WORDS["ja"]["subjects"])
        assert any(subject in item.alt_text for subject in WORDS["zh"]["subjects"])


def test_prompts_in_scripts_without_spaces_are_counted_by_their_characters():
    kept = clean_prompts(["京都の路地裏で雨宿りするカラスを描いた水彩画", "乌鸦", "雨の京都"])
    assert [item.prompt for item in kept] == ["京都の路地裏で雨宿りするカラスを描いた水彩画"]
    # Its alt text, when the LLM wrote none, is its first sentence.
    [item] = clean_prompts(["雨宿りするカラスの水墨画。低い視点、夕暮れの光。"])
    assert item.alt_text == "雨宿りするカラスの水墨画"


@pytest.mark.parametrize(
    "prompt, one_word",
    [
        ("อีกาตัวหนึ่งเกาะอยู่บนประตูศาลเจ้าในยามเช้า", "อีกา"),  # Thai
        ("ກາໂຕໜຶ່ງຢູ່ເທິງປະຕູວັດໃນຕອນເຊົ້າ", "ກາ"),  # Lao
        ("ကျီးကန်းတစ်ကောင်သည်နံနက်ခင်းတွင်ဘုရားကျောင်းတံခါးပေါ်၌နားနေသည်", "ကျီးကန်း"),  # Burmese
        ("ក្អែកមួយក្បាលទំនៅលើទ្វារវត្តនៅពេលព្រឹក", "ក្អែក"),  # Khmer
    ],
)
def test_prompts_in_thai_lao_burmese_and_khmer_are_counted_by_their_letters(prompt, one_word):
    kept = clean_prompts([prompt, one_word])
    assert [item.prompt for item in kept] == [prompt]


def test_the_languages_are_read_from_the_environment(monkeypatch, tmp_path, settings):
    # The settings module run afresh, in this process, with the variables set.
    monkeypatch.setenv("KARASU_DATA_DIR", str(tmp_path))
    monkeypatch.setenv("KARASU_PROMPT_LANGUAGE", "en")
    monkeypatch.setenv("KARASU_ALT_TEXT_LANGUAGE", "ja")
    base = runpy.run_path(str(Path(settings.BASE_DIR) / "cms" / "settings" / "base.py"))
    settings.KARASU = base["KARASU"]
    prompt = system_prompt()
    assert "Write every prompt in English" in prompt
    assert "Write every alt text in Japanese, the language of the site" in prompt
