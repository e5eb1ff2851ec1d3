"""Expansion that keeps pace with the images (issue #19), against a stand-in Messages API
(and chat completions API) on 127.0.0.1 at 10x real speed, through the real SDKs, with a
real Huey consumer.

Real speed is 70 output tokens/s per call and 140 tokens per prompt with its alt text; here
700 tokens/s, so a 25-prompt call takes 5 s and a 500-prompt request, one call after
another, 100 s. The goals scale by 10 as well: first image call within 1.5 s of the
request, all prompts within 18 s.
"""

from __future__ import annotations

import time
import unicodedata

import pytest
from django.db.models import Max
from django.urls import reverse
from huey.contrib.djhuey import HUEY

# A worker imports its providers as it starts (generation.providers.import_provider_modules);
# the request is created at once here, so the import (2 s for anthropic) is done beforehand.
import generation.providers.claude  # noqa: F401
from generation import actions, services
from generation.limits import llm_limiter_for
from generation.models import ExpansionCall, GenerationRequest
from generation.providers import get_llm
from generation.providers.base import normalise
from tests.support.admin import NS
from tests.support.consumers import thread_consumer_running, wait_for
from tests.support.docs import documented_number
from tests.support.factories import make_request
from tests.support.fake_anthropic import PROMPT_TOKENS, FakeLLMServer, Fault
from tests.support.fake_http import FakeHTTPServer
from tests.support.llm_answers import CLAUDE_KEY, OPENAI_KEY
from tests.support.provider_calls import read_calls

Req = GenerationRequest.Status
JAPANESE = "京都の路地裏で雨宿りするカラス"
CHINESE = "江南水乡的清晨，乌篷船与石桥"


@pytest.fixture
def consumer(transactional_db):
    """A real consumer with threads for 8 LLM calls beside 16 image calls."""
    with thread_consumer_running(workers=28) as consumer:
        yield consumer


@pytest.fixture
def llm_server(settings, monkeypatch):
    servers = []

    def start(**options) -> FakeLLMServer:
        server = FakeLLMServer(**options)
        servers.append(server)
        monkeypatch.setenv("ANTHROPIC_BASE_URL", server.url)
        settings.ANTHROPIC_API_KEY = CLAUDE_KEY
        settings.OPENAI_API_KEY = OPENAI_KEY
        settings.KARASU["LLMS"]["claude"] = {
            **settings.KARASU["LLMS"]["claude"],
            "MAX_RETRIES": 0,
            "CONCURRENCY": 8,
        }
        settings.KARASU["LLMS"]["openai"] = {
            **settings.KARASU["LLMS"]["openai"],
            "BASE_URL": f"{server.url}/v1",
            "MAX_RETRIES": 0,
            "CONCURRENCY": 8,
        }
        settings.KARASU["RETRY"] = {**settings.KARASU.get("RETRY", {}), "BACKOFF_BASE": 0.1}
        llm_limiter_for.cache_clear()
        return server

    yield start
    for server in servers:
        server.close()
    llm_limiter_for.cache_clear()


@pytest.fixture
def images(demo, tmp_path):
    """The demo image model at 10x a fast model's speed, logging its calls."""
    log = tmp_path / "calls.log"
    demo(latency=0.3, concurrency=16, size=64, call_log=str(log))
    return log


def generate(request: GenerationRequest) -> None:
    message, error = actions.run(actions.ACTIONS["generate"], request)
    assert message and error is None


def terminal(request: GenerationRequest) -> bool:
    request.refresh_from_db()
    return request.is_terminal


def assert_prompts_whole(request: GenerationRequest, count: int, theme: str) -> None:
    jobs = list(request.jobs.order_by("index").values_list("index", "prompt"))
    assert [index for index, _ in jobs] == list(range(count))  # no gap, no duplicate
    prompts = [prompt for _, prompt in jobs]
    assert len({normalise(p) for p in prompts}) == count  # distinct across parallel calls
    assert all(theme in prompt for prompt in prompts)


# The 500-image request --------------------------------------------------------------------
def test_500_images_at_10x_real_speed_start_at_once_and_flow_into_images(
    consumer, collections, llm_server, images
):
    server = llm_server(tokens_per_second=700, first_token=0.04)
    request = make_request(500, with_jobs=False, theme=JAPANESE, llm="claude")
    generate(request)
    wait_for(lambda: terminal(request), 90, interval=0.2, message="request finished")
    assert request.status == Req.COMPLETED and request.jobs_succeeded == 500
    created = request.created_at.timestamp()
    first_image_call = min(call.start for call in read_calls(images)) - created
    all_written = (request.expansion_finished_at - request.created_at).total_seconds()
    last_image = (
        request.jobs.aggregate(end=Max("finished_at"))["end"] - request.created_at
    ).total_seconds()
    # Scaled goals with room for a loaded 2-core machine: 1.5 s and 18 s at 10x speed (one
    # call after another, the first image came after 100 s and all prompts after 100 s).
    assert server.first_call_at - created < 1.0
    assert first_image_call < 3.0, first_image_call
    assert all_written < 25.0, all_written
    # The images started long before the last prompts were written.
    assert first_image_call < all_written / 3
    assert_prompts_whole(request, 500, JAPANESE)
    needed = 500 * PROMPT_TOKENS
    assert server.billed_output_tokens <= 1.15 * needed
    assert request.llm_output_tokens == server.billed_output_tokens  # counted once
    peak = max_in_flight(server)
    assert 2 <= peak <= 8  # parallel, within the LLM's CONCURRENCY
    print(
        f"first LLM call {server.first_call_at - created:.2f} s, first image call "
        f"{first_image_call:.2f} s, prompts {all_written:.2f} s, last image "
        f"{last_image:.2f} s, peak LLM calls {peak}"
    )


def test_a_calls_prompts_become_images_before_the_call_returns(
    consumer, collections, llm_server, images
):
    # Slow: 2 prompts a second, so the first call (4 prompts) takes 2 s and the second
    # (8 prompts) 4 s; they stream side by side.
    server = llm_server(tokens_per_second=280, first_token=0.05)
    request = make_request(12, with_jobs=False, theme=CHINESE, llm="claude")
    generate(request)
    wait_for(lambda: terminal(request), 30, interval=0.1, message="request finished")
    assert request.status == Req.COMPLETED and request.jobs_succeeded == 12
    assert_prompts_whole(request, 12, CHINESE)
    first_answer = min(call.ended for call in server.calls)
    starts = sorted(call.start for call in read_calls(images))
    # The first image call started while every LLM call was still writing: its prompt
    # was written and queued as soon as the LLM had completed it.
    assert starts[0] < first_answer - 1.0, (
        starts[0] - server.first_call_at,
        first_answer - server.first_call_at,
    )
    # And images went on starting while the calls wrote the rest.
    assert sum(start < first_answer for start in starts) >= 2
    assert server.billed_output_tokens == 12 * PROMPT_TOKENS


def test_while_the_image_slots_are_idle_each_prompt_is_written_as_it_arrives(
    consumer, collections, llm_server, images
):
    """One call of 4 prompts, one every 0.5 s: the image model's 16 slots are idle, so
    each prompt becomes a job (and an image call) as it arrives, not in a group a second
    later (WRITE_EVERY)."""
    server = llm_server(tokens_per_second=280, first_token=0.05)
    request = make_request(4, with_jobs=False, theme=JAPANESE, llm="claude")
    generate(request)
    wait_for(lambda: terminal(request), 30, interval=0.1, message="request finished")
    assert request.status == Req.COMPLETED and request.jobs_succeeded == 4
    [call] = server.calls
    # Prompt i is complete at started + first token + (i + 1) x 0.5 s.
    per_prompt = PROMPT_TOKENS / 280
    written = [call.started + 0.05 + (i + 1) * per_prompt for i in range(4)]
    starts = sorted(c.start for c in read_calls(images))
    assert len(starts) == 4
    # The second prompt's image starts before the third prompt is even written; grouped
    # by the second, it would have waited for the third.
    assert starts[1] < written[2], [round(t - call.started, 2) for t in starts]


def test_a_generation_from_the_image_chooser_starts_its_first_candidate_after_one_prompt(
    consumer, collections, llm_server, images, settings, client, django_user_model
):
    """The chooser's Generate tab asks for 4 candidates: one short call, whose first
    prompt becomes an image call as soon as it is written, long before the call ends."""
    settings.KARASU["DEFAULT_LLM"] = "claude"
    server = llm_server(tokens_per_second=280, first_token=0.05)
    client.force_login(django_user_model.objects.create_superuser("e", "e@example.com", "pw"))
    response = client.post(
        reverse(f"{NS}:chooser_generate"),
        {
            "karasu-generate-theme": JAPANESE,
            "karasu-generate-count": "4",
            "karasu-generate-image_model": "demo",
            "karasu-generate-aspect_ratio": "1:1",
            "karasu-generate-collection": str(collections.pk),
        },
    )
    assert response.status_code == 200
    request = GenerationRequest.objects.get(from_chooser=True)
    assert request.llm == "claude"
    wait_for(lambda: terminal(request), 30, interval=0.1, message="request finished")
    assert request.status == Req.COMPLETED and request.jobs_succeeded == 4
    [call] = server.calls
    first_prompt_written = call.started + 0.05 + PROMPT_TOKENS / 280
    first_image = min(c.start for c in read_calls(images))
    assert first_image < call.ended - 1.0  # not after the call: 1.5 s of it still to come
    assert first_image < first_prompt_written + 0.5, first_image - first_prompt_written


def max_in_flight(server: FakeLLMServer) -> int:
    events = sorted([(c.started, 1) for c in server.calls] + [(c.ended, -1) for c in server.calls])
    peak = current = 0
    for _, delta in events:
        current += delta
        peak = max(peak, current)
    return peak


# A failed call ------------------------------------------------------------------------------
def test_a_stream_cut_off_midway_keeps_its_prompts_and_its_retry_writes_only_the_rest(
    consumer, collections, llm_server, images
):
    # Call 3 streams half its tokens, then an SSE overloaded_error event (on the 200
    # response, as the API sends it); the tokens generated are billed.
    server = llm_server(
        tokens_per_second=3500, first_token=0.02, faults={3: Fault(529, midway=True)}
    )
    request = make_request(104, with_jobs=False, theme=JAPANESE, llm="claude")
    generate(request)
    wait_for(lambda: terminal(request), 60, interval=0.2, message="request finished")
    assert request.status == Req.COMPLETED and request.jobs_succeeded == 104
    assert_prompts_whole(request, 104, JAPANESE)
    cut = server.calls[2]
    assert cut.status == 529 and 0 < cut.prompts < cut.asked
    # The prompts it streamed before the error are kept: its retry asks only for the rest,
    # one call more than the plan, not a whole rerun.
    assert len(server.calls) == len(get_llm("claude").plan_calls(104)) + 1
    retries = [c for c in server.calls[3:] if c.asked == cut.asked - cut.prompts]
    assert retries, [(c.asked, c.prompts) for c in server.calls]
    (call,) = [c for c in request.expansion_calls.all() if c.attempts > 1]
    assert call.status == ExpansionCall.Status.DONE and call.prompts_written == cut.asked
    # Billed once: the cut call's complete prompts, plus at most the one it was writing.
    needed = 104 * PROMPT_TOKENS
    assert needed <= server.billed_output_tokens <= needed + PROMPT_TOKENS
    # The request counts what the provider reported, once: every answer's usage, and the
    # cut stream's input tokens (its output tokens are never reported: 1, from its start).
    answered = sum(c.output_tokens for c in server.calls if c.status == 200)
    assert request.llm_output_tokens == answered + 1
    assert request.llm_input_tokens == len(server.calls) * server.input_tokens


def test_a_call_that_fails_for_good_leaves_the_others_prompts_and_says_why(
    consumer, collections, llm_server, images, settings
):
    # Call 2 is refused as a bad request: permanent, never retried.
    server = llm_server(tokens_per_second=5000, first_token=0.01, faults={2: Fault(400)})
    # Its calls are of 4, 8, 12, 16 and 14 prompts.
    request = make_request(54, with_jobs=False, theme=CHINESE, llm="claude")
    generate(request)
    wait_for(lambda: terminal(request), 60, interval=0.2, message="request finished")
    refused = server.calls[1]  # the second to arrive: 4 or 25 prompts
    written = 54 - refused.asked
    assert request.status == Req.COMPLETED_WITH_ERRORS
    assert request.jobs_total == written and request.jobs_succeeded == written
    assert request.error.startswith(f"wrote {written} of 54 prompts: claude: HTTP 400")
    assert_prompts_whole(request, written, CHINESE)
    # The refused call is not retried, nor replaced.
    assert len(server.calls) == len(get_llm("claude").plan_calls(54))


# Rate limits ------------------------------------------------------------------------------
def test_retry_after_is_honoured(consumer, collections, llm_server, images):
    server = llm_server(
        tokens_per_second=5000, first_token=0.01, faults={1: Fault(429, retry_after="1.5")}
    )
    request = make_request(4, with_jobs=False, llm="claude")
    generate(request)
    wait_for(lambda: terminal(request), 30, interval=0.1, message="request finished")
    assert request.status == Req.COMPLETED
    refused, retried = server.calls
    assert retried.started - refused.ended >= 1.4


def test_a_hostile_retry_after_is_capped(consumer, collections, llm_server, images, settings):
    server = llm_server(
        tokens_per_second=5000, first_token=0.01, faults={1: Fault(429, retry_after="99999999")}
    )
    # The cap is 60 s by default; scaled down here so the test waits for it.
    settings.KARASU["RETRY"] = {**settings.KARASU["RETRY"], "RETRY_AFTER_CAP": 1.0}
    request = make_request(4, with_jobs=False, llm="claude")
    generate(request)
    wait_for(lambda: terminal(request), 20, interval=0.1, message="request finished")
    assert request.status == Req.COMPLETED
    refused, retried = server.calls
    assert 0.5 <= retried.started - refused.ended <= 3.0


def test_a_call_is_tried_as_often_as_the_docs_say(consumer, collections, llm_server, images):
    tries = documented_number("configuration.md", r"A call is tried up to (\d+) times on its own")
    server = llm_server(
        tokens_per_second=5000,
        first_token=0.01,
        faults={number: Fault(529) for number in range(1, tries + 3)},  # every call overloaded
    )
    # One call of 4 prompts.
    request = make_request(4, with_jobs=False, theme="Crows over Kyoto, 京都の烏", llm="claude")
    generate(request)
    wait_for(lambda: terminal(request), 30, interval=0.1, message="request finished")
    assert request.status == Req.FAILED
    assert [call.status for call in server.calls] == [529] * tries


# Parallel calls, OpenAI-compatible too --------------------------------------------------------
def test_openai_compatible_calls_run_in_parallel_within_their_concurrency(
    consumer, collections, llm_server, images, settings
):
    server = llm_server(tokens_per_second=3500, first_token=0.02)
    settings.KARASU["LLMS"]["openai"]["CONCURRENCY"] = 3
    request = make_request(129, with_jobs=False, theme=CHINESE, llm="openai", auto_generate=False)
    generate(request)
    wait_for(
        lambda: request.refresh_from_db() or request.status == Req.DRAFT,
        60,
        interval=0.1,
        message="prompts written",
    )
    assert_prompts_whole(request, 129, CHINESE)
    assert max_in_flight(server) == 3
    assert {call.api for call in server.calls} == {"openai"}


def test_duplicates_across_calls_are_dropped_and_topped_up(
    consumer, collections, llm_server, images
):
    # Each call repeats two prompts of the call before it, as an LLM may.
    server = llm_server(tokens_per_second=5000, first_token=0.01, duplicates=2)
    request = make_request(54, with_jobs=False, theme=JAPANESE, llm="claude", auto_generate=False)
    generate(request)
    wait_for(
        lambda: request.refresh_from_db() or request.status == Req.DRAFT,
        60,
        interval=0.1,
        message="prompts written",
    )
    assert_prompts_whole(request, 54, JAPANESE)
    assert request.expansion_calls.filter(round__gt=0).exists()  # topped up
    assert server.calls


# The deadline bounds each call -----------------------------------------------------------------
def test_the_deadline_bounds_each_call_not_the_expansion(
    consumer, collections, llm_server, images, settings, monkeypatch
):
    # 5 calls of at most 25 prompts, 1 s each, 2 at a time: about 3 s in all, over the
    # 2 s deadline; each call well within it.
    llm_server(tokens_per_second=3500, first_token=0.01)
    settings.KARASU["LLMS"]["claude"]["CONCURRENCY"] = 2
    monkeypatch.setattr(HUEY, "task_deadline", 2.0)
    request = make_request(100, with_jobs=False, llm="claude", auto_generate=False)
    generate(request)
    wait_for(
        lambda: request.refresh_from_db() or request.status not in (Req.QUEUED, Req.EXPANDING),
        30,
        interval=0.1,
        message="prompts written",
    )
    assert request.status == Req.DRAFT and request.jobs_total == 100, request.error
    assert "timed out" not in request.error


# Generate while an expansion runs -----------------------------------------------------------
def test_generate_during_an_expansion_never_starts_a_second_one(
    consumer, collections, llm_server, images
):
    server = llm_server(tokens_per_second=140, first_token=0.01)  # 1 s a prompt: slow
    request = make_request(8, with_jobs=False, llm="claude", auto_generate=False)
    generate(request)
    wait_for(lambda: server.calls, 10, message="the first LLM call")
    # The request fails while its calls still run (as a past deadline or a lasting
    # database error fails it); the editor then clicks Generate again.
    services.fail_request(request.pk, "timed out: no result within 300 s")
    request.refresh_from_db()
    assert request.status == Req.FAILED
    message, error = actions.run(actions.ACTIONS["generate"], request)
    assert message == ""
    time.sleep(1.5)
    themes_started = len(server.calls)
    assert themes_started <= 2  # the first expansion's calls only (4 and 4 prompts)
    wait_for(
        lambda: not request.expansion_calls.filter(status__in=ExpansionCall.OPEN).exists(),
        20,
        message="calls over",
    )
    request.refresh_from_db()
    assert request.status == Req.FAILED and request.jobs_total == 0
    # Each call's stream ended at its first prompt (nothing more was wanted), so less was
    # paid than its 4 prompts; what the API reported for it is counted (its input tokens;
    # a stream cut off never reports its output tokens).
    assert server.billed_output_tokens < 2 * 4 * PROMPT_TOKENS
    assert request.llm_input_tokens == len(server.calls) * server.input_tokens
    # Once nothing runs, Generate starts it again.
    assert actions.run(actions.ACTIONS["generate"], request)[0]


# Control characters ----------------------------------------------------------------------------
def test_nul_and_control_characters_never_reach_the_database(
    db, collections, settings, monkeypatch
):
    server = FakeHTTPServer()
    monkeypatch.setenv("ANTHROPIC_BASE_URL", server.url)
    settings.ANTHROPIC_API_KEY = CLAUDE_KEY
    settings.KARASU["LLMS"]["claude"] = {**settings.KARASU["LLMS"]["claude"], "MAX_RETRIES": 0}
    prompts = [
        "カラス\x00 on a gate\x07 at dawn, ink",
        "a \x1bcrow\u0085 over 京都 rooftops",
        "two crows\x00\x00 in fog over a pagoda",
    ]
    server.reply(
        body={
            "id": "msg_1",
            "type": "message",
            "role": "assistant",
            "model": "claude",
            "content": [
                {
                    "type": "tool_use",
                    "id": "t",
                    "name": "submit_prompts",
                    "input": {"prompts": [{"prompt": p, "alt_text": p} for p in prompts]},
                }
            ],
            "stop_reason": "tool_use",
            "stop_sequence": None,
            "usage": {"input_tokens": 10, "output_tokens": 10},
        }
    )
    try:
        request = make_request(3, with_jobs=False, theme="Crows", llm="claude", status=Req.QUEUED)
        services.expand_request(request.pk)
    finally:
        server.close()
    written = list(request.jobs.order_by("index").values_list("prompt", "alt_text"))
    assert [p for p, _ in written] == [
        "カラス on a gate at dawn, ink",
        "a crow over 京都 rooftops",
        "two crows in fog over a pagoda",
    ]
    for prompt, alt_text in written:
        assert not any(unicodedata.category(c) == "Cc" for c in prompt + alt_text)
