"""An LLM call is streamed (and paid) once: its claim outlives a stalled worker's message
lease while the heartbeat renews it, and only a claim that nobody renews any more is taken
over. Against a stand-in Messages API on 127.0.0.1, through the real anthropic SDK, with
the calls counted on the provider's side."""

from __future__ import annotations

import threading
import time
from datetime import timedelta

import pytest
from django.utils import timezone
from huey.contrib.djhuey import HUEY

# A worker imports its providers as it starts; here the import is done beforehand, so
# that the stream starts within the claim's first lease.
import generation.providers.claude  # noqa: F401
from generation import services
from generation.limits import llm_limiter_for
from generation.models import ExpansionCall, GenerationRequest
from generation.tasks import enqueue_calls
from huey_tasks.queue import LeasingHuey
from tests.support.consumers import thread_consumer_running, wait_for
from tests.support.factories import make_request
from tests.support.fake_anthropic import FakeLLMServer
from tests.support.llm_answers import CLAUDE_KEY

pytestmark = [pytest.mark.django_db(transaction=True), pytest.mark.usefixtures("collections")]
Call = ExpansionCall.Status
THEME = "烏の群れが夕焼けの鳥居を越える — سرب غربان 🐦‍⬛"


@pytest.fixture
def llm_server(settings, monkeypatch):
    # Four prompts of 140 tokens at 200 tokens/s: a stream of about 3 s.
    server = FakeLLMServer(tokens_per_second=200, first_token=0.05)
    monkeypatch.setenv("ANTHROPIC_BASE_URL", server.url)
    settings.ANTHROPIC_API_KEY = CLAUDE_KEY
    settings.KARASU["LLMS"]["claude"] = {**settings.KARASU["LLMS"]["claude"], "MAX_RETRIES": 0}
    llm_limiter_for.cache_clear()
    yield server
    server.close()
    llm_limiter_for.cache_clear()


def planned_call(count: int = 4) -> tuple[GenerationRequest, int]:
    request = make_request(
        count,
        with_jobs=False,
        theme=THEME,
        llm="claude",
        auto_generate=False,
        status=GenerationRequest.Status.QUEUED,
    )
    [call_id] = services.plan_expansion(request.pk)
    return request, call_id


def test_a_redelivered_message_waits_for_the_stream_under_way(llm_server, monkeypatch):
    """The worker's heartbeat stalls mid-stream (a MongoDB failover, a GC pause) past its
    message's lease, and another worker gets the same message. The stream's claim is
    renewed, so the other worker waits instead of streaming the call a second time; the
    first stream writes the prompts."""
    monkeypatch.setattr(HUEY.storage, "lease_seconds", 1.0)  # call claims: 2 s
    monkeypatch.setattr(HUEY, "beat", lambda: None)  # this test beats by hand
    HUEY.storage.flush_all()
    request, call_id = planned_call()
    enqueue_calls(request.pk, [call_id])
    first = HUEY.dequeue()
    runner = threading.Thread(target=HUEY.execute, args=(first,), daemon=True)
    runner.start()
    wait_for(lambda: llm_server.calls, 10, interval=0.02, message="the stream started")
    time.sleep(1.1)  # no heartbeat: the message's lease runs out under the stream
    other = HUEY.dequeue()  # another worker gets the same message
    assert other is not None and other.delivery.message_id == first.delivery.message_id
    stop = threading.Event()
    beater = threading.Thread(
        target=lambda: [LeasingHuey.beat(HUEY) for _ in iter(lambda: stop.wait(0.2), True)],
        daemon=True,
    )
    beater.start()  # the heartbeat works again and renews the call's claim
    try:
        HUEY.execute(other)
        assert len(llm_server.calls) == 1  # no second stream
        assert HUEY.storage.schedule_size() == 1  # the redelivery looks again later
        runner.join(15)
        assert not runner.is_alive()
    finally:
        stop.set()
        beater.join(5)
    call = ExpansionCall.objects.get(pk=call_id)
    assert call.status == Call.DONE and call.attempts == 1
    assert len(llm_server.calls) == 1 and llm_server.calls[0].prompts == 4
    assert request.jobs.count() == 4
    assert all(THEME in prompt for prompt in request.jobs.values_list("prompt", flat=True))
    HUEY.storage.flush_all()


def test_a_call_whose_claim_is_not_renewed_is_taken_over_once_it_expires(llm_server, monkeypatch):
    """A worker claimed the call and died (no heartbeat renews its claim); its message is
    delivered again. The new worker waits for the claim to run out, then makes the call
    and writes its prompts."""
    monkeypatch.setattr(HUEY.storage, "lease_seconds", 1.0)
    request, call_id = planned_call()
    claimed_at = time.time()
    # The dead worker's claim, as its claim_call wrote it; nothing renews it.
    ExpansionCall.objects.filter(pk=call_id).update(
        status=Call.RUNNING,
        token="the-dead-workers-token",
        claim_message="the-dead-workers-message",
        claim_expires_at=timezone.now() + timedelta(seconds=2),
        attempts=1,
    )
    with thread_consumer_running(workers=2):
        enqueue_calls(request.pk, [call_id])
        wait_for(
            lambda: ExpansionCall.objects.get(pk=call_id).status == Call.DONE,
            30,
            message="the call taken over and done",
        )
    call = ExpansionCall.objects.get(pk=call_id)
    assert call.attempts == 2 and call.prompts_written == 4
    assert len(llm_server.calls) == 1
    assert llm_server.calls[0].started >= claimed_at + 2.0  # not before the claim ran out
    assert request.jobs.count() == 4
