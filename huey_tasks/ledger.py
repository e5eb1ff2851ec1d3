"""The TaskRun ledger, written from Huey's signals with one cheap UPDATE per state change.

Enqueues are recorded in the producer, and everything else in the consumer. A fan-out records its
tasks with one bulk INSERT (see ``bulk_enqueue``).
"""

from __future__ import annotations

import contextlib
import logging
import os
import socket
import threading
import time
import traceback as tb
from collections.abc import Iterator

from django.db import InterfaceError, OperationalError, close_old_connections, connection
from django.db.models import F, Value
from django.db.models.functions import Concat, Right
from django.utils import timezone
from huey import signals as S

from cms.redaction import redact, redact_traceback
from huey_tasks import registry
from huey_tasks.models import TaskRun, WorkerHeartbeat
from huey_tasks.queue import HAND_BACK, SIGNAL_DEAD_LETTERED, SIGNAL_DEADLINE

logger = logging.getLogger(__name__)
Status = TaskRun.Status
LOG_LIMIT = 4000
HOST = socket.gethostname()
_batch = threading.local()

# A promoted, re-scheduled or requeued task is queued again from these statuses, and never
# from a running or finished one, because the promotion's signal may arrive after a worker
# took the task.
REQUEUEABLE = [Status.QUEUED, Status.RETRYING, Status.RATE_LIMITED, Status.LOCKED, Status.DEAD]

# Signal -> (status, whether the run is finished) for the simple transitions.
SIMPLE = {
    S.SIGNAL_COMPLETE: (Status.SUCCEEDED, True),
    S.SIGNAL_CANCELED: (Status.CANCELLED, True),
    S.SIGNAL_REVOKED: (Status.REVOKED, True),
    S.SIGNAL_EXPIRED: (Status.EXPIRED, True),
    S.SIGNAL_RATE_LIMITED: (Status.RATE_LIMITED, False),
    S.SIGNAL_LOCKED: (Status.LOCKED, True),
    S.SIGNAL_INTERRUPTED: (Status.QUEUED, False),
}


def short_name(task) -> str:
    return task.name.rsplit(".", 1)[-1]


def safe_args(task) -> list:
    """The arguments as JSON, each value redacted, and values that are not JSON as their
    repr."""
    values = list(task.args) + [{k: v} for k, v in sorted(task.kwargs.items())]
    out = []
    for value in values:
        if isinstance(value, int | float | bool) or value is None:
            out.append(value)
        else:
            out.append(redact(repr(value) if not isinstance(value, str) else value))
    return out


def _links(tasks) -> dict[str, dict]:
    """The link columns of the tasks whose owner registered them (``huey_tasks.registry``),
    with one call per kind of task in the batch."""
    by_kind: dict[str, list] = {}
    for task in tasks:
        by_kind.setdefault(short_name(task), []).append(task)
    links: dict[str, dict] = {}
    for name, batch in by_kind.items():
        kind = registry.task_kind(name)
        if kind.links is not None:
            links.update(kind.links(batch))
    return links


def record_enqueued(tasks: list) -> None:
    if not tasks:
        return
    now = timezone.now()
    links = _links(tasks)
    TaskRun.objects.bulk_create(
        [
            TaskRun(
                task_name=task.name,
                task_id=task.id,
                status=Status.QUEUED,
                args=safe_args(task),
                enqueued_at=now,
                **links.get(task.id, {}),
            )
            for task in tasks
        ],
        update_conflicts=True,
        unique_fields=["task_id"],
        update_fields=["status"],
        batch_size=500,
    )


@contextlib.contextmanager
def bulk_enqueue() -> Iterator[None]:
    """Collect the ENQUEUED signals of a fan-out and write them in one INSERT."""
    _batch.tasks = []
    try:
        yield
        tasks = _batch.tasks
    finally:
        _batch.tasks = None
    try:
        record_enqueued(tasks)
    except Exception:  # The tasks are queued, and a ledger failure must not undo that.
        logger.exception("Could not record %d enqueued tasks", len(tasks))


def fresh_connection() -> None:
    """Drop a broken or expired database connection before using it from a worker thread.

    It does nothing inside a transaction (a caller's atomic block, or a test's), which it
    would end.
    """
    if not connection.in_atomic_block:
        close_old_connections()


@contextlib.contextmanager
def worker_connection() -> Iterator[None]:
    """Give database work outside a task (the heartbeat, the dead-letter and deadline
    handlers) a usable connection before, and leave none open after beyond
    CONN_MAX_AGE."""
    fresh_connection()
    try:
        yield
    finally:
        fresh_connection()


# Settlements of a task that returned without its work done (see LeasingHuey._settle).
HANDED_BACK = {HAND_BACK, "release", "abandon"}


def _log_line(text: str):
    line = f"{timezone.now():%H:%M:%S} {text}\n"
    return Right(Concat(F("log"), Value(line)), LOG_LIMIT)


def _update(task, status__in=None, **fields) -> int:
    runs = TaskRun.objects.filter(task_id=task.id)
    if status__in is not None:
        runs = runs.filter(status__in=status__in)
    return runs.update(**fields)


def on_signal(signal: str, task, *args) -> None:
    try:
        handle(signal, task, *args)
        if signal not in (S.SIGNAL_ENQUEUED, S.SIGNAL_EXECUTING):
            # The task's last write ran after Huey closed its connection: close this one
            # too when it has outlived CONN_MAX_AGE, or it stays open as long as its thread.
            fresh_connection()
    except (OperationalError, InterfaceError) as exc:
        # The database is down. Every task says so once per signal, without a traceback.
        logger.warning(
            "Could not record %s for task %s: %s: %s",
            signal,
            task.id,
            exc.__class__.__name__,
            (str(exc).strip().splitlines() or [""])[0],
        )
    except Exception:  # The ledger must never break a task.
        logger.exception("Could not record %s for task %s", signal, task.id)


def handle(signal: str, task, *args) -> None:
    if getattr(task, "past_deadline", False) and signal != SIGNAL_DEADLINE:
        return  # It failed as timed out, and a late outcome does not change that.
    if signal == S.SIGNAL_ENQUEUED:
        if getattr(_batch, "tasks", None) is not None:
            _batch.tasks.append(task)
        elif not _update(task, status__in=REQUEUEABLE, status=Status.QUEUED, finished_at=None):
            if not TaskRun.objects.filter(task_id=task.id).exists():
                record_enqueued([task])
        return

    if signal == S.SIGNAL_EXECUTING:
        close_old_connections()
        task._ledger_started = time.monotonic()
        delivery = getattr(task, "delivery", None)
        fields = dict(
            status=Status.RUNNING,
            started_at=timezone.now(),
            finished_at=None,
            attempts=F("attempts") + 1,
            worker_host=HOST,
            worker_pid=os.getpid(),
            worker_thread=threading.current_thread().name,
            deliveries=delivery.deliveries if delivery else F("deliveries"),
        )
        if not _update(task, log=_log_line(f"running on {HOST}:{os.getpid()}"), **fields):
            # It was enqueued where no ledger was listening (a periodic task, say), so a row
            # is started now.
            record_enqueued([task])
            _update(task, **fields)
        return

    duration = None
    if started := getattr(task, "_ledger_started", None):
        duration = time.monotonic() - started

    if signal == S.SIGNAL_ERROR:
        exc = args[0] if args else None
        message = redact(str(exc)) if exc is not None else ""
        _update(
            task,
            status=Status.FAILED,
            finished_at=timezone.now(),
            duration=duration,
            error_class=exc.__class__.__name__ if exc is not None else "",
            error_message=message[:500],
            traceback=redact_exception(exc),
            log=_log_line(f"error: {exc.__class__.__name__}: {message}"),
        )
    elif signal == S.SIGNAL_RETRYING:
        if getattr(task, "_ledger_rate_limited", False):
            # Huey re-schedules a rate-limited task as a retry, but it is still waiting.
            return
        reason = getattr(task, "retry_reason", "") or "will retry"
        _update(
            task,
            status=Status.RETRYING,
            finished_at=None,
            duration=duration,
            log=_log_line(f"retrying: {redact(reason)}"),
        )
    elif signal == SIGNAL_DEAD_LETTERED:
        letter = args[0]
        with worker_connection():
            _update(
                task,
                status=Status.DEAD,
                finished_at=timezone.now(),
                deliveries=letter.deliveries,
                error_message=redact(letter.reason)[:500],
                log=_log_line(f"dead-lettered: {letter.reason}"),
            )
    elif signal == SIGNAL_DEADLINE:
        message = f"timed out: no result within {args[0]:.0f} s"
        with worker_connection():
            _update(
                task,
                status=Status.FAILED,
                finished_at=timezone.now(),
                duration=duration,
                error_class="DeadlineExceeded",
                error_message=message,
                log=_log_line(message),
            )
    elif signal == S.SIGNAL_TIMEOUT:
        _update(task, log=_log_line("timed out"))
    elif signal == S.SIGNAL_COMPLETE and getattr(task, "settle", None) in HANDED_BACK:
        # It returned, but only to hand its message back (the database or media did not
        # answer, or the worker is stopping): it runs again, it did not succeed. Only while
        # the row is still this worker's run: one frozen past its lease must not write over
        # the outcome of the worker that took the message since.
        TaskRun.objects.filter(
            task_id=task.id, status=Status.RUNNING, worker_host=HOST, worker_pid=os.getpid()
        ).update(status=Status.QUEUED, duration=duration, log=_log_line("handed back"))
    elif signal in SIMPLE:
        task._ledger_rate_limited = signal == S.SIGNAL_RATE_LIMITED
        status, finished = SIMPLE[signal]
        fields = {"status": status, "duration": duration}
        if finished:
            fields["finished_at"] = timezone.now()
        _update(task, log=_log_line(status.label.lower()), **fields)


def redact_exception(exc) -> str:
    if exc is None:
        return ""
    return redact_traceback("".join(tb.format_exception(type(exc), exc, exc.__traceback__)))


# Workers -----------------------------------------------------------------------------------
def worker_event(event: str, consumer) -> None:
    """Record a consumer's lifecycle: "start", "beat" (periodically) and "stop"."""
    try:
        with worker_connection():
            _record_worker(event, consumer)
    except Exception:
        logger.exception("Could not record worker %s", event)


def _record_worker(event: str, consumer) -> None:
    now = timezone.now()
    key = getattr(consumer, "_ledger_worker_id", None)
    if event == "start" or key is None:
        worker = WorkerHeartbeat.objects.create(
            host=HOST,
            pid=os.getpid(),
            workers=consumer.workers,
            worker_type=consumer.worker_type,
            started_at=now,
            last_seen=now,
        )
        consumer._ledger_worker_id = worker.pk
    elif event == "beat":
        WorkerHeartbeat.objects.filter(pk=key).update(last_seen=now)
    elif event == "stop":
        WorkerHeartbeat.objects.filter(pk=key).update(last_seen=now, stopped_at=now)


def mark_dead_letters(huey) -> int:
    """Mark the ledger rows of dead-lettered messages as dead."""
    task_ids = []
    for letter in huey.storage.dead_letters(limit=1000):
        try:
            task_ids.append(huey.deserialize_task(letter.data).id)
        except Exception:  # An undecodable message has no ledger row to mark.
            continue
    if not task_ids:
        return 0
    return (
        TaskRun.objects.filter(task_id__in=task_ids)
        .exclude(status=Status.DEAD)
        .update(status=Status.DEAD, finished_at=timezone.now())
    )


def purge_finished_runs(older_than) -> int:
    cutoff = timezone.now() - older_than
    deleted, _ = TaskRun.objects.filter(
        status__in=TaskRun.FINISHED, finished_at__lt=cutoff
    ).delete()
    return deleted


def purge_stopped_workers(older_than) -> int:
    cutoff = timezone.now() - older_than
    deleted, _ = WorkerHeartbeat.objects.filter(last_seen__lt=cutoff).delete()
    return deleted
