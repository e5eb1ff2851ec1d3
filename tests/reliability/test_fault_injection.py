"""Randomised fault schedules over 50-job batches: the queue storage and the database fail
chosen calls while a real consumer runs the pipeline. Whatever fails, every job and request
ends final, with one image per succeeded job, a reason for every failure, the queue empty
and never two provider calls in flight for one job."""

import pytest
from huey.contrib.djhuey import HUEY
from wagtail.images import get_image_model

from generation.models import GenerationJob, GenerationRequest
from huey_tasks import reconcile
from huey_tasks.tasks import expand_prompt, queue_jobs
from tests.reliability.conftest import make_request
from tests.support.consumers import wait_for
from tests.support.faults import FaultyDatabase, FaultyStorage
from tests.support.provider_calls import overlapping_calls

pytestmark = [
    pytest.mark.django_db(transaction=True),
    pytest.mark.usefixtures("collections"),
    pytest.mark.slow,
]
Job = GenerationJob.Status
Image = get_image_model()
JOBS = 50


def quiet() -> bool:
    storage = HUEY.storage
    return storage.queue_size() + storage.schedule_size() + storage.leased_count() == 0


def nothing_buried() -> bool:
    return HUEY.storage.dead_letter_count() == 0


def all_final(request) -> bool:
    request.refresh_from_db()
    return (
        request.status in GenerationRequest.TERMINAL
        and not request.jobs.filter(status__in=GenerationJob.OPEN).exists()
    )


@pytest.mark.parametrize("faults, seed", [("storage", 1), ("database", 2), ("both", 3)])
def test_random_faults_leave_nothing_open(
    faults,
    seed,
    queue_backend,
    demo,
    call_log,
    settings,
    thread_consumer_factory,
    reliability_report,
):
    demo(latency=0.05, failure_rate=0.1, concurrency=8)
    settings.KARASU["RECONCILE"] = {"GRACE_SECONDS": 0}
    original = HUEY.storage
    requests = [make_request(JOBS)]
    faulty_storage = FaultyStorage(
        original, seed=seed, rate=0.05 if faults in ("storage", "both") else 0
    )
    faulty_db = FaultyDatabase(seed=seed, rate=0.03 if faults in ("database", "both") else 0)
    HUEY.storage = faulty_storage
    try:
        with faulty_db.installed(), thread_consumer_factory(workers=8):
            job_ids = list(requests[0].jobs.values_list("pk", flat=True))
            for _ in range(10):  # the fan-out itself may fail: retried, as expand_prompt is
                try:
                    queue_jobs(job_ids)
                    break
                except Exception:
                    continue
            try:
                wait_for(lambda: all_final(requests[0]), 60, interval=0.5, message="final")
            except AssertionError:
                pass  # what is left open is for redelivery and maintenance, below
    finally:
        faulty_storage.active = False
        faulty_db.active = False
        HUEY.storage = original
    # What the faults left behind is delivered again or repaired by maintenance: let both
    # run to the end, as they would in production.
    with thread_consumer_factory(workers=4):
        for _ in range(10):
            reconcile.reconcile(HUEY, queue_jobs, expand_prompt, grace=0)
            if quiet() and all(all_final(r) for r in requests):
                break
            wait_for(quiet, 30, interval=0.2, message="queue drained")
    if faults != "database":
        assert sum(faulty_storage.injected.values()) > 0
    if faults != "storage":
        assert faulty_db.injected > 0
    scenario = {
        "storage": "queue storage errors, 5% of calls",
        "database": "database errors, 3% of writes",
        "both": "storage and database errors",
    }[faults]
    figures = reliability_report(f"{scenario} ({queue_backend})", requests, call_log)
    assert figures["lost"] == figures["stuck"] == figures["duplicate images"] == 0
    for request in requests:
        assert all_final(request)
        jobs = list(request.jobs.all())
        assert {job.status for job in jobs} <= GenerationJob.TERMINAL
        succeeded = [job for job in jobs if job.status == Job.SUCCEEDED]
        images = Image.objects.filter(generation_request_id=request.pk)
        assert sorted(images.values_list("generation_job_id", flat=True)) == sorted(
            job.pk for job in succeeded
        )  # one image per succeeded job, none for the others
        assert all(job.image_id for job in succeeded)
        assert all(job.error for job in jobs if job.status == Job.FAILED)
        assert request.jobs_succeeded == len(succeeded)
        assert request.jobs_succeeded + request.jobs_failed + request.jobs_cancelled == JOBS
        # Infrastructure errors never fail a job, and the demo's transient failures stop
        # short of its retries: every job ends with its image.
        assert request.jobs_succeeded == JOBS, [job.error for job in jobs if job.error]
    assert quiet() and nothing_buried()
    assert overlapping_calls(call_log) == []
    # A database error after a paid call is retried in place: no image is paid for twice.
    assert figures["paid twice"] == 0
