"""The task functions. They are thin: the work is in ``generation.services``."""

from __future__ import annotations

import datetime
import functools
import logging
import time
import uuid

from django.conf import settings
from huey import crontab
from huey.contrib.djhuey import HUEY, db_periodic_task, db_task
from huey.exceptions import RateLimitExceeded, RetryTask

from generation import services
from generation.models import GenerationJob
from generation.providers import (
    ImageModel,
    PermanentProviderError,
    TransientProviderError,
    get_image_model,
)
from huey_tasks import ledger
from huey_tasks.limiter import ConcurrencyLimiter

logger = logging.getLogger(__name__)


def retry_policy() -> dict:
    return {"MAX_RETRIES": 3, "BACKOFF_BASE": 2.0, "BACKOFF_MAX": 60.0,
            **settings.KARASU.get("RETRY", {})}


@db_task(retries=2, retry_delay=10, context=True)
def expand_prompt(request_id: int, task=None) -> dict:
    """Ask the LLM for the request's prompts; with auto-generate, fan out their jobs."""
    started = time.monotonic()
    try:
        job_ids = services.expand_request(request_id)
    except TransientProviderError as exc:
        if task.retries:
            services.note_request_error(request_id, f"{exc.reason} (will retry)")
        else:
            services.fail_request(request_id, exc.reason)
        raise
    except PermanentProviderError as exc:
        services.fail_request(request_id, exc.reason)
        task.retries = 0  # retrying cannot help
        raise
    except Exception as exc:
        if not task.retries:  # the traceback is in the job monitor
            services.fail_request(request_id, f"internal error: {exc.__class__.__name__}")
        raise
    expanded = time.monotonic()
    queue_jobs(job_ids)
    return {
        "jobs": len(job_ids),
        "expand_seconds": expanded - started,
        "fan_out_seconds": time.monotonic() - expanded,
    }


# Generation goes ahead of housekeeping (e.g. Wagtail's index updates for new images),
# which catches up as soon as a provider's slots are full.
GENERATION_PRIORITY = 10


def queue_jobs(job_ids: list[int]) -> None:
    """The fan-out: one generate_image task per job, enqueued in one storage write.

    Enqueue first, then record: a crash in between leaves runnable tasks, never jobs
    that look queued with nothing in the queue.
    """
    if not job_ids:
        return
    task_ids = {job_id: f"generate_image-{job_id}-{uuid.uuid4().hex[:12]}" for job_id in job_ids}
    with ledger.bulk_enqueue():
        HUEY.enqueue_many(
            [generate_image.s(job_id, id=task_ids[job_id], priority=GENERATION_PRIORITY)
             for job_id in job_ids]
        )
    services.mark_queued(job_ids, task_ids)


@functools.cache
def limiter_for(model_name: str) -> ConcurrencyLimiter:
    model = get_image_model(model_name)
    return ConcurrencyLimiter(HUEY, f"image:{model_name}", model.concurrency)


def rate_limit_for(model: ImageModel):
    if model.requests_per_minute:
        return HUEY.rate_limit(f"image:{model.name}", model.requests_per_minute, 60)
    return None


# retries=0: attempts are counted on the job; RetryTask and a full limiter re-schedule
# without consuming Huey retries, and retry_delay stays 0 so their own delays apply.
@db_task(retries=0, retry_delay=0, context=True)
def generate_image(job_id: int, task=None) -> int | None:
    """Generate and ingest one job's image. Re-running a finished job does nothing."""
    job = services.runnable_job(job_id)
    if job is None:
        return None
    model = get_image_model(job.request.image_model)
    try:
        # The slot covers the provider call only; filing the image needs no slot.
        # No free slot, or over the per-minute limit: RateLimitExceeded, re-scheduled.
        with limiter_for(model.name).slot():
            if rate_limit := rate_limit_for(model):
                rate_limit.acquire()
            job = services.start_job(job_id)
            if job is None:
                return None
            generated = services.generate(job, model)
        services.store(job, generated)
    except TransientProviderError as exc:
        policy = retry_policy()
        if job.attempts <= policy["MAX_RETRIES"]:
            services.mark_retrying(job.pk, exc.reason)
            task.retry_reason = exc.reason  # for the ledger's RETRYING entry
            delay = services.retry_delay(
                job.attempts, exc.retry_after, policy["BACKOFF_BASE"], policy["BACKOFF_MAX"]
            )
            raise RetryTask(delay=delay) from exc
        services.finish_job(job.pk, Failed, error=exc.reason)
        raise
    except PermanentProviderError as exc:
        services.finish_job(job.pk, Failed, error=exc.reason)
        raise
    except RateLimitExceeded:
        raise  # waiting for a slot is not a failure
    except Exception as exc:
        services.finish_job(job.pk, Failed, error=f"internal error: {exc.__class__.__name__}")
        raise
    return job.pk


Failed = GenerationJob.Status.FAILED


@db_periodic_task(crontab(minute="*/5"))
def maintenance() -> dict:
    """Housekeeping: retention of ledger rows, results and worker records; dead letters
    marked in the ledger; requests whose jobs are all finished marked finished.

    Expired leases need no sweep: both storages redeliver them on dequeue.
    """
    retention = settings.KARASU.get("RETENTION", {})
    return {
        "runs_deleted": ledger.purge_finished_runs(
            datetime.timedelta(days=retention.get("RUN_DAYS", 7))
        ),
        "workers_deleted": ledger.purge_stopped_workers(datetime.timedelta(days=1)),
        "results_deleted": HUEY.storage.purge_results(
            retention.get("RESULT_HOURS", 24) * 3600
        ),
        "dead_marked": ledger.mark_dead_letters(HUEY),
        "requests_settled": services.settle_finished_requests(),
    }
