"""The pipeline's Huey tasks. They are thin, because the work is in ``generation.services``.

Huey names a task after its module and function, and a queued message names its task, so
the tasks below keep their module and names across releases."""

from __future__ import annotations

import logging
import threading
import time
import uuid
from types import SimpleNamespace

from huey import crontab
from huey.contrib.djhuey import HUEY, db_periodic_task, db_task
from huey.exceptions import RateLimitExceeded, RetryTask

from generation import (
    reconcile,
    services,
    settling,  # noqa: F401 - connects the dead-letter and deadline handlers
)
from generation.limits import limiter_for, llm_limiter_for, rate_limit_for, requests_per_minute
from generation.media import MEDIA
from generation.models import GenerationJob, GenerationRequest, internal_error
from generation.outages import (
    INFRASTRUCTURE_ERRORS,
    defer_job,
    retry_expansion_later,
    store_through_outage,
)
from generation.providers import (
    HandedBack,
    PermanentProviderError,
    ProviderError,
    TransientProviderError,
    get_image_model,
    get_llm,
    import_provider_modules,
)
from generation.retrying import DATABASE_ERRORS, retry_policy
from generation.signals import report_llm_error, report_provider_error
from huey_tasks import ledger
from huey_tasks import maintenance as queue_maintenance
from huey_tasks.task_backend import follow_ups_in_place

logger = logging.getLogger(__name__)

Failed = GenerationJob.Status.FAILED
# The HUEY.hold() group of the jobs being generated, as (job id, claim token) pairs.
JOB_CLAIMS = "job-claim"
# The HUEY.hold() group of the LLM calls being streamed, as (call id, claim token) pairs.
CALL_CLAIMS = "call-claim"
# Seconds before a task whose job another worker holds looks again.
CLAIM_WAIT = 2.0

# A new request's prompts are written before any queued image is generated. Otherwise a
# request submitted behind a big batch would wait for the whole batch just to start.
EXPANSION_PRIORITY = 20


@db_task(retries=2, retry_delay=10, context=True, priority=EXPANSION_PRIORITY)
def expand_prompt(request_id: int, task=None, infrastructure_retries: int = 0) -> dict:
    """Plan the request's LLM calls and enqueue one ``expand_call`` task per call. The calls
    run in parallel under the LLM's CONCURRENCY, and each writes its prompts as soon as they
    arrive (with auto-generate, it queues their images too).

    A redelivery or a restart enqueues the calls that have not finished, leaving a call
    under way alone, and completes a fan-out that failed half way.
    """
    try:
        call_ids = services.plan_expansion(request_id)
        job_ids = services.pending_jobs_to_generate(request_id)
    except INFRASTRUCTURE_ERRORS as exc:
        return retry_expansion_later(request_id, task, infrastructure_retries, exc)
    except ProviderError as exc:
        # Refused before any call was made, for example because the source image is gone.
        report_llm_error(request_id, exc)
        services.fail_request(request_id, exc.reason, services.EXPANDING_STATES)
        task.retries = 0
        raise
    except Exception as exc:
        # The last attempt fails the request; the traceback is in the job monitor.
        if not task.retries:
            services.fail_request(request_id, internal_error(exc), services.EXPANDING_STATES)
        raise
    try:
        enqueue_calls(request_id, call_ids)
        # A failed fan-out leaves its jobs pending, and the retry queues them.
        queue_jobs(job_ids)
    except INFRASTRUCTURE_ERRORS as exc:
        # If these retries run out, maintenance completes the fan-out.
        return retry_expansion_later(request_id, task, infrastructure_retries, exc)
    return {"calls": len(call_ids), "jobs": len(job_ids)}


def enqueue_calls(request_id: int, call_ids: list[int]) -> None:
    if not call_ids:
        return
    try:
        HUEY.enqueue_many(
            [
                expand_call.s(call_id, request_id, priority=EXPANSION_PRIORITY + 1)
                for call_id in call_ids
            ]
        )
    except Exception:
        # Taken but never enqueued: put back, or the expansion's retry would count them as
        # in flight and nothing would run them until maintenance gave them up as lost.
        try:
            services.untake_calls(call_ids)
        except Exception:
            logger.exception("Could not put back calls %s; maintenance will.", call_ids)
        raise


# A call is tried this many times; these are its own attempts, not the expansion's. A
# provider's Retry-After is honoured up to RETRY["RETRY_AFTER_CAP"] seconds (60), so that a
# hostile or mistaken header cannot park the call for years.
LLM_CALL_ATTEMPTS = 4


# Huey's retries stay at 0 because the attempts are counted on the call. RetryTask and a
# full limiter re-schedule the task without using Huey retries, and retry_delay stays 0 so
# that their own delays apply.
@db_task(retries=0, retry_delay=0, context=True, priority=EXPANSION_PRIORITY)
def expand_call(call_id: int, request_id: int, task=None, infrastructure_retries: int = 0):
    """Make one LLM call of an expansion while holding one of the LLM's slots. The call's
    prompts are written as jobs a few at a time as they stream in, and with auto-generate
    their images are queued at once. A transient error retries this call alone, asking
    only for the prompts it had not written. The task deadline (KARASU_TASK_DEADLINE)
    bounds this call, not the whole expansion."""
    task = task or SimpleNamespace(kwargs={})
    task.call_token = None
    task.call_claim = None
    try:
        next_calls = _run_call(call_id, request_id, task)
        enqueue_calls(request_id, next_calls)
        queue_jobs(services.pending_jobs_to_generate(request_id))
    except INFRASTRUCTURE_ERRORS as exc:
        # The call is still claimed only if the LLM was not called or its answer is
        # already written, so releasing it does not count an attempt.
        if task.call_token:
            try:
                services.release_call(call_id, task.call_token)
            except DATABASE_ERRORS:
                pass  # The same message, delivered again, takes its call over.
        return retry_expansion_later(request_id, task, infrastructure_retries, exc)
    finally:
        if task.call_claim:
            HUEY.drop(CALL_CLAIMS, (call_id, task.call_claim))


def _run_call(call_id: int, request_id: int, task) -> list[int]:
    request = GenerationRequest.objects.filter(pk=request_id).only("llm").first()
    if request is None:
        return []
    try:
        llm = get_llm(request.llm)
    except ProviderError as exc:
        return services.fail_call(call_id, None, exc.reason)
    delivery = getattr(task, "delivery", None)
    limiter = llm_limiter_for(llm.name, llm.concurrency)
    # With no free slot, or over the per-minute limit, RateLimitExceeded re-schedules the
    # task as waiting.
    with limiter.slot() as slot:
        try:
            token = services.claim_call(
                call_id,
                delivery.message_id if delivery else "",
                HUEY.storage.lease_seconds * services.CLAIM_LEASES,
            )
        except services.CallBusy as exc:
            # Another attempt's stream may be under way (this message was delivered again
            # while its worker stalled), so look again once that claim may have run out.
            # Waiting is not a failure.
            raise RateLimitExceeded(str(exc), CLAIM_WAIT) from None
        if token is None:
            return []
        task.call_token = token
        # The heartbeat renews the claim on its own thread while the stream runs.
        task.call_claim = token
        HUEY.hold(CALL_CLAIMS, (call_id, token))
        try:
            if llm.requests_per_minute:
                requests_per_minute(f"llm:{llm.name}", llm.requests_per_minute).acquire()
            limiter.ensure_held(slot)
        except RateLimitExceeded:
            services.release_call(call_id, token)
            task.call_token = None
            raise
        try:
            next_calls = services.run_call(call_id, token, on_written=_queue_written)
        except TransientProviderError as exc:
            report_llm_error(request_id, exc)
            attempts = services.call_attempts(call_id)
            if attempts >= LLM_CALL_ATTEMPTS:
                return services.fail_call(call_id, token, exc.reason)
            services.retry_call_later(call_id, token, exc.reason)
            task.call_token = None
            task.retry_reason = exc.reason
            policy = retry_policy()
            delay = services.retry_delay(
                attempts,
                exc.retry_after,
                policy["BACKOFF_BASE"],
                policy["BACKOFF_MAX"],
                retry_after_cap=policy["RETRY_AFTER_CAP"],
            )
            raise RetryTask(delay=delay) from exc
        except PermanentProviderError as exc:
            report_llm_error(request_id, exc)
            return services.fail_call(call_id, token, exc.reason)
    task.call_token = None  # The answer is written, so there is nothing to give back.
    return next_calls


def _queue_written(job_ids: list[int]) -> None:
    """Queue the images of a group of prompts that a streaming call has just written.

    Trouble with the queue must not end the stream, which is paid for. The jobs then stay
    pending, and the end of the call (or maintenance) queues them."""
    try:
        queue_jobs(job_ids)
    except INFRASTRUCTURE_ERRORS:
        logger.warning(
            "Could not queue %d jobs yet; they are queued later.", len(job_ids), exc_info=True
        )


# Generation goes ahead of housekeeping (such as Wagtail's index updates for new images),
# which catches up as soon as a provider's slots are full.
GENERATION_PRIORITY = 10


def fair_priority(index: int) -> float:
    """The priority of a request's image at ``index``, which shares the slots between
    requests, least served first.

    Every request's k-th image is claimed before any request's (k+1)-th, so a small request
    submitted behind a big batch runs at once and the batch waits only for its work. The
    priority travels with the message through retries, slot waits, promotion and
    dead-letter requeues."""
    return GENERATION_PRIORITY + 1 / (index + 1)


# The fan-out enqueues this many jobs at a time, so that the first images start while the
# rest of a big request is still being queued.
FAN_OUT_CHUNK = 100


def queue_jobs(job_ids: list[int]) -> list[int]:
    """Fan out: enqueue one generate_image task per pending job, with one storage write
    per chunk, and return the jobs queued.

    Jobs move from pending to queued first, in one conditional UPDATE, so that concurrent
    clicks enqueue each job once. If an enqueue fails, the jobs not yet enqueued are put
    back to pending and the error propagates; no job is left queued without a message to
    run it.
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
        # Each request's first images go first.
        ids.sort(key=lambda job_id: indexes.get(job_id, 0))
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


# Huey's retries stay at 0 because the attempts are counted on the job. RetryTask and a
# full limiter re-schedule the task without using Huey retries, and retry_delay stays 0 so
# that their own delays apply.
@db_task(retries=0, retry_delay=0, context=True)
def generate_image(job_id: int, task=None) -> None:
    """Generate and ingest one job's image. Re-running a finished job does nothing, and
    a job's provider call is made only under its exclusive claim.

    The outcome is recorded in the job's state. The task returns nothing, which spares the
    queue a result write per image."""
    task = task or SimpleNamespace()  # Called locally, the task has no queue context.
    task.job_claim = None
    try:
        _run(job_id, task)
    except INFRASTRUCTURE_ERRORS as exc:
        # This includes an outage met while another outcome was being recorded.
        defer_job(job_id, task, exc)
    finally:
        if task.job_claim:
            HUEY.drop(JOB_CLAIMS, (job_id, task.job_claim))


def _run(job_id: int, task) -> int | None:
    try:
        return _generate(job_id, task)
    except RateLimitExceeded:
        raise  # Waiting for a slot, or for another worker's claim, is not a failure.
    except HandedBack as exc:
        return _hand_back(job_id, task, exc)
    except services.ClaimLost as exc:
        logger.warning("Job %s was taken over while it ran: %s.", job_id, exc)
        return None
    except TransientProviderError as exc:
        return _retry_or_fail(job_id, task, exc)
    except PermanentProviderError as exc:
        _fail_for_good(job_id, task, exc.reason)
        raise
    except INFRASTRUCTURE_ERRORS:
        raise
    except Exception as exc:
        _fail(job_id, task, internal_error(exc))
        raise


def _generate(job_id: int, task) -> int | None:
    job = services.runnable_job(job_id)
    if job is None:
        return None
    # A model unknown to this worker raises PermanentProviderError.
    model = get_image_model(job.request.image_model)
    limiter = limiter_for(model.name)
    token = uuid.uuid4().hex
    # The slot covers the provider call only, because filing the image needs no slot. With
    # no free slot, or over the per-minute limit, RateLimitExceeded re-schedules the task.
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
            # A storage that refused the last write must take one first, so that no call is
            # paid for an image that could not be filed. MediaUnavailable defers the job; it
            # does not fail it.
            MEDIA.ensure_writable()
            # The rate limit counts only a call about to be made, not a duplicate message.
            if rate_limit := rate_limit_for(model):
                rate_limit.acquire()
            # A worker paused past its lease (a GC pause, a frozen VM) may have lost both the
            # slot and the claim to another worker by now.
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
            # Only a consumer's task stops with its consumer, not one called locally.
            consumed = delivery is not None
            # A worker on its way out starts no new provider call.
            if consumed and HUEY.stopping.is_set():
                raise HandedBack("the worker is stopping", in_flight=False)
            # The stored request id, fenced by the token, makes every later attempt resume
            # this call. A stopping worker hands the wait back (HUEY.handing_back).
            generated = services.generate(
                job, model, token, stop=HUEY.handing_back.is_set if consumed else None
            )
        except ProviderError as exc:
            report_provider_error(model.name, exc)  # For the metrics; it never raises.
            raise
    # The image's index updates run here, in this worker, instead of as more messages.
    with follow_ups_in_place():
        stored = store_through_outage(job, token, generated)
    if not stored:
        logger.warning("Job %s was taken over while it ran; its image was not filed.", job_id)
        return None
    return job.pk


def _hand_back(job_id: int, task, exc: HandedBack) -> None:
    """Hand the job back because the worker is stopping.

    The job (its attempt not counted) and its message go back at once. Its provider request
    stays stored and in flight, and the next worker resumes it."""
    if task.job_claim:
        services.release_job(job_id, task.job_claim)
    task.settle = "release"
    if exc.in_flight:
        logger.warning(
            "Job %s handed back while its provider request runs; the next worker resumes it.",
            job_id,
        )
    else:
        logger.info("Job %s handed back before its provider call: the worker is stopping.", job_id)
    return None


def _fail(job_id: int, task, reason: str) -> bool:
    """Fail the job. A provider request it stored stays stored, so that if the failure was
    not the provider's (a bug of ours, say), "Retry failed" collects that paid request."""
    token = task.job_claim
    return services.finish_own_job(job_id, Failed, token, error=reason)


def _fail_for_good(job_id: int, task, reason: str) -> None:
    """Fail a job that the provider refused, and give its stored request up (cancel it at
    the provider and forget it), so that a retry submits anew."""
    if _fail(job_id, task, reason):
        services.give_up_call(job_id)


def _retry_or_fail(job_id: int, task, exc: TransientProviderError) -> None:
    token = task.job_claim
    if token is None:  # The error did not come from a provider call of this run.
        _fail(job_id, task, exc.reason)
        raise exc
    if services.request_cancelled(job_id):
        # The request was cancelled while this call ran, so there is no new attempt.
        if services.finish_job(
            job_id, GenerationJob.Status.CANCELLED, error="request cancelled", token=token
        ):
            services.give_up_call(job_id)
        return None
    policy = retry_policy()
    if task.job_attempts > policy["MAX_RETRIES"]:
        if services.finish_job(job_id, Failed, error=exc.reason, token=token):
            services.give_up_call(job_id)
        raise exc
    if not services.mark_retrying(job_id, token, exc.reason):
        return None  # The claim was taken over, and its new holder decides.
    task.retry_reason = exc.reason  # The ledger's RETRYING entry shows it.
    delay = services.retry_delay(
        task.job_attempts,
        exc.retry_after,
        policy["BACKOFF_BASE"],
        policy["BACKOFF_MAX"],
        retry_after_cap=policy["RETRY_AFTER_CAP"],  # a hostile header parks no job for years
    )
    raise RetryTask(delay=delay) from exc


def _extend_job_claims(claims: list[tuple[int, str]], seconds: float) -> set[tuple[int, str]]:
    with ledger.worker_connection():
        return services.extend_job_claims(claims, seconds * services.CLAIM_LEASES)


def _extend_call_claims(claims: list[tuple[int, str]], seconds: float) -> set[tuple[int, str]]:
    with ledger.worker_connection():
        return services.extend_call_claims(claims, seconds * services.CLAIM_LEASES)


# Job and LLM call claims are renewed on a thread of their own. A stalled queue storage
# must not let a claim run out under a live call, and a stalled database must not stop the
# renewal of the message leases.
HUEY.register_keeper(JOB_CLAIMS, _extend_job_claims, own_thread=True)
HUEY.register_keeper(CALL_CLAIMS, _extend_call_claims, own_thread=True)


def _import_providers(event: str, consumer) -> None:
    """Import every configured provider's module when a worker starts, so that a request's
    first LLM call does not wait for it (anthropic alone takes about 2 s). The import runs
    on a thread of its own, so that the rest of the worker's start-up (its heartbeat
    record) does not wait for it either."""
    if event == "start":
        threading.Thread(target=import_provider_modules, name="karasu-imports", daemon=True).start()


HUEY.on_consumer_event(_import_providers)


# Housekeeping ---------------------------------------------------------------------------
@db_periodic_task(crontab(minute="*/5"))
def maintenance() -> dict:
    """Keep the house. It deletes old ledger rows, results and worker records, marks dead
    letters in the ledger, and gives every job and request that has no way to a final
    state one (see ``reconcile``). Its counts are kept for the job monitor.

    Expired leases need no sweep: both storages redeliver them on dequeue.
    """
    result = {
        **queue_maintenance.housekeeping(HUEY),
        **reconcile.reconcile(HUEY, queue_jobs, expand_prompt),
    }
    queue_maintenance.remember(HUEY, result)
    return result
