"""The TaskRun ledger, written by a real consumer's signals."""

import datetime
import signal
import time

import pytest
from huey.contrib.djhuey import HUEY
from huey.exceptions import TaskException

from huey_tasks.models import TaskRun, WorkerHeartbeat
from tests.support import consumers
from tests.support.tasks import (
    always_fail,
    cancel_me,
    fail_then_succeed,
    hand_back_once,
    record_run,
)

pytestmark = pytest.mark.django_db(transaction=True)
Status = TaskRun.Status


def run_of(result, statuses, timeout=20) -> TaskRun:
    def reached():
        run = TaskRun.objects.filter(task_id=result.id).first()
        return run if run and run.status in statuses else None

    return consumers.wait_for(reached, timeout, message=f"task {result.id} in {statuses}")


def test_success_row(tmp_path, thread_consumer):
    result = record_run(str(tmp_path / "log"), "ok")
    queued = TaskRun.objects.get(task_id=result.id)
    assert queued.status in (Status.QUEUED, Status.RUNNING, Status.SUCCEEDED)
    run = run_of(result, {Status.SUCCEEDED})
    assert run.task_name.endswith("record_run")
    assert run.args[1] == "ok"
    assert run.attempts == 1 and run.deliveries == 1
    assert run.started_at and run.finished_at and run.duration >= 0
    assert run.worker_pid and run.worker_host and run.worker_thread.startswith("Worker-")
    assert "running on" in run.log


def test_a_handed_back_run_shows_as_waiting_not_succeeded(tmp_path, thread_consumer):
    """A task that could not reach the database hands its message back: the monitor must
    not show it succeeded while it waits to run again."""
    log = tmp_path / "log"
    result = hand_back_once(str(log))
    consumers.wait_for(lambda: log.exists() and "attempt" in log.read_text(), 20, message="ran")
    time.sleep(1.0)  # its outcome recorded; it comes back after 3 s
    run = TaskRun.objects.get(task_id=result.id)
    assert log.read_text().count("attempt") == 1
    assert run.status == Status.QUEUED and run.finished_at is None, run.status
    assert "handed back" in run.log
    run = run_of(result, {Status.SUCCEEDED})
    assert log.read_text().count("attempt") == 2
    assert "handed back" in run.log


def test_a_late_hand_back_does_not_write_over_the_run_another_worker_finished():
    """A worker frozen past its lease returns handing back: the worker that took the message
    since has recorded the outcome, which stays."""
    from types import SimpleNamespace

    from huey import signals

    from huey_tasks import ledger

    TaskRun.objects.create(task_name="record_run", task_id="taken-over", status=Status.SUCCEEDED)
    late = SimpleNamespace(id="taken-over", settle="release", _ledger_started=time.monotonic())
    ledger.handle(signals.SIGNAL_COMPLETE, late)
    assert TaskRun.objects.get(task_id="taken-over").status == Status.SUCCEEDED


def test_retry_then_success_row(tmp_path, thread_consumer):
    result = fail_then_succeed(str(tmp_path / "log"), "r", failures=1)
    run = run_of(result, {Status.SUCCEEDED})
    assert run.attempts == 2
    assert "retrying" in run.log and "planned failure 1" in run.log


def test_final_failure_row_keeps_error_and_traceback(thread_consumer):
    result = always_fail("<b>bad</b> input sk-SECRETSECRETSECRET")
    run = run_of(result, {Status.FAILED})
    assert run.error_class == "ValueError"
    assert "bad" in run.error_message and "SECRETSECRET" not in run.error_message
    assert "Traceback" in run.traceback and "SECRETSECRET" not in run.traceback
    assert "SECRETSECRET" not in str(run.args)
    # The error result Huey stores for the task (readable by anyone with queue access).
    with pytest.raises(TaskException) as stored:
        result.get()
    assert stored.value.metadata["error"] == "ValueError('<b>bad</b> input [redacted]')"
    assert "SECRETSECRET" not in str(stored.value.metadata)
    # Both tracebacks keep their lines and indentation, so they stay readable.
    for traceback in (run.traceback, stored.value.metadata["traceback"]):
        assert '\n  File "' in traceback and "in always_fail" in traceback


def test_cancel_revoke_and_expiry_rows(tmp_path, thread_consumer):
    cancelled = cancel_me(str(tmp_path / "log"))
    assert run_of(cancelled, {Status.CANCELLED}).finished_at
    task = record_run.schedule((str(tmp_path / "log"), "rev"), delay=1)
    task.revoke()
    assert run_of(task, {Status.REVOKED}, timeout=20)
    expired = record_run.schedule(
        (str(tmp_path / "log"), "exp"),
        delay=1.5,
        # Absolute: a relative expiry is re-resolved each time the task is enqueued.
        expires=datetime.datetime.now(datetime.UTC).replace(tzinfo=None)
        + datetime.timedelta(seconds=0.5),
    )
    assert run_of(expired, {Status.EXPIRED}, timeout=20)


def test_crash_and_redelivery_row(tmp_path):
    log = tmp_path / "runs.log"
    first = consumers.start_consumer(tmp_path / "first.log", workers=1)
    try:
        # A consumer records itself once its threads have started: the task is queued
        # after that, so the worker is listed before it can be killed in its task.
        consumers.wait_for(
            lambda: WorkerHeartbeat.objects.filter(pid=first.pid).exists(),
            30,
            message="the first worker listed",
        )
        result = record_run(str(log), "victim", seconds=2.0)
        consumers.wait_for(
            lambda: log.exists() and "start victim" in log.read_text(), 30, message="start"
        )
        first.send_signal(signal.SIGKILL)
        first.wait(10)
    finally:
        consumers.stop(first)
    assert TaskRun.objects.get(task_id=result.id).status == Status.RUNNING
    second = consumers.start_consumer(tmp_path / "second.log", workers=1)
    try:
        run = run_of(result, {Status.SUCCEEDED}, timeout=40)
    finally:
        consumers.stop(second)
    assert run.attempts == 2 and run.deliveries == 2
    workers = WorkerHeartbeat.objects.order_by("started_at")
    assert workers.count() == 2
    assert workers[0].stopped_at is None  # killed: never said goodbye
    assert workers[1].stopped_at is not None  # stopped cleanly


def test_maintenance_purges_old_rows_and_marks_dead_letters(settings):
    from django.utils import timezone

    from generation.tasks import maintenance

    HUEY.storage.flush_all()
    old = timezone.now() - datetime.timedelta(days=30)
    TaskRun.objects.create(
        task_name="record_run", task_id="old", status=Status.SUCCEEDED, finished_at=old
    )
    TaskRun.objects.create(
        task_name="record_run",
        task_id="recent",
        status=Status.SUCCEEDED,
        finished_at=timezone.now(),
    )
    TaskRun.objects.create(
        task_name="record_run", task_id="old-but-queued", status=Status.QUEUED, enqueued_at=old
    )
    WorkerHeartbeat.objects.create(host="gone", pid=1, workers=1, last_seen=old)
    dead = record_run.s("/dev/null", "dead")
    HUEY.enqueue(dead)
    consumers.bury(dead.id)
    report = maintenance.call_local()
    assert report["runs_deleted"] == 1 and report["workers_deleted"] == 1
    assert report["dead_marked"] == 0  # marked when it was buried, not at maintenance
    remaining = set(TaskRun.objects.values_list("task_id", flat=True))
    assert "old" not in remaining
    assert {"recent", "old-but-queued", dead.id} <= remaining
    assert TaskRun.objects.get(task_id=dead.id).status == Status.DEAD
    HUEY.storage.flush_all()


def test_maintenance_deletes_results_past_their_retention(settings, tmp_path, thread_consumer):
    """Results retention: a task's stored result is kept for RETENTION["RESULT_HOURS"]
    (24 by default), then the periodic maintenance deletes it."""
    from generation.tasks import maintenance

    result = record_run(str(tmp_path / "log"), "鴉の結果")
    run_of(result, {Status.SUCCEEDED})
    assert HUEY.result(result.id, preserve=True) == "鴉の結果"
    assert maintenance.call_local()["results_deleted"] == 0  # a day is far off
    assert HUEY.result(result.id, preserve=True) == "鴉の結果"

    settings.KARASU["RETENTION"] = {"RESULT_HOURS": 0.5 / 3600}  # half a second
    time.sleep(0.6)
    assert maintenance.call_local()["results_deleted"] >= 1
    assert HUEY.result(result.id, preserve=True) is None
