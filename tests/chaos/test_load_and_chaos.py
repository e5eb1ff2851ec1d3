"""Load and chaos: real consumer processes, the embedded queue, the demo provider.

Run on SQLite by default and on PostgreSQL too when TEST_DATABASE_URL is set.
"""

import signal

import pytest
from django.db.models import Count
from wagtail.images import get_image_model

from generation.actions import generate
from generation.models import GenerationJob, GenerationRequest
from generation.providers.demo import DemoImageModel
from tests.support import consumers

pytestmark = [
    pytest.mark.slow,
    pytest.mark.django_db(transaction=True),
    pytest.mark.usefixtures("collections"),
]
Image = get_image_model()
Job = GenerationJob.Status


@pytest.fixture(autouse=True)
def empty_queue():
    from huey.contrib.djhuey import HUEY

    HUEY.storage.flush_all()
    yield
    HUEY.storage.flush_all()


def start(tmp_path, name, **knobs):
    env = {f"KARASU_DEMO_{key.upper()}": str(value) for key, value in knobs.items()}
    return consumers.start_consumer(tmp_path / f"{name}.log", workers=8, **env)


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
    request = GenerationRequest.objects.create(theme="Crows", count=200, llm="demo",
                                               image_model="demo")
    generate(request)
    knobs = {"latency": 0.2, "concurrency": 8}
    processes = [start(tmp_path, "a", **knobs), start(tmp_path, "b", **knobs)]
    try:
        consumers.wait_for(lambda: images_of(request) >= 60, 120, interval=0.2,
                           message="30% of the images")
        processes[0].send_signal(signal.SIGKILL)
        processes[0].wait(10)
        processes[0] = start(tmp_path, "a-restarted", **knobs)
        request = wait_terminal(request, timeout=180)
    finally:
        for process in processes:
            consumers.stop(process)

    assert request.status == GenerationRequest.Status.COMPLETED
    assert images_of(request) == 200
    assert not (
        Image.objects.filter(generation_request_id=request.pk)
        .values("generation_job_id").annotate(n=Count("pk")).filter(n__gt=1).exists()
    )
    assert request.jobs.filter(status=Job.SUCCEEDED).count() == 200
    assert not request.jobs.exclude(status__in=GenerationJob.TERMINAL).exists()
    assert request.jobs_succeeded == 200 and request.jobs_failed == 0


def test_injected_transient_failures_and_rejections(tmp_path):
    request = GenerationRequest.objects.create(theme="Herons", count=200, llm="demo",
                                               image_model="demo")
    generate(request)
    worker = start(tmp_path, "w", latency=0.05, concurrency=8, failure_rate=0.2,
                   reject_rate=0.05)
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
