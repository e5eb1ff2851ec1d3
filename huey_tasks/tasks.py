"""The task functions. They are thin: the work is in ``generation.services``."""

from __future__ import annotations

import datetime
import functools
import logging
import time
import uuid
from types import SimpleNamespace

from botocore.exceptions import BotoCoreError, ClientError
from django.conf import settings
from huey import crontab
from huey.contrib.djhuey import HUEY, db_periodic_task, db_task
from huey.exceptions import RateLimitExceeded, RetryTask
from pymongo.errors import ConnectionFailure, ExecutionTimeout, WTimeoutError

from generation import services
from generation.media import MEDIA
from generation.models import GenerationJob, GenerationRequest
from generation.providers import (
    ImageModel,
    PermanentProviderError,
    ProviderError,
    TransientProviderError,
    get_image_model,
)
from generation.providers.errors import redact
from generation.retrying import DATABASE_ERRORS
from huey_tasks import ledger, reconcile
from huey_tasks.limiter import ConcurrencyLimiter, RequestsPerMinute
from huey_tasks.queue import SIGNAL_DEAD_LETTERED, SIGNAL_DEADLINE
from huey_tasks.task_backend import follow_ups_in_place
from ops.counters import count_llm_error, count_provider_error

logger = logging.getLogger(__name__)

Failed = GenerationJob.Status.FAILED
EXPANDING = [GenerationRequest.Status.QUEUED, GenerationRequest.Status.EXPANDING]
JOB_CLAIMS = "job-claim"  # HUEY.hold() group: (job id, claim token) of jobs being generated
CLAIM_WAIT = 2.0  # seconds before a task whose job another worker holds looks again

# The database, the queue storage or the media storage failing: not the job's fault.
# Media on S3 (MEDIA_S3_BUCKET) fails with botocore's errors: the endpoint unreachable or
# timing out (BotoCoreError), or an error answer (ClientError), which may be configuration
# (AccessDenied, NoSuchBucket) and then fails the job after the bounded infrastructure
# retries, with the service's reason.
INFRASTRUCTURE_ERRORS = (
    *DATABASE_ERRORS,
    ConnectionFailure,
    ExecutionTimeout,
    WTimeoutError,
    OSError,
    BotoCoreError,
    ClientError,
)


def retry_policy() -> dict:
    return {
        "MAX_RETRIES": 3,
        "BACKOFF_BASE": 2.0,
        "BACKOFF_MAX": 60.0,
        "MAX_INFRASTRUCTURE_RETRIES": 5,
        **settings.KARASU.get("RETRY", {}),
    }


# A new request's prompts are written before any queued image is generated: otherwise a
# request submitted behind a big batch would wait for the whole batch just to start.
EXPANSION_PRIORITY = 20


@db_task(retries=2, retry_delay=10, context=True, priority=EXPANSION_PRIORITY)
def expand_prompt(request_id: int, task=None, infrastructure_retries: int = 0) -> dict:
    """Ask the LLM for the request's prompts; with auto-generate, fan out their jobs.

    A retry after the prompts were written only completes the fan-out.
    """
    started = time.monotonic()
    try:
        job_ids = services.expand_request(request_id)
    except INFRASTRUCTURE_ERRORS as exc:
        _retry_expansion_later(request_id, task, infrastructure_retries, exc)
    except TransientProviderError as exc:
        count_llm_error(request_id, exc)  # for the metrics; never raises
        if task.retries:
            services.note_request_error(request_id, f"{exc.reason} (will retry)")
        else:
            services.fail_request(request_id, exc.reason, EXPANDING)
        raise
    except PermanentProviderError as exc:
        count_llm_error(request_id, exc)
        services.fail_request(request_id, exc.reason, EXPANDING)
        task.retries = 0  # retrying cannot help
        raise
    except Exception as exc:
        if not task.retries:  # the traceback is in the job monitor
            services.fail_request(
                request_id, f"internal error: {exc.__class__.__name__}", EXPANDING
            )
        raise
    expanded = time.monotonic()
    try:
        queue_jobs(job_ids)  # a failed fan-out leaves its jobs pending for the retry
    except INFRASTRUCTURE_ERRORS as exc:  # maintenance completes it if these run out
        _retry_expansion_later(request_id, task, infrastructure_retries, exc)
    return {
        "jobs": len(job_ids),
        "expand_seconds": expanded - started,
        "fan_out_seconds": time.monotonic() - expanded,
    }


def _retry_expansion_later(request_id: int, task, count: int, exc: Exception) -> None:
    """Database, queue or media trouble: try again later without using an LLM retry;
    after too many, fail the request with the real reason."""
    reason = redact(f"infrastructure error: {exc.__class__.__name__}: {exc}")
    policy = retry_policy()
    if count >= policy["MAX_INFRASTRUCTURE_RETRIES"]:
        task.retries = 0
        services.fail_request(request_id, reason, EXPANDING)
        raise exc
    task.kwargs["infrastructure_retries"] = count + 1  # travels with the re-scheduled task
    task.retry_reason = reason
    delay = services.retry_delay(count + 1, None, policy["BACKOFF_BASE"], policy["BACKOFF_MAX"])
    raise RetryTask(delay=delay) from exc


# Generation goes ahead of housekeeping (e.g. Wagtail's index updates for new images),
# which catches up as soon as a provider's slots are full.
GENERATION_PRIORITY = 10


def fair_priority(index: int) -> float:
    """Slots are shared between requests, least served first: every request's k-th image
    is claimed before anyone's (k+1)-th, so a small request submitted behind a big batch
    runs at once and the batch waits only for its work. The priority travels with the
    message through retries, slot waits, promotion and dead-letter requeues."""
    return GENERATION_PRIORITY + 1 / (index + 1)


# Fan-out chunk: the first images start while the rest of a big request is still queued.
FAN_OUT_CHUNK = 100


def queue_jobs(job_ids: list[int]) -> list[int]:
    """The fan-out: one generate_image task per pending job, a storage write per chunk.

    Jobs move pending -> queued first, in one conditional UPDATE, so concurrent clicks
    enqueue each job once; if an enqueue fails the jobs not yet enqueued are pending again
    (and the error propagates), never queued with no message to run them. Returns the jobs
    queued.
    """
    if not job_ids:
        return []
    batch = uuid.uuid4().hex[:12]
    ids = services.mark_queued(job_ids, batch)
    if not ids:
        return []
    start = 0
    try:
        indexes = services.job_indexes(ids)
        ids.sort(key=lambda job_id: indexes.get(job_id, 0))  # each request's first first
        for start in range(0, len(ids), FAN_OUT_CHUNK):
            chunk = ids[start : start + FAN_OUT_CHUNK]
            with ledger.bulk_enqueue():
                HUEY.enqueue_many(
                    [
                        generate_image.s(
                            job_id,
                            id=f"generate_image-{job_id}-{batch}",
                            priority=fair_priority(indexes.get(job_id, 0)),
                        )
                        for job_id in chunk
                    ]
                )
    except Exception:
        services.unmark_queued(ids[start:], batch)
        raise
    return ids


@functools.cache
def limiter_for(model_name: str) -> ConcurrencyLimiter:
    model = get_image_model(model_name)
    return ConcurrencyLimiter(HUEY, f"image:{model_name}", model.concurrency)


def rate_limit_for(model: ImageModel) -> RequestsPerMinute | None:
    """The model's requests-per-minute limit, if it has one (shared by every worker)."""
    if model.requests_per_minute:
        return _requests_per_minute(model.name, model.requests_per_minute)
    return None


@functools.cache
def _requests_per_minute(model_name: str, limit: int) -> RequestsPerMinute:
    # One per model and limit: it remembers its last window (to clean up after a lull),
    # and a changed REQUESTS_PER_MINUTE gets a fresh one.
    return RequestsPerMinute(HUEY, f"image:{model_name}", limit, period=60)


# retries=0: attempts are counted on the job; RetryTask and a full limiter re-schedule
# without consuming Huey retries, and retry_delay stays 0 so their own delays apply.
@db_task(retries=0, retry_delay=0, context=True)
def generate_image(job_id: int, task=None) -> None:
    """Generate and ingest one job's image. Re-running a finished job does nothing, and
    a job's provider call is made only under its exclusive claim.

    The outcome is the job's state; returning nothing spares a result write per image."""
    task = task or SimpleNamespace()  # called locally: no queue context
    task.job_claim = None
    try:
        _run(job_id, task)
    except INFRASTRUCTURE_ERRORS as exc:  # also while recording another outcome
        _defer(job_id, task, exc)
    finally:
        if task.job_claim:
            HUEY.drop(JOB_CLAIMS, (job_id, task.job_claim))


def _run(job_id: int, task) -> int | None:
    try:
        return _generate(job_id, task)
    except RateLimitExceeded:
        raise  # waiting for a slot (or for another worker's claim) is not a failure
    except TransientProviderError as exc:
        return _retry_or_fail(job_id, task, exc)
    except PermanentProviderError as exc:
        _fail(job_id, task, exc.reason)
        raise
    except INFRASTRUCTURE_ERRORS:
        raise
    except Exception as exc:
        _fail(job_id, task, f"internal error: {exc.__class__.__name__}")
        raise


def _generate(job_id: int, task) -> int | None:
    job = services.runnable_job(job_id)
    if job is None:
        return None
    model = get_image_model(job.request.image_model)  # unknown here: PermanentProviderError
    limiter = limiter_for(model.name)
    token = uuid.uuid4().hex
    # The slot covers the provider call only; filing the image needs no slot.
    # No free slot, or over the per-minute limit: RateLimitExceeded, re-scheduled.
    with limiter.slot() as slot:
        lease = HUEY.storage.lease_seconds
        delivery = getattr(task, "delivery", None)
        try:
            if not services.claim_job(
                job, token, lease * services.CLAIM_LEASES, delivery.message_id if delivery else ""
            ):
                return None
        except services.JobBusy as exc:
            raise RateLimitExceeded(str(exc), CLAIM_WAIT) from None
        claimed_at = time.monotonic()
        task.job_claim = token
        task.job_attempts = job.attempts
        HUEY.hold(JOB_CLAIMS, (job_id, token))
        try:
            # A storage that refused the last write must take one first: no paid call for
            # an image that could not be filed (MediaUnavailable: deferred, not a failure).
            MEDIA.ensure_writable()
            # Counted only for a call about to be made (not for a duplicate message).
            if rate_limit := rate_limit_for(model):
                rate_limit.acquire()
            # Paused past the lease (GC, frozen VM)? Another worker may own both now.
            limiter.ensure_held(slot)
            if HUEY.is_lost(JOB_CLAIMS, (job_id, token)) or (
                time.monotonic() - claimed_at > lease / 3 and not services.claim_held(job_id, token)
            ):
                raise RateLimitExceeded(f"job {job_id} claim lost", CLAIM_WAIT)
        except RateLimitExceeded:
            services.release_job(job_id, token)
            HUEY.drop(JOB_CLAIMS, (job_id, token))
            task.job_claim = None
            raise
        try:
            generated = services.generate(job, model)
        except ProviderError as exc:
            count_provider_error(model.name, exc)  # for the metrics; never raises
            raise
    with follow_ups_in_place():  # the image's index updates: here, not as more messages
        stored = services.store(job, token, generated)
    if not stored:
        logger.warning("Job %s was taken over while it ran; its image was not filed.", job_id)
        return None
    return job.pk


def _fail(job_id: int, task, reason: str) -> None:
    token = task.job_claim
    services.finish_job(job_id, Failed, error=reason, token=token, unclaimed_only=not token)


def _retry_or_fail(job_id: int, task, exc: TransientProviderError) -> None:
    token = task.job_claim
    if token is None:  # not raised by a provider call of this run
        _fail(job_id, task, exc.reason)
        raise exc
    if services.request_cancelled(job_id):
        # Cancelled while this call ran: no new attempt.
        services.finish_job(
            job_id, GenerationJob.Status.CANCELLED, error="request cancelled", token=token
        )
        return None
    policy = retry_policy()
    if task.job_attempts > policy["MAX_RETRIES"]:
        services.finish_job(job_id, Failed, error=exc.reason, token=token)
        raise exc
    if not services.mark_retrying(job_id, token, exc.reason):
        return None  # the claim was taken over: the new holder decides
    task.retry_reason = exc.reason  # for the ledger's RETRYING entry
    delay = services.retry_delay(
        task.job_attempts, exc.retry_after, policy["BACKOFF_BASE"], policy["BACKOFF_MAX"]
    )
    raise RetryTask(delay=delay) from exc


def _defer(job_id: int, task, exc: Exception) -> None:
    """Database, queue or media trouble: retry later without using a provider attempt."""
    reason = redact(f"infrastructure error: {exc.__class__.__name__}: {exc}")
    policy = retry_policy()
    try:
        count = services.defer_job(
            job_id, task.job_claim, reason, policy["MAX_INFRASTRUCTURE_RETRIES"]
        )
    except Exception:
        # Cannot even record it: leave the message to be delivered again when its lease
        # runs out (counted, so a lasting outage ends in the dead letters, not a hot loop).
        logger.exception("Could not defer job %s; its message will be redelivered.", job_id)
        task.settle = "abandon"
        return None
    if count is None:
        return None  # failed for good (too many), or no longer this worker's job
    task.retry_reason = reason
    delay = services.retry_delay(count, None, policy["BACKOFF_BASE"], policy["BACKOFF_MAX"])
    raise RetryTask(delay=delay) from exc


def _extend_job_claims(claims: list[tuple[int, str]], seconds: float) -> set[tuple[int, str]]:
    with ledger.worker_connection():
        return services.extend_job_claims(claims, seconds * services.CLAIM_LEASES)


HUEY.register_keeper(JOB_CLAIMS, _extend_job_claims)


# Messages that will never finish: settle what they were for at once ---------------------
def _task_target(task) -> tuple[str, int | None]:
    name = task.name.rsplit(".", 1)[-1]
    target = task.args[0] if task.args and isinstance(task.args[0], int) else None
    return name, target


@HUEY.signal(SIGNAL_DEAD_LETTERED)
def settle_dead_letter(signal, task, letter) -> None:
    name, target = _task_target(task)
    if target is not None:
        with ledger.worker_connection():
            reconcile.settle_dead_letter(name, target, letter, HUEY.storage.lease_seconds)


@HUEY.signal(SIGNAL_DEADLINE)
def settle_deadline(signal, task, deadline) -> None:
    name, target = _task_target(task)
    reason = f"timed out: no result within {deadline:.0f} s"
    if target is None:
        return
    with ledger.worker_connection():
        if name == "generate_image":
            # The stuck holder's own claim (its late result is then fenced out); never a
            # claim another worker took over meanwhile.
            token = getattr(task, "job_claim", None)
            services.finish_job(target, Failed, error=reason, token=token, unclaimed_only=not token)
        elif name == "expand_prompt":
            services.fail_request(target, reason, EXPANDING)


# Housekeeping ---------------------------------------------------------------------------
@db_periodic_task(crontab(minute="*/5"))
def maintenance() -> dict:
    """Housekeeping: retention of ledger rows, results and worker records; dead letters
    marked in the ledger; every job and request without a way to a final state given one
    (see ``reconcile``). Its counts are kept for the job monitor.

    Expired leases need no sweep: both storages redeliver them on dequeue.
    """
    retention = settings.KARASU.get("RETENTION", {})
    result = {
        "runs_deleted": ledger.purge_finished_runs(
            datetime.timedelta(days=retention.get("RUN_DAYS", 7))
        ),
        "workers_deleted": ledger.purge_stopped_workers(datetime.timedelta(days=1)),
        "results_deleted": HUEY.storage.purge_results(retention.get("RESULT_HOURS", 24) * 3600),
        "dead_marked": ledger.mark_dead_letters(HUEY),
        **reconcile.reconcile(HUEY, queue_jobs, expand_prompt),
    }
    reconcile.remember(HUEY, result)
    return result
