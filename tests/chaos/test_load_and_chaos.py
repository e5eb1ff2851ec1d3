"""Load and chaos: real consumer processes, the demo provider, on the embedded queue and
(with TEST_MONGODB_URI) on MongoDB.

Run on SQLite by default and on PostgreSQL too when TEST_DATABASE_URL is set.
"""

import signal
import time
from collections import Counter
from dataclasses import replace

import pytest
from django.db.models import Count
from wagtail.images import get_image_model

from generation.actions import generate
from generation.models import GenerationJob, GenerationRequest
from generation.providers.demo import DemoImageModel, call_key
from tests.support import consumers
from tests.support.provider_calls import (
    calls_per_key,
    max_in_flight,
    overlapping_calls,
    paid_submissions,
    peak_in_flight,
    read_calls,
)

pytestmark = [
    pytest.mark.slow,
    pytest.mark.django_db(transaction=True),
    pytest.mark.usefixtures("collections", "queue_backend"),
]
Image = get_image_model()
Job = GenerationJob.Status


def start(tmp_path, name, **knobs):
    # Every consumer appends to one provider call log (KARASU_DEMO_CALL_LOG).
    knobs.setdefault("call_log", tmp_path / "calls.log")
    env = {f"KARASU_DEMO_{key.upper()}": str(value) for key, value in knobs.items()}
    return consumers.start_consumer(tmp_path / f"{name}.log", workers=8, **env)


def provider_calls(tmp_path, request) -> dict[str, int]:
    """Calls per job (by its prompt's key), from the consumers' shared call log."""
    log = tmp_path / "calls.log"
    assert log.exists(), (
        "the consumers wrote no provider call log: cms/settings/base.py must pass "
        'KARASU_DEMO_CALL_LOG to the demo image model ("CALL_LOG")'
    )
    per_key = calls_per_key(log)
    keys = {call_key(prompt) for prompt in request.jobs.values_list("prompt", flat=True)}
    assert set(per_key) == keys  # only this request's jobs were called
    return per_key


def images_of(request) -> int:
    return Image.objects.filter(generation_request_id=request.pk).count()


def wait_terminal(request, timeout):
    from huey.contrib.djhuey import HUEY

    def terminal():
        request.refresh_from_db()
        return request.is_terminal

    try:
        consumers.wait_for(terminal, timeout, interval=0.5, message="the request to finish")
    except AssertionError as error:
        jobs = dict(request.jobs.values_list("status").annotate(n=Count("pk")))
        storage = HUEY.storage
        raise AssertionError(
            f"{error}: status={request.status} jobs={jobs} counters="
            f"{request.jobs_succeeded}/{request.jobs_failed}/{request.jobs_cancelled} "
            f"of {request.jobs_total}; queue={storage.queue_size()} "
            f"leased={storage.leased_count()} scheduled={storage.schedule_size()} "
            f"dead={storage.dead_letter_count()}"
        ) from None
    return request


def test_sigkill_of_one_of_two_consumers_loses_and_duplicates_nothing(tmp_path):
    request = GenerationRequest.objects.create(
        theme="Crows", count=200, llm="demo", image_model="demo"
    )
    generate(request)
    knobs = {"latency": 0.2, "concurrency": 8}
    processes = [start(tmp_path, "a", **knobs), start(tmp_path, "b", **knobs)]
    try:
        consumers.wait_for(
            lambda: images_of(request) >= 60, 120, interval=0.2, message="30% of the images"
        )
        killed = processes[0].pid
        processes[0].send_signal(signal.SIGKILL)
        processes[0].wait(10)
        # Its calls in flight ended with it (at the latest now): not open for ever.
        deaths = {killed: time.time()}
        processes[0] = start(tmp_path, "a-restarted", **knobs)
        request = wait_terminal(request, timeout=180)
    finally:
        for process in processes:
            consumers.stop(process)

    assert request.status == GenerationRequest.Status.COMPLETED
    assert images_of(request) == 200
    assert not (
        Image.objects.filter(generation_request_id=request.pk)
        .values("generation_job_id")
        .annotate(n=Count("pk"))
        .filter(n__gt=1)
        .exists()
    )
    assert request.jobs.filter(status=Job.SUCCEEDED).count() == 200
    assert not request.jobs.exclude(status__in=GenerationJob.TERMINAL).exists()
    assert request.jobs_succeeded == 200 and request.jobs_failed == 0

    # The provider: every job submitted, never twice at once, never beyond the 8 slots.
    provider_calls(tmp_path, request)
    log = tmp_path / "calls.log"
    calls = read_calls(log, deaths)
    assert overlapping_calls(log, deaths) == []
    # The killed consumer's submissions finished at the provider within their 0.2 s; the
    # next worker collects them once their leases ran out (a resume, not a new call).
    at_provider = [
        replace(call, end=min(call.end, deaths[killed])) if call.pid == killed else call
        for call in calls
    ]
    assert peak_in_flight(at_provider) <= 8
    # Paid once: a job submitted twice only if the kill came between its submission and
    # the commit of its request id (a few milliseconds), so nobody could resume it.
    paid = paid_submissions(log)
    twice = {key for key, count in paid.items() if count > 1}
    unresumable = {call.key for call in calls if call.pid == killed and not call.resumed_by}
    assert twice <= unresumable and all(paid[key] == 2 for key in twice), twice
    assert len(twice) <= 8


def test_injected_transient_failures_and_rejections(tmp_path):
    request = GenerationRequest.objects.create(
        theme="Herons", count=200, llm="demo", image_model="demo"
    )
    generate(request)
    worker = start(tmp_path, "w", latency=0.05, concurrency=8, failure_rate=0.2, reject_rate=0.05)
    try:
        request = wait_terminal(request, timeout=240)
    finally:
        consumers.stop(worker)

    judge = DemoImageModel("demo", REJECT_RATE=0.05)
    rejected = {job.pk for job in request.jobs.all() if judge.would_reject(job.prompt)}
    assert 0 < len(rejected) < 30
    failed = request.jobs.filter(status=Job.FAILED)
    assert set(failed.values_list("pk", flat=True)) == rejected
    assert all("content policy" in job.error for job in failed)
    assert request.jobs.filter(status=Job.SUCCEEDED).count() == 200 - len(rejected)
    assert images_of(request) == 200 - len(rejected)
    assert request.jobs.filter(attempts__gt=1).exists()  # transient failures were retried
    assert request.status == GenerationRequest.Status.COMPLETED_WITH_ERRORS

    # The provider: every job called, never twice at once; permanent rejections are not
    # retried; a success is never called again; within the 8 slots.
    per_key = provider_calls(tmp_path, request)
    log = tmp_path / "calls.log"
    assert overlapping_calls(log) == []
    assert max_in_flight(log) <= 8
    outcomes = Counter((call.key, call.outcome) for call in read_calls(log))
    for job in request.jobs.all():
        key = call_key(job.prompt)
        if job.pk in rejected:
            assert per_key[key] == 1 and outcomes[key, "permanent"] == 1, job.prompt
        else:
            assert per_key[key] >= 1 and outcomes[key, "ok"] == 1, job.prompt
            # At most 2 transient failures in a row per process (MAX_FAILURE_STREAK).
            assert per_key[key] == outcomes[key, "transient"] + 1 <= 1 + 3, job.prompt
    assert sum(count for (_, outcome), count in outcomes.items() if outcome == "transient")
