"""Django's task backend for Wagtail's own background tasks (search index, reference index,
file deletion, focal points). It is Huey's, plus follow-ups run in place.

A worker filing a generated image would otherwise queue two follow-up messages per image
(the search and the reference index), each with its own claim, ack, stored result and
ledger row, which is more queue work than the image itself. Inside ``follow_ups_in_place()`` those
tasks run in the same thread right after the transaction commits. One that fails is queued
as usual, so it is retried by a worker and shows in the job monitor.
"""

from __future__ import annotations

import contextlib
import logging
import threading
from collections.abc import Iterator

from django.db import transaction
from django_tasks.base import TaskResult, TaskResultStatus
from django_tasks.utils import get_random_id
from huey.contrib.djhuey.tasks_backend import HueyBackend

logger = logging.getLogger(__name__)
_local = threading.local()


@contextlib.contextmanager
def follow_ups_in_place() -> Iterator[None]:
    """Run the tasks this thread enqueues here after commit, instead of queueing them."""
    outer = getattr(_local, "active", False)
    _local.active = True
    try:
        yield
    finally:
        _local.active = outer


class FollowUpTaskBackend(HueyBackend):
    def enqueue(self, task, args, kwargs) -> TaskResult:
        if not getattr(_local, "active", False) or task.takes_context:
            return super().enqueue(task, args, kwargs)
        self.validate_task(task)
        transaction.on_commit(lambda: self._run_in_place(task, list(args), dict(kwargs)))
        return TaskResult(
            task=task,
            id=get_random_id(),
            status=TaskResultStatus.READY,
            enqueued_at=None,
            started_at=None,
            last_attempted_at=None,
            finished_at=None,
            args=list(args),
            kwargs=dict(kwargs),
            backend=self.alias,
            errors=[],
            worker_ids=[],
        )

    def _run_in_place(self, task, args: list, kwargs: dict) -> None:
        try:
            task.call(*args, **kwargs)
            return
        except Exception:
            logger.warning("%s failed in place; queued to run again.", task.name, exc_info=True)
        try:
            super().enqueue(task, args, kwargs)
        except Exception:
            # The image is filed, and only its index entry is missing, which
            # ``manage.py update_index`` rebuilds. That must never fail the job that filed
            # the image.
            logger.exception("Could not queue %s%r either.", task.name, tuple(args))
