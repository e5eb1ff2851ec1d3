"""What the pipeline's tasks do when the database, the queue storage or the media storage
fails.

Such a failure is not the job's fault, so it never uses one of the job's provider attempts.
A task that meets one is tried again later with back-off, and fails with the real reason
only after ``MAX_INFRASTRUCTURE_RETRIES``. When the database does not answer at all, or the
media storage refuses writes before any paid call, the message is handed back uncounted
instead, so that an outage of any length dead-letters nothing. A result that is already
paid for waits in place for the database rather than being paid for again.
"""

from __future__ import annotations

import logging
import time

from botocore.exceptions import BotoCoreError, ClientError
from django.db import connection
from huey.contrib.djhuey import HUEY
from huey.exceptions import RetryTask
from pymongo.errors import ConnectionFailure, ExecutionTimeout, WTimeoutError

from cms.redaction import redact
from generation import services
from generation.media import MediaUnavailable
from generation.models import GenerationJob
from generation.retrying import DATABASE_ERRORS, retry_policy
from huey_tasks import ledger

logger = logging.getLogger(__name__)

# Failures of the database, the queue storage or the media storage, which are not the
# job's fault. Media on S3 (MEDIA_S3_BUCKET) fails with botocore's errors: BotoCoreError
# when the endpoint is unreachable or times out, and ClientError for an error answer. An
# error answer may come from the configuration (AccessDenied, NoSuchBucket); the job then
# fails with the service's reason once its infrastructure retries are used up.
INFRASTRUCTURE_ERRORS = (
    *DATABASE_ERRORS,
    ConnectionFailure,
    ExecutionTimeout,
    WTimeoutError,
    OSError,
    BotoCoreError,
    ClientError,
)


def database_answers() -> bool:
    """Whether the database answers a trivial query now, on a fresh connection if the
    current one is broken."""
    try:
        ledger.fresh_connection()
        with connection.cursor() as cursor:
            cursor.execute("SELECT 1")
        return True
    except DATABASE_ERRORS:
        return False


def retry_expansion_later(request_id: int, task, count: int, exc: Exception) -> None:
    """Try an expansion, or one of its LLM calls, again later after a database, queue or
    media failure, without using an LLM retry. After too many, fail the request with the
    real reason. When the database does not answer at all, hand the message back uncounted
    instead, because the outage is no fault of the request."""
    if hasattr(task, "delivery") and not database_answers():
        delay = HUEY.hand_back_later(task)
        logger.warning(
            "The database does not answer (%s); request %s's expansion is handed back for %.1f s.",
            exc.__class__.__name__,
            request_id,
            delay,
        )
        return None
    reason = redact(f"infrastructure error: {exc.__class__.__name__}: {exc}")
    policy = retry_policy()
    if count >= policy["MAX_INFRASTRUCTURE_RETRIES"]:
        task.retries = 0
        services.fail_request(request_id, reason, services.EXPANDING_STATES)
        raise exc
    # The count travels with the re-scheduled task.
    task.kwargs["infrastructure_retries"] = count + 1
    task.retry_reason = reason
    delay = services.retry_delay(count + 1, None, policy["BACKOFF_BASE"], policy["BACKOFF_MAX"])
    raise RetryTask(delay=delay) from exc


def store_through_outage(job: GenerationJob, token: str, generated) -> bool:
    """File a paid result, waiting in place while the database is down, because handing the
    task back would pay for the image again. It gives up one lease before the task's
    deadline, so that the deadline's own handling finds the task ended."""
    delay = 1.0
    try:
        while True:
            try:
                return services.store(job, token, generated)
            except DATABASE_ERRORS as exc:
                left = HUEY.time_left()
                if left is None or left < delay + HUEY.storage.lease_seconds:
                    raise
                logger.warning(
                    "Job %s: the database does not answer (%s); its paid image "
                    "waits %.0f s to be filed.",
                    job.pk,
                    exc.__class__.__name__,
                    delay,
                )
                time.sleep(delay)
                ledger.fresh_connection()  # The next attempt gets a new connection.
                delay = min(delay * 2, HUEY.outage_backoff_max)
    finally:
        generated.close()  # Ingest leaves the result open only for this loop.


def defer_job(job_id: int, task, exc: Exception) -> None:
    """Try the job again later after a database, queue or media failure, without using
    one of its provider attempts."""
    reason = redact(f"infrastructure error: {exc.__class__.__name__}: {exc}")
    policy = retry_policy()
    if isinstance(exc, MediaUnavailable) and hasattr(task, "delivery"):
        # The media storage refuses writes, so no call was made. This is an outage like the
        # database's, and it is waited out uncounted. The job says why it waits.
        try:
            services.note_job_waiting(job_id, task.job_claim, f"waiting: {reason}")
        except DATABASE_ERRORS:
            pass  # The database is away too; the claim runs out and the wait is the same.
        delay = HUEY.hand_back_later(task)
        logger.warning("Job %s waits %.1f s for the media storage: %s", job_id, delay, reason)
        return None
    try:
        count = services.defer_job(
            job_id, task.job_claim, reason, policy["MAX_INFRASTRUCTURE_RETRIES"]
        )
    except DATABASE_ERRORS:
        # The deferral could not even be recorded. If the database does not answer at all,
        # that is not the message's fault, so it must not count as a delivery towards the
        # dead letters. The message is handed back to run once the database answers again,
        # after a back-off that grows while the outage lasts. An error from a database that
        # answers is counted like any other.
        if hasattr(task, "delivery") and not database_answers():
            delay = HUEY.hand_back_later(task)
            logger.warning(
                "Could not defer job %s (%s); handing it back for %.1f s.",
                job_id,
                exc.__class__.__name__,
                delay,
            )
            return None
        logger.exception("Could not defer job %s; its message will be redelivered.", job_id)
        task.settle = "abandon"
        return None
    except Exception:
        # Anything else is not an outage. The message is left to be delivered again when
        # its lease runs out, and that delivery is counted, so that a message failing like
        # this every time ends in the dead letters.
        logger.exception("Could not defer job %s; its message will be redelivered.", job_id)
        task.settle = "abandon"
        return None
    if count is None:
        return None  # It failed for good (too many), or it is no longer this worker's job.
    task.retry_reason = reason
    delay = services.retry_delay(count, None, policy["BACKOFF_BASE"], policy["BACKOFF_MAX"])
    raise RetryTask(delay=delay) from exc
