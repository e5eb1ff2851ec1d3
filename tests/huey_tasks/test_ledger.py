"""The TaskRun ledger, written by a real consumer's signals."""

import datetime
import signal

import pytest
from huey.contrib.djhuey import HUEY
from huey.exceptions import TaskException

from huey_tasks.models import TaskRun, WorkerHeartbeat
from tests.support import consumers
from tests.support.tasks import always_fail, cancel_me, fail_then_succeed, record_run

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
    result = record_run(str(log), "victim", seconds=2.0)
    first = consumers.start_consumer(tmp_path / "first.log", workers=1)
    try:
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

    from huey_tasks.tasks import maintenance

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
