"""At most one provider call in flight per job: exclusive job claims, fenced writes, and
jobs queued exactly once however often editors click."""

import threading
import uuid

import pytest
from django.db import close_old_connections
from huey.contrib.djhuey import HUEY
from wagtail.images import get_image_model

from generation import actions, services
from generation.models import GenerationJob, GenerationRequest
from generation.providers import get_image_model as get_provider
from huey_tasks.tasks import generate_image, queue_jobs
from tests.reliability.conftest import make_request, settled
from tests.support.consumers import queued_tasks, wait_for
from tests.support.provider_calls import calls_per_key, overlapping_calls

pytestmark = [pytest.mark.django_db(transaction=True), pytest.mark.usefixtures("collections")]
Job = GenerationJob.Status
Req = GenerationRequest.Status
Image = get_image_model()


def test_duplicate_messages_make_one_provider_call_per_job(demo, call_log, thread_consumer):
    demo(latency=0.3, concurrency=8)
    request = make_request(6)
    ids = queue_jobs(list(request.jobs.values_list("pk", flat=True)))
    # Every job gets two more messages: a double enqueue and a redelivery's twin.
    for job_id in ids:
        for _ in range(2):
            HUEY.enqueue(generate_image.s(job_id, id=f"dup-{job_id}-{uuid.uuid4().hex[:6]}"))
    wait_for(lambda: settled(request), 60, message="request settled")
    wait_for(lambda: HUEY.storage.queue_size() + HUEY.storage.schedule_size()
             + HUEY.storage.leased_count() == 0, 30, message="duplicates drained")
    assert request.status == Req.COMPLETED
    calls = calls_per_key(call_log)
    assert len(calls) == 6 and set(calls.values()) == {1}
    assert overlapping_calls(call_log) == []
    assert Image.objects.filter(generation_request_id=request.pk).count() == 6


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
    _concurrently(lambda: actions.generate_pending(
        GenerationRequest.objects.get(pk=request.pk)), times=3)
    tasks = queued_tasks("generate_image")
    assert sorted(task.args[0] for task in tasks) == sorted(
        request.jobs.values_list("pk", flat=True)
    )
    assert request.jobs.filter(status=Job.QUEUED).count() == 20
    HUEY.storage.flush_all()


def test_two_retry_failed_clicks_reset_and_count_each_job_once(demo):
    HUEY.storage.flush_all()
    request = make_request(10, status=Req.COMPLETED_WITH_ERRORS, job_status=Job.FAILED,
                           jobs_failed=10)
    results = _concurrently(lambda: services.reset_failed_jobs(
        GenerationRequest.objects.get(pk=request.pk)))
    assert sorted(len(ids) for ids in results) == [0, 10]
    request.refresh_from_db()
    assert request.jobs_failed == 0 and request.status == Req.GENERATING
    _concurrently(lambda: queue_jobs(results[0] or results[1]))
    assert len(queued_tasks("generate_image")) == 10
    HUEY.storage.flush_all()


def test_two_generate_clicks_start_one_expansion(demo):
    HUEY.storage.flush_all()
    request = GenerationRequest.objects.create(theme="Moths", count=3, llm="demo",
                                               image_model="demo")
    messages = _concurrently(lambda: actions.generate(
        GenerationRequest.objects.get(pk=request.pk)))
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
    monkeypatch.setattr("huey_tasks.tasks.FAN_OUT_CHUNK", 2)
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
    request = GenerationRequest.objects.create(theme="Moths", count=3, llm="demo",
                                               image_model="demo", status=Req.QUEUED)
    from generation.providers.demo import DemoLLM

    original = DemoLLM.expand

    def cancelled_while_writing(self, *args, **kwargs):
        prompts = original(self, *args, **kwargs)
        services.cancel_request(GenerationRequest.objects.get(pk=request.pk))
        return prompts

    monkeypatch.setattr(DemoLLM, "expand", cancelled_while_writing)
    assert services.expand_request(request.pk) == []
    request.refresh_from_db()
    assert request.status == Req.CANCELLED and request.jobs.count() == 0


def test_concurrent_clicks_end_to_end(demo, call_log, thread_consumer, reliability_report):
    """Three editors press "Generate pending prompts" at once, then "Retry failed jobs"
    twice at once: every prompt is generated once, every retry runs once."""
    demo(latency=0.1, reject_rate=0.2)
    request = make_request(20, status=Req.DRAFT)
    _concurrently(lambda: actions.generate_pending(
        GenerationRequest.objects.get(pk=request.pk)), times=3)
    wait_for(lambda: settled(request), 60, message="first run settled")
    rejected = request.jobs_failed
    assert rejected > 0
    _concurrently(lambda: actions.retry_failed(GenerationRequest.objects.get(pk=request.pk)))
    wait_for(lambda: settled(request), 60, message="retry settled")
    figures = reliability_report("double clicks (generate, retry)", [request], call_log)
    assert figures["lost"] == figures["stuck"] == figures["duplicate images"] == 0
    assert figures["duplicate provider calls"] == 0
    calls = calls_per_key(call_log)
    # Each prompt called once, the rejected ones once more by the single retry.
    assert sorted(calls.values()) == sorted([1] * (20 - rejected) + [2] * rejected)
