"""A job's life: it is queued, claimed by the worker that runs it, and finished once."""

from __future__ import annotations

import logging
import random
from datetime import timedelta

from django.db import transaction
from django.db.models import CharField, Exists, F, OuterRef, Q, Value
from django.db.models.functions import Cast, Concat
from django.utils import timezone
from wagtail.images import get_image_model

from generation import costs
from generation.ingest import ingest
from generation.models import GenerationJob, GenerationRequest, Spend
from generation.providers import (
    GeneratedImage,
)
from generation.services import requests as _requests
from generation.services.common import (
    COUNTERS,
    NO_CLAIM,
    NO_PROVIDER_CALL,
    SEED_RANGE,
    Job,
    Req,
    lock_request,
    unclaimed,
)

logger = logging.getLogger(__name__)


# Jobs -------------------------------------------------------------------------------------
def call_in_flight(job_id: int | None) -> bool:
    """Whether a worker holds a live claim on the open job. If one does, its provider call
    may be under way, beyond the reach of a revoke or a cancel."""
    return (
        bool(job_id)
        and GenerationJob.objects.filter(pk=job_id, status__in=GenerationJob.OPEN)
        .exclude(unclaimed(timezone.now()))
        .exists()
    )


def mark_queued(job_ids: list[int], batch: str) -> list[int]:
    """Move pending jobs to queued before their tasks are enqueued, and return the jobs
    this call moved.

    One conditional UPDATE decides, so that two clicks (or a click and a retried fan-out)
    enqueue each job once. Task ids are ``generate_image-<job>-<batch>``.
    """
    suffix = f"-{batch}"
    pending = GenerationJob.objects.filter(pk__in=job_ids, status=Job.PENDING)
    request_ids = set(pending.values_list("request_id", flat=True))
    if not request_ids:
        return []
    try:
        with transaction.atomic():
            # The requests are updated first, in the lock order that every writer of both
            # tables keeps. This is undone below if another click queued the jobs first.
            GenerationRequest.objects.filter(
                pk__in=request_ids, status__in=[Req.DRAFT, *GenerationRequest.TERMINAL]
            ).exclude(status=Req.CANCELLED).update(status=Req.GENERATING, finished_at=None)
            if not pending.update(
                status=Job.QUEUED,
                task_id=Concat(Value("generate_image-"), Cast("pk", CharField()), Value(suffix)),
                updated_at=timezone.now(),
            ):
                raise _Unchanged
            return list(
                GenerationJob.objects.filter(
                    pk__in=job_ids, status=Job.QUEUED, task_id__endswith=suffix
                ).values_list("pk", flat=True)
            )
    except _Unchanged:
        return []


def job_indexes(job_ids: list[int]) -> dict[int, int]:
    """Each job's position in its request, which the fan-out orders by."""
    return dict(GenerationJob.objects.filter(pk__in=job_ids).values_list("pk", "index"))


def unmark_queued(job_ids: list[int], batch: str) -> int:
    """Undo mark_queued when enqueueing failed, so that the jobs are pending again."""
    return GenerationJob.objects.filter(
        pk__in=job_ids, status=Job.QUEUED, task_id__endswith=f"-{batch}"
    ).update(status=Job.PENDING, task_id="", updated_at=timezone.now())


def runnable_job(job_id: int) -> GenerationJob | None:
    """The job if it still needs running, or None when it is finished, cancelled or
    missing."""
    images = get_image_model().objects.filter(generation_job_id=OuterRef("pk"))
    job = (
        GenerationJob.objects.select_related("request")
        .annotate(has_image=Exists(images))
        .filter(pk=job_id, status__in=GenerationJob.OPEN)
        .first()
    )
    if job is not None and job.has_image:
        # An earlier delivery ingested the image and died before recording it.
        image = get_image_model().objects.filter(generation_job_id=job_id).first()
        finish_job(
            job_id, Job.SUCCEEDED, image=image, request_id=job.request_id, error=filing_note(image)
        )
        return None
    if job is not None and job.request.status == Req.CANCELLED:
        finish_unclaimed_job(job_id, Job.CANCELLED, error="request cancelled")
        return None
    return job


class JobBusy(Exception):
    """Another worker holds a live claim on this job, so its provider call may be in
    flight."""


def claim_job(job: GenerationJob, token: str, seconds: float, message_id: str = "") -> bool:
    """Claim a job exclusively for one counted attempt, or return False if it finished
    meanwhile.

    It raises JobBusy while another worker's claim is live. An expired claim is taken over,
    and the token fences out its holder's later writes. On success ``job`` carries the
    claim and its counted attempt.
    """
    now = timezone.now()
    fields = dict(
        status=Job.RUNNING,
        started_at=now,
        error="",
        claim_token=token,
        claim_expires_at=now + timedelta(seconds=seconds),
        claim_message=message_id,
        updated_at=now,
    )
    updated = (
        GenerationJob.objects.filter(pk=job.pk, status__in=GenerationJob.OPEN)
        .filter(unclaimed(now))
        .update(attempts=F("attempts") + 1, **fields)
    )
    if updated:
        # Only a claim holder changes attempts, so the count read with the job holds.
        for name, value in fields.items():
            setattr(job, name, value)
        job.attempts += 1
        return True
    if GenerationJob.objects.filter(pk=job.pk, status__in=GenerationJob.OPEN).exists():
        raise JobBusy(f"job {job.pk} is being generated by another worker")
    return False


def claim_held(job_id: int, token: str) -> bool:
    """Whether ``token`` still holds a live claim on the job. It is checked before a paid
    call."""
    return GenerationJob.objects.filter(
        pk=job_id, claim_token=token, claim_expires_at__gt=timezone.now()
    ).exists()


def extend_job_claims(claims: list[tuple[int, str]], seconds: float) -> set[tuple[int, str]]:
    """Push the expiry of the held (job, token) claims forward, and return those that
    another worker holds now. A claim that this worker gave back itself before it stopped
    holding it (its job finished, or is to be retried) is not counted as lost."""
    tokens = [token for _, token in claims]
    GenerationJob.objects.filter(claim_token__in=tokens).update(
        claim_expires_at=timezone.now() + timedelta(seconds=seconds)
    )
    current = dict(
        GenerationJob.objects.filter(pk__in=[job_id for job_id, _ in claims]).values_list(
            "pk", "claim_token"
        )
    )
    return {
        (job_id, token) for job_id, token in claims if current.get(job_id, "") not in ("", token)
    }


def release_job(job_id: int, token: str) -> bool:
    """Give a claim back before any provider call, returning the attempt it counted."""
    return bool(
        GenerationJob.objects.filter(pk=job_id, status=Job.RUNNING, claim_token=token).update(
            status=Job.QUEUED,
            attempts=F("attempts") - 1,
            updated_at=timezone.now(),
            **NO_CLAIM,
        )
    )


def request_cancelled(job_id: int) -> bool:
    return GenerationRequest.objects.filter(jobs__pk=job_id, status=Req.CANCELLED).exists()


def filing_note(image) -> str:
    """What the job says about its filed image: why it is not marked or signed as
    configured (a signing error, say), or "" when it is."""
    return getattr(image, "provenance_note", "") or ""


def store(job: GenerationJob, token: str, generated: GeneratedImage) -> bool:
    """File the image and mark the job succeeded, but only while ``token`` holds the claim.

    A worker that lost its claim (past its deadline, or taken over) files nothing.
    """

    def confirm(image) -> bool:
        return finish_job(
            job.pk,
            Job.SUCCEEDED,
            image=image,
            token=token,
            request_id=job.request_id,
            error=filing_note(image),
        )

    # runnable_job() found no image for this job, and only the claim holder files one.
    image, created = ingest(job, generated, confirm=confirm, check_existing=False)
    if image is None:
        return False
    # The image was found rather than created. It was filed by an attempt whose commit
    # raised but went through (the job then succeeded with it), or by an earlier run that
    # did not confirm it.
    return (
        created
        or confirm(image)
        or GenerationJob.objects.filter(pk=job.pk, status=Job.SUCCEEDED, image=image).exists()
    )


def mark_retrying(job_id: int, token: str, reason: str) -> bool:
    return bool(
        GenerationJob.objects.filter(pk=job_id, status=Job.RUNNING, claim_token=token).update(
            status=Job.RETRYING, error=reason, updated_at=timezone.now(), **NO_CLAIM
        )
    )


def note_job_waiting(job_id: int, token: str | None, reason: str) -> bool:
    """Keep the job waiting, uncounted, through an outage such as the media storage
    refusing writes. Its claim and the attempt that claim counted are given back, and
    ``reason`` shows why it waits."""
    now = timezone.now()
    jobs = GenerationJob.objects.filter(pk=job_id, status__in=GenerationJob.OPEN)
    jobs = jobs.filter(claim_token=token) if token else jobs.filter(unclaimed(now))
    return bool(
        jobs.update(
            status=Job.RETRYING,
            error=reason,
            attempts=F("attempts") - (1 if token else 0),
            updated_at=now,
            **NO_CLAIM,
        )
    )


def defer_job(job_id: int, token: str | None, reason: str, max_retries: int) -> int | None:
    """After a database, queue or media error, give the claim (and the attempt it counted)
    back and count an infrastructure retry. Return that count, or None when the job was
    failed (too many retries) or is no longer this worker's."""
    now = timezone.now()
    jobs = GenerationJob.objects.filter(pk=job_id, status__in=GenerationJob.OPEN)
    jobs = jobs.filter(claim_token=token) if token else jobs.filter(unclaimed(now))
    count = jobs.values_list("infra_retries", flat=True).first()
    if count is None:
        return None
    if count >= max_retries:
        finish_own_job(job_id, Job.FAILED, token, error=reason)
        return None
    moved = jobs.update(
        status=Job.RETRYING,
        error=f"{reason} (will retry)",
        infra_retries=F("infra_retries") + 1,
        attempts=F("attempts") - (1 if token else 0),
        updated_at=now,
        **NO_CLAIM,
    )
    return count + 1 if moved else None


class _Unchanged(Exception):
    """Roll back a transaction whose conditional update matched nothing."""


def finish_job(
    job_id: int,
    status: str,
    *,
    error: str = "",
    image=None,
    token: str | None = None,
    request_id: int | None = None,
) -> bool:
    """Move a job to a terminal status once, counting it on its request. With ``token``,
    this happens only while that claim holds."""
    jobs = GenerationJob.objects.filter(pk=job_id, status__in=GenerationJob.OPEN)
    if token:
        jobs = jobs.filter(claim_token=token)
    return _finish(jobs, job_id, status, error=error, image=image, request_id=request_id)


def finish_unclaimed_job(job_id: int, status: str, *, error: str = "") -> bool:
    """Finish the job only while no worker holds a live claim on it, so that a call in
    flight finishes first."""
    jobs = GenerationJob.objects.filter(pk=job_id, status__in=GenerationJob.OPEN)
    return _finish(jobs.filter(unclaimed(timezone.now())), job_id, status, error=error)


def finish_own_job(job_id: int, status: str, token: str | None, *, error: str = "") -> bool:
    """Finish the job with this worker's claim ``token``. Without a token, finish it only
    while no worker holds a claim."""
    if token:
        return finish_job(job_id, status, error=error, token=token)
    return finish_unclaimed_job(job_id, status, error=error)


def finish_abandoned_job(
    job_id: int, error: str, *, claim_message: str, stale_by, not_after
) -> bool:
    """Fail the job of a message whose worker stopped (a dead letter), unless something
    moved it on since ``not_after`` (an editor's retry) or a live worker holds it.

    The claim that the stopped worker took (found by ``claim_message``) need not run out
    first, but only if it was not renewed since, which ``stale_by`` tells. A holder whose
    message was taken over keeps renewing its claim while its call runs."""
    free = unclaimed(timezone.now()) | Q(
        claim_message=claim_message, claim_expires_at__lte=stale_by
    )
    jobs = GenerationJob.objects.filter(
        free, pk=job_id, status__in=GenerationJob.OPEN, updated_at__lte=not_after
    )
    return _finish(jobs, job_id, Job.FAILED, error=error)


def _finish(
    jobs,
    job_id: int,
    status: str,
    *,
    error: str = "",
    image=None,
    request_id: int | None = None,
) -> bool:
    """Move the job to ``status`` if ``jobs`` still selects it, counting it on its request
    in the same transaction."""
    now = timezone.now()
    if request_id is None:
        request_id = (
            GenerationJob.objects.filter(pk=job_id).values_list("request_id", flat=True).first()
        )
        if request_id is None:
            return False
    counter = COUNTERS[status]
    counts = {counter: F(counter) + 1}
    price = None
    if status == Job.SUCCEEDED:
        # The image is paid for, so the spend grows with the count in the same UPDATE. It
        # grows at the price per image the request was saved with, which is fixed once its
        # prompts exist.
        price = costs.request_unit_price(request_id)
        if price:
            counts["cost_spent"] = F("cost_spent") + price
    try:
        with transaction.atomic():
            # The request row is updated first, as every writer of both rows takes them, so
            # that PostgreSQL never sees the two locks taken in opposite orders (a deadlock).
            GenerationRequest.objects.filter(pk=request_id).update(**counts)
            if not jobs.update(
                status=status,
                error=error,
                image=image,
                finished_at=now,
                updated_at=now,
                **NO_CLAIM,
            ):
                raise _Unchanged
            if price:  # The spend is booked to the day and month it was spent in.
                Spend.objects.create(
                    request_id=request_id, job_id=job_id, amount=price, spent_at=now
                )
            _requests.settle_request(request_id)
    except _Unchanged:
        return False
    return True


def reset_failed_jobs(request: GenerationRequest) -> list[int]:
    """Put failed jobs back to pending for another run, and return their ids.

    The read and the update use the same conditions under the request's lock, so that two
    concurrent "Retry failed" clicks move (and count) each job once.
    """
    now = timezone.now()
    with transaction.atomic():
        lock_request(request.pk)
        if GenerationRequest.objects.filter(pk=request.pk, status=Req.CANCELLED).exists():
            return []  # Nothing of a cancelled request runs again.
        ids = list(request.jobs.filter(status=Job.FAILED).values_list("pk", flat=True))
        if not ids:
            return []
        GenerationJob.objects.filter(pk__in=ids, status=Job.FAILED).update(
            status=Job.PENDING,
            attempts=0,
            infra_retries=0,
            recoveries=0,
            error="",
            finished_at=None,
            updated_at=now,
            **NO_CLAIM,
        )
        GenerationRequest.objects.filter(pk=request.pk).update(
            status=Req.GENERATING, finished_at=None, jobs_failed=F("jobs_failed") - len(ids)
        )
    return ids


def regenerate_job(job: GenerationJob) -> bool:
    """Give a finished job a new seed and run it again. Its old images stay in the library
    but no longer belong to the job."""
    with transaction.atomic():
        lock_request(job.request_id)
        status = GenerationJob.objects.filter(pk=job.pk).values_list("status", flat=True).first()
        if (
            status not in GenerationJob.TERMINAL
            or GenerationRequest.objects.filter(pk=job.request_id, status=Req.CANCELLED).exists()
        ):
            return False  # It runs already, or its request was cancelled for good.
        get_image_model().objects.filter(generation_job_id=job.pk).update(generation_job_id=None)
        GenerationJob.objects.filter(pk=job.pk, status=status).update(
            status=Job.PENDING,
            image=None,
            attempts=0,
            infra_retries=0,
            recoveries=0,
            error="",
            finished_at=None,
            seed=random.randint(0, SEED_RANGE),
            updated_at=timezone.now(),
            **NO_CLAIM,
            **NO_PROVIDER_CALL,
        )
        counter = COUNTERS[status]
        # cost_spent stays, because the old image was paid for and stays in the library.
        # The new one is a new provider call, which finish_job adds when it succeeds.
        GenerationRequest.objects.filter(pk=job.request_id).update(
            status=Req.GENERATING, finished_at=None, **{counter: F(counter) - 1}
        )
    return True


def reopen_job(job_id: int) -> bool:
    """Queue a failed job again when its message (a dead letter) is being requeued."""
    with transaction.atomic():
        request_id = (
            GenerationJob.objects.filter(pk=job_id).values_list("request_id", flat=True).first()
        )
        if request_id is None:
            return False
        lock_request(request_id)
        if GenerationRequest.objects.filter(pk=request_id, status=Req.CANCELLED).exists():
            return False  # Nothing of a cancelled request runs again.
        moved = GenerationJob.objects.filter(pk=job_id, status=Job.FAILED).update(
            status=Job.QUEUED, error="", finished_at=None, updated_at=timezone.now(), **NO_CLAIM
        )
        if moved:
            GenerationRequest.objects.filter(pk=request_id).update(
                status=Req.GENERATING, finished_at=None, jobs_failed=F("jobs_failed") - 1
            )
    return bool(moved)


def update_prompt(job: GenerationJob, prompt: str) -> bool:
    """Save an editor's new prompt. Its alt text, written for the old prompt, is derived
    again from the new one at ingest."""
    return bool(
        GenerationJob.objects.filter(pk=job.pk, status=Job.PENDING).update(
            prompt=prompt,
            alt_text="",
            **NO_PROVIDER_CALL,  # A new prompt is a new provider request.
        )
    )


def retry_delay(
    attempt: int,
    retry_after: float | None,
    base: float,
    cap: float,
    retry_after_cap: float | None = None,
) -> float:
    """Exponential backoff with jitter; a provider's Retry-After wins when it is longer, up
    to ``retry_after_cap`` seconds (the policy's RETRY_AFTER_CAP; ``cap`` when not given):
    a hostile or broken ``Retry-After: 99999999`` must not park a job for years."""
    backoff = min(cap, base * 2 ** (attempt - 1)) * random.uniform(0.5, 1.5)
    limit = cap if retry_after_cap is None else retry_after_cap
    return max(backoff, min(retry_after or 0.0, limit))
