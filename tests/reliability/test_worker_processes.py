"""Real `manage.py run_huey` processes killed, frozen and run side by side, on the SQLite
queue and (with TEST_MONGODB_URI) on MongoDB."""

import datetime
import re
import signal
import subprocess
import sys
import time

import pytest
from huey.contrib.djhuey import HUEY
from wagtail.images import get_image_model

from generation.models import GenerationJob, GenerationRequest
from generation.providers.demo import call_key
from generation.reconcile import dead_job_reason
from generation.services import CLAIM_LEASES
from generation.tasks import CLAIM_WAIT, queue_jobs
from huey_tasks.models import WorkerHeartbeat
from tests.support import consumers
from tests.support.factories import make_request, settled
from tests.support.provider_calls import (
    calls_per_key,
    max_in_flight,
    paid_submissions,
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


def open_calls(call_log, pid) -> list:
    """The submissions ``pid`` made that no process has collected yet."""
    if not call_log.exists():
        return []
    return [call for call in read_calls(call_log) if call.pid == pid and call.open]


def freeze_with_calls_stored(process, call_log, minimum: int, timeout: float = 60) -> list:
    """SIGSTOP ``process`` while at least ``minimum`` of its submissions are in flight and
    every one of them is stored on its job; return them.

    A submission is stored a few milliseconds after the provider accepts it; a worker
    killed inside that window pays twice (fal has no idempotency key), which no design can
    avoid. These tests are about everything else, so they freeze the worker first, look,
    and let it go on (SIGCONT) to try again if a submission is inside the window, or if it
    holds a write lock (``consumers.freeze_between_writes``)."""

    def calls_stored():
        in_flight = open_calls(call_log, process.pid)
        stored = set(
            GenerationJob.objects.filter(
                provider_request_id__in=[call.call_id for call in in_flight]
            ).values_list("provider_request_id", flat=True)
        )
        if len(in_flight) >= minimum and all(c.call_id in stored for c in in_flight):
            return in_flight
        return None

    consumers.wait_for(
        lambda: len(open_calls(call_log, process.pid)) >= minimum,
        timeout,
        interval=0.02,
        message=f"{minimum} calls in flight",
    )
    return consumers.freeze_between_writes(
        process, calls_stored, timeout, message=f"a moment with {minimum} stored calls in flight"
    )


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
        in_flight = freeze_with_calls_stored(first, call_log, 1)
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
    # Counted from the provider's side: every submission, the killed ones included.
    assert figures["paid twice"] == 0
    assert set(paid_submissions(call_log).values()) == {1}
    succeeded = request.jobs.filter(status=Job.SUCCEEDED).count()
    assert Image.objects.filter(generation_request_id=request.pk).count() == succeeded
    if deliveries > 1:
        assert request.status == Req.COMPLETED and not any(
            HUEY.deserialize_task(letter.data).name.endswith("generate_image")
            for letter in HUEY.storage.dead_letters()
        )
        # The calls cut off by the kill were collected by the next worker, not paid again.
        calls = {call.call_id: call for call in read_calls(call_log)}
        assert all(second.pid in calls[c.call_id].resumed_by for c in in_flight)
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
    """A worker frozen (SIGSTOP) past its job claims: the other worker takes over the jobs
    it had in flight once their claims run out and resumes their provider requests (no
    second submission); thawed, the frozen worker's late results are fenced out."""
    lease = HUEY.storage.lease_seconds  # the workers' too (tests.support.settings)
    claim_seconds = lease * CLAIM_LEASES  # a job claim's life, renewed every lease / 3
    env = demo_env(call_log, KARASU_DEMO_LATENCY=1.0, KARASU_DEMO_CONCURRENCY=4)
    request = make_request(16)
    job_of = {call_key(job.prompt): job.pk for job in request.jobs.all()}
    queue_jobs(list(job_of.values()))
    frozen = consumers.start_consumer(tmp_path / "frozen.log", workers=6, **env)
    other = None

    def calls_of(key):
        return next(c.call_id for c in read_calls(call_log) if c.key == key)

    def resumed_by_other():
        return {c.call_id for c in read_calls(call_log) if other.pid in c.resumed_by}

    try:
        # The calls in flight at the freeze, each stored on its job.
        held_calls = freeze_with_calls_stored(frozen, call_log, 4)
        stopped_at = time.time()
        held = {call.key for call in held_calls}
        other = consumers.start_consumer(tmp_path / "other.log", workers=6, **env)
        # Frozen until the other worker resumes a held call: not before that job's claim
        # runs out (claim_seconds after its last renewal), plus a message lease for the
        # message to come back and a claim wait for the other worker to look again.
        consumers.wait_for(
            lambda: resumed_by_other() & {c.call_id for c in held_calls},
            # A generous margin: the MongoDB emulator is slow on a loaded machine.
            claim_seconds + lease + CLAIM_WAIT + 40,
            message="a held call taken over",
        )
        frozen.send_signal(signal.SIGCONT)
        consumers.wait_for(lambda: settled(request), 90, message="request settled")
        consumers.wait_for(queue_empty, 30, message="queue drained")
        taken_over = {c.key for c in read_calls(call_log) if other.pid in c.resumed_by}
        # Thawed, the frozen worker collects the results it was waiting for (its own end
        # lines); its filing is then refused (fenced) or finds the other worker's image.
        frozen_ends = {(key, calls_of(key)) for key in taken_over}
        consumers.wait_for(
            lambda: (
                frozen_ends
                <= {
                    (fields[1], fields[-1])
                    for fields in map(str.split, call_log.read_text().splitlines())
                    if fields[0] == "end" and fields[2] == str(frozen.pid)
                }
            ),
            10,
            message="the frozen worker's late results collected",
        )
        time.sleep(1.0)  # and filed, or refused
    finally:
        frozen.send_signal(signal.SIGCONT)
        consumers.stop(frozen)
        if other is not None:
            consumers.stop(other)
    figures = reliability_report("SIGSTOP past the lease and the job claims", [request], call_log)
    assert request.status == Req.COMPLETED
    assert figures["lost"] == figures["stuck"] == figures["duplicate images"] == 0
    # One submission per job, as the provider counts them: the takeover resumed.
    assert figures["paid twice"] == figures["duplicate provider calls"] == 0
    assert calls_per_key(call_log) == {key: 1 for key in job_of}
    succeeded = request.jobs.filter(status=Job.SUCCEEDED)
    assert succeeded.count() == 16
    assert Image.objects.filter(generation_request_id=request.pk).count() == 16
    assert all(job.image_id is not None for job in succeeded)

    calls = {call.key: call for call in read_calls(call_log)}
    assert not any(call.open for call in calls.values())
    assert taken_over and taken_over <= held  # not vacuous: calls in flight were taken over
    for key in taken_over:
        call = calls[key]
        assert call.pid == frozen.pid and call.start < stopped_at
        # Not while the frozen worker's claim could be live: renewed up to a heartbeat
        # (lease / 3) before the freeze, give or take a heartbeat.
        resumed_at = min(ts for pid, ts in call.resumes if pid == other.pid)
        assert resumed_at > stopped_at + claim_seconds - 2 * lease / 3
        # The job's image is the one request's, whichever worker collected it.
        image = Image.objects.get(generation_job_id=job_of[key])
        assert image.provider_request_id == call.call_id
    # The frozen worker's late results were fenced out (one image per job, above). Thawed,
    # it found the messages of those jobs taken over too, and did not ack them.
    frozen_log = (tmp_path / "frozen.log").read_text()
    other_log = (tmp_path / "other.log").read_text()
    for key in taken_over:
        job_id = job_of[key]
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


def _log_time(text: str, marker: str) -> float:
    """The time of the first log line of ``text`` that contains ``marker``."""
    line = next(line for line in text.splitlines() if marker in line)
    stamp = datetime.datetime.strptime(line[:23], "%Y-%m-%d %H:%M:%S,%f")
    return stamp.timestamp()


def test_sigterm_with_a_short_grace_hands_calls_back_for_the_next_worker(
    tmp_path, call_log, reliability_report
):
    """A deploy whose grace (1 s) is shorter than the calls (3 s): the stopping worker
    hands its waits back within the grace, without cancelling them, and the next worker
    collects the same requests; nothing is paid twice."""
    grace = 1.0
    env = demo_env(
        call_log, KARASU_DEMO_LATENCY=3.0, KARASU_DEMO_CONCURRENCY=8, KARASU_SHUTDOWN_TIMEOUT=grace
    )
    request = make_request(16)
    job_of = {call_key(job.prompt): job.pk for job in request.jobs.all()}
    queue_jobs(list(job_of.values()))
    first = consumers.start_consumer(tmp_path / "first.log", workers=10, **env)
    second = None
    try:
        consumers.wait_for(
            lambda: len(open_calls(call_log, first.pid)) == 8, 60, message="every slot in a call"
        )
        first.send_signal(signal.SIGTERM)
        first.wait(grace + 15)  # the interpreter's own teardown may take a moment more
        handed = open_calls(call_log, first.pid)
        # Handed back at once: queued again, the attempt not counted, the request stored.
        jobs = GenerationJob.objects.filter(provider_request_id__in=[c.call_id for c in handed])
        assert jobs.count() == len(handed) == 8
        assert {(job.status, job.attempts, job.claim_token) for job in jobs} == {
            (Job.QUEUED, 0, "")
        }
        second = consumers.start_consumer(tmp_path / "second.log", workers=10, **env)
        consumers.wait_for(lambda: settled(request), 60, message="request settled")
        consumers.wait_for(queue_empty, 30, message="queue drained")
    finally:
        consumers.stop(first)
        if second is not None:
            consumers.stop(second)
    # Every wait was handed back within the grace of the worker taking the signal.
    log = (tmp_path / "first.log").read_text()
    received = _log_time(log, "Received SIGTERM")
    handed_at = [
        _log_time(line, "handed back while")
        for line in log.splitlines()
        if "handed back while" in line
    ]
    assert len(handed_at) == 8 and max(handed_at) - received < grace, log
    figures = reliability_report("SIGTERM with a 1 s grace mid-call", [request], call_log)
    assert request.status == Req.COMPLETED
    assert figures["lost"] == figures["stuck"] == figures["duplicate images"] == 0
    assert figures["paid twice"] == figures["duplicate provider calls"] == 0
    assert calls_per_key(call_log) == {key: 1 for key in job_of}
    calls = {call.call_id: call for call in read_calls(call_log)}
    for call in handed:  # collected by the next worker, the same request
        assert calls[call.call_id].resumed_by == (second.pid,)
        assert (
            Image.objects.get(generation_job_id=job_of[call.key]).provider_request_id
            == call.call_id
        )
    first_log = (tmp_path / "first.log").read_text()
    assert first_log.count("handed back while its provider request runs") == 8
    assert "still running at exit" not in first_log
    assert HUEY.storage.dead_letter_count() == 0


def in_storage(task_id: str) -> bool:
    """Whether the task's message is still in the queue storage (queued, leased or
    scheduled)."""
    return task_id in {HUEY.deserialize_task(data).id for data in HUEY.storage.all_messages()}


def test_a_worker_frozen_past_its_lease_cannot_ack_the_new_claim(tmp_path):
    log = tmp_path / "runs.log"
    # Long enough that the second worker's only thread is still busy with the redelivery
    # when "next" is queued, however slow the storage: "next" can only go to the first.
    frozen = record_run(str(log), "frozen", seconds=12.0)
    consumers.show_on_failure(log)
    first = consumers.start_consumer(tmp_path / "first.log", workers=1)
    second = None
    try:
        consumers.wait_for(
            lambda: f"start frozen {first.pid}" in log.read_text() if log.exists() else False,
            30,
            message="first start",
        )
        consumers.freeze_between_writes(first)
        time.sleep(4.0)  # past the 3 s lease
        second = consumers.start_consumer(tmp_path / "second.log", workers=1)
        consumers.wait_for(
            lambda: f"start frozen {second.pid}" in log.read_text(),
            30,
            message="redelivered to the second worker",
        )
        # Queued behind the frozen task on the first worker's only thread, while the second
        # worker's only thread runs the redelivery: once the first worker starts it, the
        # frozen task has ended there, its late ack included.
        record_run(str(log), "next")
        first.send_signal(signal.SIGCONT)
        consumers.wait_for(
            lambda: f"start next {first.pid}" in log.read_text(),
            60,
            message="the frozen worker finishes late and takes its next task",
        )
        assert log.read_text().count("done frozen") == 1
        assert in_storage(frozen.id)  # the second worker's claim survived the late ack
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
    assert re.search(
        rf"Lost the lease of task {re.escape(frozen.id)} to another worker"
        rf"|Lease of {re.escape(frozen.id)} was lost before its ack",
        (tmp_path / "first.log").read_text(),
    )
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


def test_the_freeze_waits_for_a_held_write_lock_to_be_released(queue_backend):
    """``freeze_between_writes`` does not freeze a worker holding the SQLite queue's write
    lock (here, a child process in an open write transaction)."""
    if queue_backend != "sqlite":
        pytest.skip("about the SQLite queue's write lock")
    holder = subprocess.Popen(
        [
            sys.executable,
            "-c",
            "import sqlite3, sys, time\n"
            "db = sqlite3.connect(sys.argv[1], isolation_level=None)\n"
            "db.execute('begin immediate')\n"
            "print('held', flush=True)\n"
            "time.sleep(60)\n",
            HUEY.storage.filename,
        ],
        stdout=subprocess.PIPE,
        text=True,
    )
    try:
        assert holder.stdout.readline() == "held\n"
        assert consumers.writers_blocked()
        with pytest.raises(AssertionError, match="timed out after 1s waiting for a freeze"):
            consumers.freeze_between_writes(holder, timeout=1)
        assert holder.poll() is None  # let go on after each try: not left stopped
    finally:
        holder.send_signal(signal.SIGCONT)
        holder.kill()
        holder.wait()
    assert not consumers.writers_blocked()
