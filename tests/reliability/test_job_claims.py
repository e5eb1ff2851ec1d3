"""At most one provider call in flight per job: exclusive job claims, fenced writes, and
jobs queued exactly once however often editors click."""

import threading
import time
import uuid

import pytest
from django.db import close_old_connections
from django.utils import timezone
from huey.contrib.djhuey import HUEY
from wagtail.images import get_image_model

from generation import actions, services
from generation.models import GenerationJob, GenerationRequest
from generation.providers import get_image_model as get_provider
from generation.tasks import generate_image, queue_jobs
from huey_tasks.queue import LeasingHuey
from tests.support.consumers import queued_tasks, wait_for
from tests.support.factories import make_request, settled
from tests.support.provider_calls import calls_per_key, overlapping_calls, read_calls

pytestmark = [pytest.mark.django_db(transaction=True), pytest.mark.usefixtures("collections")]
Job = GenerationJob.Status
Req = GenerationRequest.Status
Image = get_image_model()


def test_duplicate_messages_make_one_provider_call_per_job(
    queue_backend, demo, call_log, thread_consumer
):
    demo(latency=0.3, concurrency=8)
    request = make_request(6)
    ids = queue_jobs(list(request.jobs.values_list("pk", flat=True)))
    # Every job gets two more messages: a double enqueue and a redelivery's twin.
    for job_id in ids:
        for _ in range(2):
            HUEY.enqueue(generate_image.s(job_id, id=f"dup-{job_id}-{uuid.uuid4().hex[:6]}"))
    wait_for(lambda: settled(request), 60, message="request settled")
    wait_for(
        lambda: (
            HUEY.storage.queue_size() + HUEY.storage.schedule_size() + HUEY.storage.leased_count()
            == 0
        ),
        30,
        message="duplicates drained",
    )
    assert request.status == Req.COMPLETED
    calls = calls_per_key(call_log)
    assert len(calls) == 6 and set(calls.values()) == {1}
    assert overlapping_calls(call_log) == []
    assert Image.objects.filter(generation_request_id=request.pk).count() == 6


def test_a_call_whose_message_was_taken_over_keeps_its_job(
    demo, call_log, queue_backend, monkeypatch
):
    """The heartbeat stalls mid-call (a queue-storage failover) and another worker claims
    the message. The call still in flight keeps its job claim alive, so the new holder
    finds the job busy instead of calling: one call, one image."""
    monkeypatch.setattr(HUEY.storage, "lease_seconds", 0.5)  # job claims: 2 leases
    monkeypatch.setattr(HUEY, "beat", lambda: None)  # this test beats by hand
    demo(latency=3.0)
    request = make_request(1)
    [job_id] = queue_jobs(list(request.jobs.values_list("pk", flat=True)))
    first = HUEY.dequeue()
    runner = threading.Thread(target=HUEY.execute, args=(first,), daemon=True)
    runner.start()
    wait_for(lambda: call_log.exists() and read_calls(call_log), 5, message="call started")
    time.sleep(0.6)  # no heartbeat: the message's lease runs out
    other = HUEY.storage.claim(lease_seconds=30)  # another worker takes the message
    assert other is not None and other.message_id == first.delivery.message_id
    stop = threading.Event()
    beater = threading.Thread(
        target=lambda: [LeasingHuey.beat(HUEY) for _ in iter(lambda: stop.wait(0.15), True)],
        daemon=True,
    )
    beater.start()  # the heartbeat works again, and finds the message lost
    try:
        time.sleep(1.5)  # past the expiry of a claim nobody renewed
        with pytest.raises(services.JobBusy):  # what the other worker's task meets
            services.claim_job(GenerationJob.objects.get(pk=job_id), "other-worker", 30)
        runner.join(10)
    finally:
        stop.set()
        beater.join(5)
    assert [call.outcome for call in read_calls(call_log)] == ["ok"]
    job = GenerationJob.objects.get(pk=job_id)
    assert job.status == Job.SUCCEEDED and job.image_id
    assert HUEY.storage.leased_count() == 1  # still the other worker's to settle
    HUEY.storage.flush_all()


@pytest.mark.parametrize("taken", ["job claim", "provider slot"])
def test_a_worker_paused_past_its_leases_before_the_call_does_not_call(
    taken, demo, call_log, queue_backend, monkeypatch
):
    """A worker pauses (GC, a frozen VM) between its claims and the call, with its
    heartbeat paused too; meanwhile another worker takes the job's claim or the provider's
    only slot. Right before calling it finds out, and re-schedules instead."""
    monkeypatch.setattr(HUEY.storage, "lease_seconds", 0.3)  # job claims: 0.6 s
    monkeypatch.setattr(HUEY, "beat", lambda: None)
    demo(concurrency=1)
    request = make_request(1)
    [job_id] = queue_jobs(list(request.jobs.values_list("pk", flat=True)))

    def pause_then_lose(*args):
        time.sleep(0.7)  # past both leases
        if taken == "job claim":
            assert services.claim_job(GenerationJob.objects.get(pk=job_id), "other", 30)
        else:
            assert HUEY.storage.acquire_slot("image:demo", 1, "other", 30) is not None

    monkeypatch.setattr("generation.tasks.MEDIA.ensure_writable", pause_then_lose)
    HUEY.execute(HUEY.dequeue())
    assert not call_log.exists()  # no call was made
    assert HUEY.storage.schedule_size() == 1  # the task looks again later
    job = GenerationJob.objects.get(pk=job_id)
    assert job.claim_token == ("other" if taken == "job claim" else "")
    HUEY.storage.flush_all()


def test_the_heartbeat_reports_only_claims_another_worker_took(demo):
    """A claim kept is extended; one this worker gave back itself (its job finished just
    before the hold was dropped) is not reported lost; one another worker took is."""
    request = make_request(3)
    kept, finished, taken = request.jobs.order_by("index")
    for job in (kept, finished, taken):
        assert services.claim_job(job, f"mine-{job.pk}", 1)
    assert services.finish_job(finished.pk, Job.FAILED, error="x", token=f"mine-{finished.pk}")
    GenerationJob.objects.filter(pk=taken.pk).update(claim_expires_at="2000-01-01T00:00Z")
    assert services.claim_job(GenerationJob.objects.get(pk=taken.pk), "theirs", 30)
    claims = [(job.pk, f"mine-{job.pk}") for job in (kept, finished, taken)]
    assert services.extend_job_claims(claims, 60) == {(taken.pk, f"mine-{taken.pk}")}
    kept.refresh_from_db()
    assert (kept.claim_expires_at - timezone.now()).total_seconds() > 50


def test_a_message_claimed_twice_in_one_process_is_lost_by_the_earlier_claim(
    queue_backend, monkeypatch
):
    monkeypatch.setattr(HUEY.storage, "lease_seconds", 0.2)
    monkeypatch.setattr(HUEY, "beat", lambda: None)
    HUEY.storage.flush_all()
    HUEY.enqueue(generate_image.s(0))
    first = HUEY.dequeue()
    time.sleep(0.3)  # the heartbeat stalled: another thread of this process claims it
    second = HUEY.dequeue()
    LeasingHuey.beat(HUEY)
    running = {r.delivery.token: r for r in HUEY._running.values()}
    assert running[first.delivery.token].lost and not running[second.delivery.token].lost
    HUEY.execute(first)  # settles nothing: the message is the later claim's
    assert HUEY.storage.leased_count() == 1
    HUEY.execute(second)  # no such job: nothing to do, acked
    assert HUEY.storage.leased_count() == 0 and HUEY._running == {}


def test_a_live_claim_sends_the_duplicate_away(demo):
    request = make_request(1)
    job = request.jobs.get()
    assert services.claim_job(job, "first", 30)
    with pytest.raises(services.JobBusy):
        services.claim_job(GenerationJob.objects.get(pk=job.pk), "second", 30)
    # An expired claim is taken over, and the old holder is fenced out.
    GenerationJob.objects.filter(pk=job.pk).update(claim_expires_at="2000-01-01T00:00Z")
    assert services.claim_job(GenerationJob.objects.get(pk=job.pk), "second", 30)
    generated = get_provider("demo").generate(job.prompt, seed=1)
    assert services.store(job, "first", generated) is False
    assert not Image.objects.filter(generation_job_id=job.pk).exists()
    assert services.store(job, "second", generated) is True
    job.refresh_from_db()
    assert job.status == Job.SUCCEEDED and job.claim_token == "" and job.attempts == 2


def test_a_late_result_after_revoke_files_no_image(demo, tmp_path):
    request = make_request(1)
    job = request.jobs.get()
    services.claim_job(job, "holder", 30)
    services.finish_job(job.pk, Job.CANCELLED)  # the monitor's revoke
    generated = get_provider("demo").generate(job.prompt, seed=1)
    assert services.store(job, "holder", generated) is False
    assert not Image.objects.filter(generation_job_id=job.pk).exists()
    from django.conf import settings

    files = list((settings.MEDIA_ROOT / "original_images").glob(f"*-job{job.pk}.*"))
    assert files == []  # no orphan file either


def _concurrently(fn, times: int = 2) -> list:
    barrier = threading.Barrier(times)
    results = [None] * times

    def run(i):
        barrier.wait()
        try:
            results[i] = fn()
        finally:
            close_old_connections()

    threads = [threading.Thread(target=run, args=(i,)) for i in range(times)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(30)
    return results


def test_two_generate_pending_clicks_enqueue_each_job_once(demo):
    HUEY.storage.flush_all()
    request = make_request(20, status=Req.DRAFT)
    _concurrently(
        lambda: actions.generate_pending(GenerationRequest.objects.get(pk=request.pk)), times=3
    )
    tasks = queued_tasks("generate_image")
    assert sorted(task.args[0] for task in tasks) == sorted(
        request.jobs.values_list("pk", flat=True)
    )
    assert request.jobs.filter(status=Job.QUEUED).count() == 20
    HUEY.storage.flush_all()


def test_two_retry_failed_clicks_reset_and_count_each_job_once(demo):
    HUEY.storage.flush_all()
    request = make_request(
        10, status=Req.COMPLETED_WITH_ERRORS, job_status=Job.FAILED, jobs_failed=10
    )
    results = _concurrently(
        lambda: services.reset_failed_jobs(GenerationRequest.objects.get(pk=request.pk))
    )
    assert sorted(len(ids) for ids in results) == [0, 10]
    request.refresh_from_db()
    assert request.jobs_failed == 0 and request.status == Req.GENERATING
    _concurrently(lambda: queue_jobs(results[0] or results[1]))
    assert len(queued_tasks("generate_image")) == 10
    HUEY.storage.flush_all()


def test_two_generate_clicks_start_one_expansion(demo):
    HUEY.storage.flush_all()
    request = GenerationRequest.objects.create(
        theme="Moths", count=3, llm="demo", image_model="demo"
    )
    messages = _concurrently(lambda: actions.generate(GenerationRequest.objects.get(pk=request.pk)))
    assert sorted(bool(m) for m in messages) == [False, True]
    assert len(queued_tasks("expand_prompt")) == 1
    HUEY.storage.flush_all()


def test_a_fan_out_that_fails_half_way_leaves_no_queued_job_without_a_message(demo):
    HUEY.storage.flush_all()
    request = make_request(5)
    job_ids = list(request.jobs.values_list("pk", flat=True))
    original = HUEY.storage.enqueue_many

    def blip(*args, **kwargs):
        raise OSError("database is locked")

    HUEY.storage.enqueue_many = blip
    try:
        with pytest.raises(OSError):
            queue_jobs(job_ids)
    finally:
        HUEY.storage.enqueue_many = original
    assert set(request.jobs.values_list("status", flat=True)) == {Job.PENDING}
    # The retried expansion finds the prompts written and completes the fan-out.
    assert sorted(services.expand_request(request.pk)) == sorted(job_ids)
    assert len(queue_jobs(job_ids)) == 5 and len(queued_tasks("generate_image")) == 5
    HUEY.storage.flush_all()


def test_a_fan_out_that_fails_after_its_first_chunk_keeps_what_it_queued(demo, monkeypatch):
    HUEY.storage.flush_all()
    monkeypatch.setattr("generation.tasks.FAN_OUT_CHUNK", 2)
    request = make_request(5)
    job_ids = list(request.jobs.order_by("index").values_list("pk", flat=True))
    original = HUEY.storage.enqueue_many
    chunks = []

    def second_chunk_fails(messages, **kwargs):
        chunks.append(len(messages))
        if len(chunks) == 2:
            raise OSError("database is locked")
        return original(messages, **kwargs)

    monkeypatch.setattr(HUEY.storage, "enqueue_many", second_chunk_fails)
    with pytest.raises(OSError):
        queue_jobs(job_ids)
    statuses = dict(request.jobs.values_list("pk", "status"))
    # The first two images (by index) have their messages; the other three are pending.
    assert [statuses[pk] for pk in job_ids] == [Job.QUEUED] * 2 + [Job.PENDING] * 3
    assert len(queued_tasks("generate_image")) == 2
    monkeypatch.setattr(HUEY.storage, "enqueue_many", original)
    assert sorted(services.expand_request(request.pk)) == sorted(job_ids[2:])
    assert len(queue_jobs(job_ids[2:])) == 3 and len(queued_tasks("generate_image")) == 5
    HUEY.storage.flush_all()


def test_an_expansion_that_finishes_after_cancel_creates_nothing(demo, settings, monkeypatch):
    request = GenerationRequest.objects.create(
        theme="Moths", count=3, llm="demo", image_model="demo", status=Req.QUEUED
    )
    from generation.providers.demo import DemoLLM

    original = DemoLLM.request_prompts  # the LLM's call

    def cancelled_while_writing(self, *args, **kwargs):
        prompts = original(self, *args, **kwargs)
        services.cancel_request(GenerationRequest.objects.get(pk=request.pk))
        return prompts

    monkeypatch.setattr(DemoLLM, "request_prompts", cancelled_while_writing)
    assert services.expand_request(request.pk) == []
    request.refresh_from_db()
    assert request.status == Req.CANCELLED and request.jobs.count() == 0


def test_concurrent_clicks_end_to_end(
    queue_backend, demo, call_log, thread_consumer, reliability_report
):
    """Three editors press "Generate pending prompts" at once, then "Retry failed jobs"
    twice at once: every prompt is generated once, every retry runs once."""
    demo(latency=0.1, reject_rate=0.2)
    request = make_request(20, status=Req.DRAFT)
    _concurrently(
        lambda: actions.generate_pending(GenerationRequest.objects.get(pk=request.pk)), times=3
    )
    wait_for(lambda: settled(request), 60, message="first run settled")
    rejected = request.jobs_failed
    assert rejected > 0
    _concurrently(lambda: actions.retry_failed(GenerationRequest.objects.get(pk=request.pk)))
    wait_for(lambda: settled(request), 60, message="retry settled")
    figures = reliability_report(
        'double clicks: 3× "Generate pending", 2× "Retry failed"', [request], call_log
    )
    assert figures["lost"] == figures["stuck"] == figures["duplicate images"] == 0
    assert figures["duplicate provider calls"] == 0
    calls = calls_per_key(call_log)
    # Each prompt called once, the rejected ones once more by the single retry.
    assert sorted(calls.values()) == sorted([1] * (20 - rejected) + [2] * rejected)
