"""How the pipeline tries again: the retry policy of its tasks, and the writes that record
a paid provider result, tried again in place through a database blip.

The policy (``retry_policy()``) is ``settings.KARASU["RETRY"]`` over the defaults below.
Once a provider has answered, its result is paid for. A failover or "database is locked"
while the result is written must not throw it away, or the retry of the whole task pays
again. Inside a worker's task a whole outage is waited out, as long as the task's deadline
allows. Elsewhere (a command, a view) a few attempts are made and the last error is raised.
"""

from __future__ import annotations

import logging
import sqlite3

from botocore.exceptions import BotoCoreError, ClientError
from django.conf import settings
from django.db import InterfaceError, OperationalError, connection
from huey.contrib.djhuey import HUEY
from tenacity import (
    Retrying,
    retry_if_exception,
    retry_if_exception_type,
    stop_after_attempt,
    wait_exponential_jitter,
)

logger = logging.getLogger(__name__)

DATABASE_ERRORS = (OperationalError, InterfaceError, sqlite3.OperationalError)
# How a media write fails: OSError on a local disk, botocore's errors on an S3 endpoint.
MEDIA_ERRORS = (OSError, BotoCoreError, ClientError)
OUTSIDE_TASK_ATTEMPTS = 5


def retry_policy() -> dict:
    return {
        "MAX_RETRIES": 3,
        "BACKOFF_BASE": 2.0,
        "BACKOFF_MAX": 60.0,
        "MAX_INFRASTRUCTURE_RETRIES": 5,
        "RETRY_AFTER_CAP": 60.0,
        **settings.KARASU.get("RETRY", {}),
    }


def _retryable(exc: BaseException) -> bool:
    # Nothing can be retried inside a caller's transaction, because that transaction is
    # broken.
    return isinstance(exc, DATABASE_ERRORS) and not connection.in_atomic_block


def _before_retry(state) -> None:
    logger.warning("Writing a paid result failed (%s); trying again.", state.outcome.exception())
    connection.close_if_unusable_or_obsolete()  # The next attempt gets a new connection.


def _out_of_patience(state) -> bool:
    left = HUEY.time_left()
    # Outside a consumer's task, nobody would resume the paid work later.
    if left is None:
        return state.attempt_number >= OUTSIDE_TASK_ATTEMPTS
    # Give up one lease before the deadline, so that the deadline's handling finds the
    # task ended (and its claims still its own) instead of a thread still writing.
    return left < state.upcoming_sleep + HUEY.storage.lease_seconds


def _outage_wait(state) -> float:
    return wait_exponential_jitter(multiplier=0.25, max=HUEY.outage_backoff_max)(state)


def paid_result_writes() -> Retrying:
    """The attempts for one write, used as
    ``for attempt in paid_result_writes(): with attempt: ...``.

    In a consumer's task, the write is tried until the database answers or the task's
    deadline comes near, with sleeps doubling from a quarter of a second up to
    ``KARASU_OUTAGE_BACKOFF_MAX``. Elsewhere it is tried up to five times over 4 to 7 s.
    The last error is raised as it was.
    """
    return Retrying(
        retry=retry_if_exception(_retryable),
        stop=_out_of_patience,
        wait=_outage_wait,
        before_sleep=_before_retry,
        reraise=True,
    )


def _before_media_retry(state) -> None:
    logger.warning("Storing a paid image failed (%s); trying again.", state.outcome.exception())


def paid_media_writes() -> Retrying:
    """The attempts for storing a paid image's file: up to three, over about a second. If
    the storage still refuses it, the job is deferred with its provider request stored, so
    that the next attempt collects the same request instead of paying again."""
    return Retrying(
        retry=retry_if_exception_type(MEDIA_ERRORS),
        stop=stop_after_attempt(3),
        wait=wait_exponential_jitter(multiplier=0.2, max=1),
        before_sleep=_before_media_retry,
        reraise=True,
    )
