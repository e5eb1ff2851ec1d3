"""The pipeline's state changes. Every transition is a conditional UPDATE, so a redelivered
task or two workers racing change nothing twice, and request counters move in the same
transaction as the job they count (F() increments: no lost updates)."""

from __future__ import annotations

import logging
import random

from django.db import transaction
from django.db.models import Case, F, Value, When
from django.utils import timezone
from wagtail.images import get_image_model

from generation.ingest import ingest
from generation.models import GenerationJob, GenerationRequest
from generation.providers import GeneratedImage, ImageModel, get_llm

logger = logging.getLogger(__name__)

Job = GenerationJob.Status
Req = GenerationRequest.Status
COUNTERS = {Job.SUCCEEDED: "jobs_succeeded", Job.FAILED: "jobs_failed",
            Job.CANCELLED: "jobs_cancelled"}
SEED_RANGE = 2**31 - 1


# Requests -------------------------------------------------------------------------------
def start_request(request: GenerationRequest) -> bool:
    """Draft (without prompts) or failed -> queued. The caller enqueues expand_prompt."""
    return bool(
        GenerationRequest.objects.filter(
            pk=request.pk, status__in=[Req.DRAFT, Req.FAILED], jobs_total=0
        ).update(status=Req.QUEUED, error="", finished_at=None)
    )


def expand_request(request_id: int) -> list[int]:
    """Write the request's prompts as jobs; return the job ids to generate now."""
    updated = GenerationRequest.objects.filter(
        pk=request_id, status__in=[Req.QUEUED, Req.EXPANDING]
    ).update(status=Req.EXPANDING)
    if not updated:
        return []  # cancelled, missing, or expanded by an earlier delivery
    request = GenerationRequest.objects.get(pk=request_id)
    if not request.jobs.exists():
        prompts = get_llm(request.llm).expand(
            request.theme, request.count, brief=request.brief, style=request.style
        )
        with transaction.atomic():
            GenerationJob.objects.bulk_create(
                GenerationJob(
                    request=request, index=i, prompt=prompt,
                    seed=random.randint(0, SEED_RANGE),
                )
                for i, prompt in enumerate(prompts)
            )
            GenerationRequest.objects.filter(pk=request_id).update(jobs_total=len(prompts))
    next_status = Req.GENERATING if request.auto_generate else Req.DRAFT
    moved = GenerationRequest.objects.filter(pk=request_id, status=Req.EXPANDING).update(
        status=next_status
    )
    if not moved or not request.auto_generate:
        return []  # cancelled while the LLM was writing, or prompts to review first
    return list(request.jobs.filter(status=Job.PENDING).values_list("pk", flat=True))


def fail_request(request_id: int, reason: str) -> None:
    GenerationRequest.objects.filter(pk=request_id, status__in=GenerationRequest.ACTIVE).update(
        status=Req.FAILED, error=reason, finished_at=timezone.now()
    )


def note_request_error(request_id: int, reason: str) -> None:
    GenerationRequest.objects.filter(pk=request_id).update(error=reason)


def cancel_request(request: GenerationRequest) -> list[str]:
    """Cancel pending and queued jobs (running ones finish); return task ids to revoke."""
    with transaction.atomic():
        open_jobs = request.jobs.filter(status__in=[Job.PENDING, Job.QUEUED, Job.RETRYING])
        task_ids = [t for t in open_jobs.values_list("task_id", flat=True) if t]
        cancelled = open_jobs.update(status=Job.CANCELLED, finished_at=timezone.now())
        GenerationRequest.objects.filter(pk=request.pk).update(
            status=Req.CANCELLED,
            jobs_cancelled=F("jobs_cancelled") + cancelled,
            finished_at=timezone.now(),
        )
    return task_ids


def settle_request(request_id: int) -> None:
    """Mark a generating request terminal once every one of its jobs is."""
    GenerationRequest.objects.filter(
        pk=request_id,
        status=Req.GENERATING,
        jobs_total__gt=0,
        jobs_total__lte=F("jobs_succeeded") + F("jobs_failed") + F("jobs_cancelled"),
    ).update(
        status=Case(
            When(jobs_succeeded=F("jobs_total"), then=Value(Req.COMPLETED)),
            When(jobs_succeeded=0, then=Value(Req.FAILED)),
            default=Value(Req.COMPLETED_WITH_ERRORS),
        ),
        finished_at=timezone.now(),
    )


def settle_finished_requests() -> int:
    """Settle every generating request whose jobs are all finished (a safety net)."""
    ids = list(
        GenerationRequest.objects.filter(
            status=Req.GENERATING,
            jobs_total__gt=0,
            jobs_total__lte=F("jobs_succeeded") + F("jobs_failed") + F("jobs_cancelled"),
        ).values_list("pk", flat=True)
    )
    for request_id in ids:
        settle_request(request_id)
    return len(ids)


# Jobs -------------------------------------------------------------------------------------
def mark_queued(job_ids: list[int], task_ids: dict[int, str]) -> None:
    """Record task ids; pending jobs become queued (a worker may have started already)."""
    jobs = list(GenerationJob.objects.filter(pk__in=job_ids).only("pk", "task_id"))
    for job in jobs:
        job.task_id = task_ids[job.pk]
    with transaction.atomic():
        GenerationJob.objects.bulk_update(jobs, ["task_id"], batch_size=500)
        GenerationJob.objects.filter(pk__in=job_ids, status=Job.PENDING).update(status=Job.QUEUED)
        request_ids = set(
            GenerationJob.objects.filter(pk__in=job_ids).values_list("request_id", flat=True)
        )
        GenerationRequest.objects.filter(
            pk__in=request_ids, status__in=[Req.DRAFT, *GenerationRequest.TERMINAL]
        ).exclude(status=Req.CANCELLED).update(status=Req.GENERATING, finished_at=None)


RUNNABLE = [Job.PENDING, Job.QUEUED, Job.RETRYING, Job.RUNNING]  # RUNNING: a redelivery


def runnable_job(job_id: int) -> GenerationJob | None:
    """The job if it still needs running; None when finished, cancelled or missing."""
    existing_image = get_image_model().objects.filter(generation_job_id=job_id).first()
    if existing_image is not None:
        # An earlier delivery ingested the image and died before recording it.
        finish_job(job_id, Job.SUCCEEDED, image=existing_image)
        return None
    return (
        GenerationJob.objects.select_related("request").filter(pk=job_id, status__in=RUNNABLE)
    ).first()


def start_job(job_id: int) -> GenerationJob | None:
    """Claim a job for one attempt (counted); None if it finished meanwhile."""
    updated = GenerationJob.objects.filter(pk=job_id, status__in=RUNNABLE).update(
        status=Job.RUNNING, attempts=F("attempts") + 1, started_at=timezone.now(), error=""
    )
    if not updated:
        return None
    return GenerationJob.objects.select_related("request").get(pk=job_id)


def generate(job: GenerationJob, model: ImageModel) -> GeneratedImage:
    """Call the image model for a started job. Provider errors propagate."""
    return model.generate(job.prompt, aspect_ratio=job.request.aspect_ratio, seed=job.seed)


def store(job: GenerationJob, generated: GeneratedImage) -> None:
    """File the image in the library and mark the job succeeded."""
    finish_job(job.pk, Job.SUCCEEDED, image=ingest(job, generated))


def mark_retrying(job_id: int, reason: str) -> None:
    GenerationJob.objects.filter(pk=job_id, status=Job.RUNNING).update(
        status=Job.RETRYING, error=reason
    )


def finish_job(job_id: int, status: str, *, error: str = "", image=None) -> bool:
    """Move a job to a terminal status once, counting it on its request."""
    with transaction.atomic():
        updated = GenerationJob.objects.filter(pk=job_id, status__in=GenerationJob.OPEN).update(
            status=status, error=error, image=image, finished_at=timezone.now()
        )
        if not updated:
            return False
        request_id = GenerationJob.objects.values_list("request_id", flat=True).get(pk=job_id)
        counter = COUNTERS[status]
        GenerationRequest.objects.filter(pk=request_id).update(**{counter: F(counter) + 1})
        settle_request(request_id)
    return True


def reset_jobs(request: GenerationRequest, statuses: list[str]) -> list[int]:
    """Failed (or given) jobs back to pending for another run; returns their ids."""
    with transaction.atomic():
        jobs = request.jobs.filter(status__in=statuses)
        ids = list(jobs.values_list("pk", flat=True))
        counters = {
            COUNTERS[s]: F(COUNTERS[s]) - jobs.filter(status=s).count()
            for s in statuses
            if s in COUNTERS
        }
        jobs.update(status=Job.PENDING, attempts=0, error="", finished_at=None)
        if ids:
            GenerationRequest.objects.filter(pk=request.pk).update(
                status=Req.GENERATING, finished_at=None, **counters
            )
    return ids


def regenerate_job(job: GenerationJob) -> bool:
    """Give a finished job a new seed and run it again; its old image stays in the library."""
    if job.status not in GenerationJob.TERMINAL:
        return False
    with transaction.atomic():
        if job.image_id:
            get_image_model().objects.filter(pk=job.image_id).update(generation_job_id=None)
        updated = GenerationJob.objects.filter(pk=job.pk, status=job.status).update(
            status=Job.PENDING, image=None, attempts=0, error="", finished_at=None,
            seed=random.randint(0, SEED_RANGE),
        )
        if updated:
            counter = COUNTERS[job.status]
            GenerationRequest.objects.filter(pk=job.request_id).update(
                status=Req.GENERATING, finished_at=None, **{counter: F(counter) - 1}
            )
    return bool(updated)


def update_prompt(job: GenerationJob, prompt: str) -> bool:
    return bool(
        GenerationJob.objects.filter(pk=job.pk, status=Job.PENDING).update(prompt=prompt)
    )


def retry_delay(attempt: int, retry_after: float | None, base: float, cap: float) -> float:
    """Exponential backoff with jitter; a provider's Retry-After wins when it is longer."""
    backoff = min(cap, base * 2 ** (attempt - 1)) * random.uniform(0.5, 1.5)
    return max(backoff, retry_after or 0.0)
