"""Real `manage.py run_huey` processes killed, frozen and run side by side, on the SQLite
queue and (with TEST_MONGODB_URI) on MongoDB."""

import re
import signal
import time

import pytest
from huey.contrib.djhuey import HUEY
from wagtail.images import get_image_model

from generation.models import GenerationJob, GenerationRequest
from generation.providers.demo import call_key
from generation.services import CLAIM_LEASES
from huey_tasks.models import WorkerHeartbeat
from huey_tasks.reconcile import dead_job_reason
from huey_tasks.tasks import CLAIM_WAIT, queue_jobs
from tests.reliability.conftest import make_request, settled
from tests.support import consumers
from tests.support.provider_calls import (
    calls_per_key,
    max_in_flight,
    overlapping_calls,
    read_calls,
)
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
def test_sigkill_mid_batch_settles_every_job(tmp_path, call_log, deliveries, reliability_report):
    """With the default 5 deliveries the killed worker's jobs are simply run again; with
    one delivery allowed they are dead-lettered, and fail at once with a reason."""
    env = demo_env(
        call_log,
        KARASU_MAX_DELIVERIES=deliveries,
        KARASU_DEMO_LATENCY=0.5,
        KARASU_DEMO_CONCURRENCY=8,
    )
    request = make_request(30)
    queue_jobs(list(request.jobs.values_list("pk", flat=True)))
    first = consumers.start_consumer(tmp_path / "first.log", workers=10, **env)
    try:
        consumers.wait_for(
            lambda: request.jobs.filter(status=Job.SUCCEEDED).count() >= 8,
            60,
            message="a third done",
        )
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
        "SIGKILL mid-batch" if deliveries > 1 else "dead letters: SIGKILL with 1 delivery allowed",
        [request],
        call_log,
        deaths,
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
    buried = {
        task.args[0]
        for task in map(
            HUEY.deserialize_task, (letter.data for letter in HUEY.storage.dead_letters())
        )
        if task.name.endswith("generate_image")
    }
    assert set(failed.values_list("pk", flat=True)) <= buried


def test_a_worker_frozen_mid_batch_files_nothing_twice(tmp_path, call_log, reliability_report):
    """A worker frozen (SIGSTOP) past its job claims: the other worker takes over the calls
    it had in flight once their claims run out; thawed, its late results are fenced out."""
    lease = HUEY.storage.lease_seconds  # the workers' too (tests.support.settings)
    claim_seconds = lease * CLAIM_LEASES  # a job claim's life, renewed every lease / 3
    env = demo_env(call_log, KARASU_DEMO_LATENCY=1.0, KARASU_DEMO_CONCURRENCY=4)
    request = make_request(16)
    job_of = {call_key(job.prompt): job.pk for job in request.jobs.all()}
    queue_jobs(list(job_of.values()))
    frozen = consumers.start_consumer(tmp_path / "frozen.log", workers=6, **env)
    other = None

    def calls_by(pid):
        return [c for c in read_calls(call_log) if c.pid == pid] if call_log.exists() else []

    try:
        consumers.wait_for(
            lambda: sum(call.open for call in calls_by(frozen.pid)) >= 4,
            60,
            message="calls in flight",
        )
        frozen.send_signal(signal.SIGSTOP)
        stopped_at = time.time()
        # The calls in flight at the freeze (the log is written only around a call).
        held = {call.key for call in calls_by(frozen.pid) if call.open}
        other = consumers.start_consumer(tmp_path / "other.log", workers=6, **env)
        # Frozen until the other worker calls for a held job: not before that job's claim
        # runs out (claim_seconds after its last renewal), plus a message lease for the
        # message to come back and a claim wait for the other worker to look again.
        consumers.wait_for(
            lambda: {call.key for call in calls_by(other.pid)} & held,
            claim_seconds + lease + CLAIM_WAIT + 10,
            message="a held call taken over",
        )
        thawed_at = time.time()
        frozen.send_signal(signal.SIGCONT)
        consumers.wait_for(lambda: settled(request), 90, message="request settled")
        consumers.wait_for(queue_empty, 30, message="queue drained")
        consumers.wait_for(
            lambda: all(
                f"Job {job_of[key]} was taken over" in (tmp_path / "frozen.log").read_text()
                for key in {c.key for c in calls_by(frozen.pid)}
                & {c.key for c in calls_by(other.pid)}
            ),
            10,
            message="the frozen worker's late results refused",
        )
    finally:
        frozen.send_signal(signal.SIGCONT)
        consumers.stop(frozen)
        if other is not None:
            consumers.stop(other)
    figures = reliability_report("SIGSTOP past the lease and the job claims", [request], call_log)
    assert request.status == Req.COMPLETED
    assert figures["lost"] == figures["stuck"] == figures["duplicate images"] == 0
    succeeded = request.jobs.filter(status=Job.SUCCEEDED)
    assert succeeded.count() == 16
    assert Image.objects.filter(generation_request_id=request.pk).count() == 16
    assert all(job.image_id is not None for job in succeeded)

    calls = read_calls(call_log)
    assert not any(call.open for call in calls)
    by_key = {}
    for call in calls:
        by_key.setdefault(call.key, []).append(call)
    assert set(by_key) == set(job_of)
    # Taken over: jobs the frozen worker was working on that the other worker called for.
    taken_over = {key for key, runs in by_key.items() if len(runs) > 1}
    assert taken_over & held  # not vacuous: a call in flight at the freeze was taken over
    for key in taken_over:
        first, second = by_key[key]  # never a third call
        assert (first.pid, second.pid) == (frozen.pid, other.pid)
        assert first.start < stopped_at
        # Not while the frozen worker's claim could be live: renewed up to a heartbeat
        # (lease / 3) before the freeze, give or take a heartbeat.
        assert second.start > stopped_at + claim_seconds - 2 * lease / 3
    # Two calls in flight at once for a job: only a call in flight at the freeze, and the
    # other worker's takeover while it was frozen.
    overlaps = overlapping_calls(call_log)
    assert overlaps and {key for key, _, _ in overlaps} <= held
    for _key, first, second in overlaps:
        assert (first.pid, second.pid) == (frozen.pid, other.pid)
        assert first.start < stopped_at and first.end > thawed_at
    # The frozen worker's late results were fenced out, and its own log says so: every image
    # of a job taken over came from the other worker's call. Thawed, it found the messages
    # of those jobs taken over too, and did not ack them.
    frozen_log = (tmp_path / "frozen.log").read_text()
    other_log = (tmp_path / "other.log").read_text()
    for key in taken_over:
        job_id = job_of[key]
        assert f"Job {job_id} was taken over while it ran; its image was not filed" in frozen_log
        assert re.search(
            rf"Lost the lease of task generate_image-{job_id}-\w+ to another worker"
            rf"|Lease of generate_image-{job_id}-\w+ was lost before its ack",
            frozen_log,
        )
    # ...and its late acks and writes left the new holder's claims alone: the other worker
    # never lost a message lease or an ack, and every result it got was filed.
    assert "was taken over while it ran" not in other_log
    assert "Lost the lease" not in other_log and "lost before its ack" not in other_log
    assert HUEY.storage.dead_letter_count() == 0


def test_a_worker_frozen_past_its_lease_cannot_ack_the_new_claim(tmp_path):
    log = tmp_path / "runs.log"
    record_run(str(log), "frozen", seconds=5.0)
    first = consumers.start_consumer(tmp_path / "first.log", workers=1)
    second = None
    try:
        consumers.wait_for(
            lambda: "start frozen" in log.read_text() if log.exists() else False,
            30,
            message="first start",
        )
        first.send_signal(signal.SIGSTOP)
        time.sleep(4.0)  # past the 3 s lease
        second = consumers.start_consumer(tmp_path / "second.log", workers=1)
        consumers.wait_for(
            lambda: log.read_text().count("start frozen") == 2,
            30,
            message="redelivered to the second worker",
        )
        first.send_signal(signal.SIGCONT)
        consumers.wait_for(
            lambda: log.read_text().count("done frozen") == 1,
            30,
            message="the frozen worker finishes late",
        )
        time.sleep(0.5)  # its ack (refused) and heartbeat have run
        assert HUEY.storage.leased_count() == 1  # the second worker's claim survived
        consumers.wait_for(
            lambda: log.read_text().count("done frozen") == 2,
            30,
            message="the second worker finishes",
        )
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
    workers = [consumers.start_consumer(tmp_path / f"w{n}.log", workers=3, **env) for n in range(2)]
    try:
        consumers.wait_for(
            lambda: WorkerHeartbeat.objects.filter(stopped_at=None).count() == 2,
            60,
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
