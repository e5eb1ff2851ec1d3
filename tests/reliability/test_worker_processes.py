"""Real `manage.py run_huey` processes killed, frozen and run side by side, on the SQLite
queue and (with TEST_MONGODB_URI) on MongoDB."""

import signal
import time

import pytest
from huey.contrib.djhuey import HUEY
from wagtail.images import get_image_model

from generation.models import GenerationJob, GenerationRequest
from generation.providers.demo import call_key
from huey_tasks.models import WorkerHeartbeat
from huey_tasks.reconcile import dead_job_reason
from huey_tasks.tasks import queue_jobs
from tests.reliability.conftest import make_request, settled
from tests.support import consumers
from tests.support.provider_calls import calls_per_key, max_in_flight, overlapping_calls
from tests.support.tasks import record_run

pytestmark = [
    pytest.mark.django_db(transaction=True),
    pytest.mark.usefixtures("collections", "queue_backend"),
    pytest.mark.slow,
]
Job = GenerationJob.Status
Req = GenerationRequest.Status
Image = get_image_model()


def queue_empty() -> bool:
    storage = HUEY.storage
    return storage.queue_size() + storage.schedule_size() + storage.leased_count() == 0


def demo_env(call_log, **extra) -> dict:
    return {"KARASU_DEMO_CALL_LOG": str(call_log), **{k: str(v) for k, v in extra.items()}}


@pytest.mark.parametrize("deliveries", [5, 1])
def test_sigkill_mid_batch_settles_every_job(tmp_path, call_log, deliveries,
                                             reliability_report):
    """With the default 5 deliveries the killed worker's jobs are simply run again; with
    one delivery allowed they are dead-lettered, and fail at once with a reason."""
    env = demo_env(call_log, KARASU_MAX_DELIVERIES=deliveries, KARASU_DEMO_LATENCY=0.5,
                   KARASU_DEMO_CONCURRENCY=8)
    request = make_request(30)
    queue_jobs(list(request.jobs.values_list("pk", flat=True)))
    first = consumers.start_consumer(tmp_path / "first.log", workers=10, **env)
    try:
        consumers.wait_for(lambda: request.jobs.filter(status=Job.SUCCEEDED).count() >= 8, 60,
                           message="a third done")
        first.send_signal(signal.SIGKILL)
        first.wait(10)
        killed_at = time.time()
    finally:
        consumers.stop(first)
    held = set(request.jobs.filter(status=Job.RUNNING).values_list("pk", flat=True))
    assert held  # the killed worker held some jobs mid-call
    second = consumers.start_consumer(tmp_path / "second.log", workers=10, **env)
    try:
        consumers.wait_for(lambda: settled(request), 90, message="request settled")
        consumers.wait_for(queue_empty, 30, message="queue drained")
    finally:
        consumers.stop(second)
    deaths = {first.pid: killed_at}
    figures = reliability_report(
        "SIGKILL mid-batch" if deliveries > 1 else "dead letters (SIGKILL, 1 delivery)",
        [request], call_log, deaths,
    )
    assert figures["lost"] == figures["stuck"] == figures["duplicate images"] == 0
    assert figures["duplicate provider calls"] == 0
    succeeded = request.jobs.filter(status=Job.SUCCEEDED).count()
    assert Image.objects.filter(generation_request_id=request.pk).count() == succeeded
    if deliveries > 1:
        assert request.status == Req.COMPLETED and not any(
            HUEY.deserialize_task(letter.data).name.endswith("generate_image")
            for letter in HUEY.storage.dead_letters()
        )
        return
    # Every message the killed worker held was buried; their jobs failed at once with a
    # reason (those mid-call, and any it held while waiting for a slot).
    assert request.status == Req.COMPLETED_WITH_ERRORS
    failed = request.jobs.filter(status=Job.FAILED)
    assert held <= set(failed.values_list("pk", flat=True))
    assert {job.error for job in failed} == {dead_job_reason(1)}
    assert succeeded + failed.count() == 30
    # Buried: the failed jobs' messages (and maybe Wagtail's index tasks, or the message of a
    # job that was filed just before the kill, whose burial then changed nothing).
    buried = {task.args[0] for task in map(HUEY.deserialize_task,
                                           (letter.data for letter in HUEY.storage.dead_letters()))
              if task.name.endswith("generate_image")}
    assert set(failed.values_list("pk", flat=True)) <= buried


def test_a_worker_frozen_mid_batch_files_nothing_twice(tmp_path, call_log, reliability_report):
    env = demo_env(call_log, KARASU_DEMO_LATENCY=1.0, KARASU_DEMO_CONCURRENCY=4)
    request = make_request(16)
    queue_jobs(list(request.jobs.values_list("pk", flat=True)))
    frozen = consumers.start_consumer(tmp_path / "frozen.log", workers=6, **env)
    other = None
    try:
        consumers.wait_for(lambda: request.jobs.filter(status=Job.RUNNING).count() >= 4, 60,
                           message="calls in flight")
        frozen.send_signal(signal.SIGSTOP)
        held = set(request.jobs.filter(status=Job.RUNNING).values_list("pk", flat=True))
        other = consumers.start_consumer(tmp_path / "other.log", workers=6, **env)
        time.sleep(5.0)  # well past the 3 s lease: the other worker takes the jobs over
        frozen.send_signal(signal.SIGCONT)
        consumers.wait_for(lambda: settled(request), 90, message="request settled")
        consumers.wait_for(queue_empty, 30, message="queue drained")
    finally:
        frozen.send_signal(signal.SIGCONT)
        consumers.stop(frozen)
        if other is not None:
            consumers.stop(other)
    figures = reliability_report("SIGSTOP past the lease", [request], call_log)
    assert request.status == Req.COMPLETED
    assert figures["lost"] == figures["stuck"] == figures["duplicate images"] == 0
    # The only second calls are for jobs whose call was in flight when the worker froze;
    # their late results were fenced out (no second image).
    assert {key for key, _, _ in overlapping_calls(call_log)} <= {
        call_key(job.prompt) for job in request.jobs.filter(pk__in=held)
    }


def test_a_worker_frozen_past_its_lease_cannot_ack_the_new_claim(tmp_path):
    log = tmp_path / "runs.log"
    record_run(str(log), "frozen", seconds=5.0)
    first = consumers.start_consumer(tmp_path / "first.log", workers=1)
    second = None
    try:
        consumers.wait_for(lambda: "start frozen" in log.read_text() if log.exists() else False,
                           30, message="first start")
        first.send_signal(signal.SIGSTOP)
        time.sleep(4.0)  # past the 3 s lease
        second = consumers.start_consumer(tmp_path / "second.log", workers=1)
        consumers.wait_for(lambda: log.read_text().count("start frozen") == 2, 30,
                           message="redelivered to the second worker")
        first.send_signal(signal.SIGCONT)
        consumers.wait_for(lambda: log.read_text().count("done frozen") == 1, 30,
                           message="the frozen worker finishes late")
        time.sleep(0.5)  # its ack (refused) and heartbeat have run
        assert HUEY.storage.leased_count() == 1  # the second worker's claim survived
        consumers.wait_for(lambda: log.read_text().count("done frozen") == 2, 30,
                           message="the second worker finishes")
        consumers.wait_for(queue_empty, 10, message="acked by its holder")
    finally:
        first.send_signal(signal.SIGCONT)
        consumers.stop(first)
        if second is not None:
            consumers.stop(second)
    assert "lease" in (tmp_path / "first.log").read_text().lower()
    assert HUEY.storage.dead_letter_count() == 0


@pytest.mark.parametrize("latency, count, limit", [(0.3, 24, 3), (4.0, 6, 2)])
def test_concurrency_holds_across_worker_processes(tmp_path, call_log, latency, count, limit):
    """Two workers, one limit; the second case holds each slot through a call that is
    longer than the 3 s lease (kept alive by the heartbeat)."""
    env = demo_env(call_log, KARASU_DEMO_LATENCY=latency, KARASU_DEMO_CONCURRENCY=limit)
    request = make_request(count)
    workers = [consumers.start_consumer(tmp_path / f"w{n}.log", workers=3, **env)
               for n in range(2)]
    try:
        consumers.wait_for(
            lambda: WorkerHeartbeat.objects.filter(stopped_at=None).count() == 2, 60,
            message="both workers up",
        )
        queue_jobs(list(request.jobs.values_list("pk", flat=True)))
        consumers.wait_for(lambda: settled(request), 120, message="request settled")
    finally:
        for worker in workers:
            consumers.stop(worker)
    assert request.status == Req.COMPLETED
    assert max_in_flight(call_log) == limit
    assert set(calls_per_key(call_log).values()) == {1}
    pids = {line.split()[2] for line in open(call_log) if line.startswith("start ")}
    assert len(pids) == 2  # both processes called the provider
