"""The pipeline's state changes. Every transition is a conditional UPDATE, so a redelivered
task or two workers racing change nothing twice, and request counters move in the same
transaction as the job they count (F() increments: no lost updates)."""

from __future__ import annotations

import logging
import mimetypes
import os
import random
from datetime import timedelta

from django.db import transaction
from django.db.models import Case, CharField, Exists, F, OuterRef, Q, Value, When
from django.db.models.functions import Cast, Coalesce, Concat
from django.utils import timezone
from wagtail.images import get_image_model

from generation import costs
from generation.ingest import ingest
from generation.models import GenerationJob, GenerationRequest, Spend
from generation.providers import GeneratedImage, ImageModel, SourceImage, get_llm
from generation.providers.base import TokenUsage
from generation.providers.errors import NotCalled, ProviderError
from generation.retrying import paid_result_writes

logger = logging.getLogger(__name__)

Job = GenerationJob.Status
Req = GenerationRequest.Status
COUNTERS = {
    Job.SUCCEEDED: "jobs_succeeded",
    Job.FAILED: "jobs_failed",
    Job.CANCELLED: "jobs_cancelled",
}
SEED_RANGE = 2**31 - 1


# Requests -------------------------------------------------------------------------------
def start_request(request: GenerationRequest) -> bool:
    """Draft (without prompts) or failed -> queued. The caller enqueues expand_prompt.

    The estimate is taken again at today's price: the spend is booked at it."""
    # Only as the caller read it: an edit of the count or model meanwhile would otherwise
    # get an estimate (and a price per image) taken from the old values.
    return bool(
        GenerationRequest.objects.filter(
            pk=request.pk,
            status__in=[Req.DRAFT, Req.FAILED],
            jobs_total=0,
            count=request.count,
            image_model=request.image_model,
        ).update(
            status=Req.QUEUED,
            error="",
            finished_at=None,
            updated_at=timezone.now(),
            cost_estimate=costs.estimate(request.count, request.image_model),
            expansion_started_at=None,
            expansion_finished_at=None,
        )
    )


def expand_request(request_id: int) -> list[int]:
    """Write the request's prompts as jobs; return the pending job ids to generate now.

    A redelivery after the prompts were written returns the jobs still pending, so a
    fan-out that failed half way is completed by the retry.
    """
    now = timezone.now()
    updated = GenerationRequest.objects.filter(
        pk=request_id, status__in=[Req.QUEUED, Req.EXPANDING]
    ).update(
        status=Req.EXPANDING,
        updated_at=now,
        expansion_started_at=Coalesce("expansion_started_at", Value(now)),
    )
    if updated:
        request = GenerationRequest.objects.get(pk=request_id)
        next_status = Req.GENERATING if request.auto_generate else Req.DRAFT
        if request.jobs.exists():
            GenerationRequest.objects.filter(pk=request_id, status=Req.EXPANDING).update(
                status=next_status
            )
        else:
            if request.source_deleted:
                raise NotCalled(SOURCE_DELETED)  # before paying for prompts
            try:
                expansion = get_llm(request.llm).expand(
                    request.theme,
                    request.count,
                    brief=request.brief,
                    style=request.style,
                    source=source_description(request.source_image),
                )
            except ProviderError as exc:
                # Calls answered before the failure (or unusable answers) were paid for too.
                add_llm_usage(request_id, exc.usage)
                raise
            finished_at = timezone.now()
            for attempt in paid_result_writes():  # the prompts are paid for
                with attempt:
                    _write_prompts(request, next_status, expansion, finished_at)
    if not GenerationRequest.objects.filter(
        pk=request_id, status=Req.GENERATING, auto_generate=True
    ).exists():
        return []  # cancelled, missing, failed, or prompts to review first
    return list(
        GenerationJob.objects.filter(request_id=request_id, status=Job.PENDING).values_list(
            "pk", flat=True
        )
    )


def _write_prompts(request: GenerationRequest, next_status: str, expansion, finished_at) -> None:
    if GenerationRequest.objects.filter(pk=request.pk, expansion_finished_at=finished_at).exists():
        return  # written by an attempt whose commit raised but went through
    with transaction.atomic():
        # The request row first: a cancel that committed meanwhile wins (nothing is
        # created), and one that comes later waits for this transaction to end.
        moved = GenerationRequest.objects.filter(pk=request.pk, status=Req.EXPANDING).update(
            status=next_status,
            jobs_total=len(expansion.prompts),
            updated_at=timezone.now(),
            expansion_finished_at=finished_at,
        )
        if not moved:  # cancelled meanwhile: the marker all the same, with the tokens
            GenerationRequest.objects.filter(pk=request.pk).update(
                expansion_finished_at=finished_at
            )
        # Added even when a cancel won: the tokens were spent all the same, and a
        # restarted expansion's second call is spent too.
        add_llm_usage(request.pk, expansion.usage)
        if moved:
            GenerationJob.objects.bulk_create(
                GenerationJob(
                    request=request,
                    index=i,
                    prompt=item.prompt,
                    alt_text=item.alt_text,
                    seed=random.randint(0, SEED_RANGE),
                )
                for i, item in enumerate(expansion.prompts)
            )


def add_llm_usage(request_id: int, usage: TokenUsage | None) -> None:
    if usage and (usage.input_tokens or usage.output_tokens):
        GenerationRequest.objects.filter(pk=request_id).update(
            llm_input_tokens=F("llm_input_tokens") + usage.input_tokens,
            llm_output_tokens=F("llm_output_tokens") + usage.output_tokens,
        )


def fail_request(
    request_id: int, reason: str, statuses=GenerationRequest.ACTIVE, not_after=None
) -> bool:
    """Fail an active request; with ``not_after``, only if nothing moved it since."""
    now = timezone.now()
    requests = GenerationRequest.objects.filter(pk=request_id, status__in=statuses)
    if not_after is not None:
        requests = requests.filter(updated_at__lte=not_after)
    return bool(requests.update(status=Req.FAILED, error=reason, finished_at=now, updated_at=now))


def note_request_error(request_id: int, reason: str) -> None:
    """Why an expansion will be tried again; not over a request that ended meanwhile (its
    deadline failed it, say), whose reason stays."""
    GenerationRequest.objects.filter(pk=request_id, status__in=[Req.QUEUED, Req.EXPANDING]).update(
        error=reason
    )


def cancel_request(request: GenerationRequest) -> list[str]:
    """Cancel pending, queued and retrying jobs; running ones finish their current call and
    make no new attempt. Returns the task ids to revoke."""
    now = timezone.now()
    with transaction.atomic():
        # The request row first, so an expansion finishing now either sees the cancel or
        # has committed its jobs before this reads them.
        GenerationRequest.objects.filter(pk=request.pk).update(
            status=Req.CANCELLED, finished_at=now, updated_at=now
        )
        open_jobs = request.jobs.filter(status__in=[Job.PENDING, Job.QUEUED, Job.RETRYING])
        task_ids = [t for t in open_jobs.values_list("task_id", flat=True) if t]
        cancelled = open_jobs.update(
            status=Job.CANCELLED, finished_at=now, updated_at=now, **NO_CLAIM
        )
        GenerationRequest.objects.filter(pk=request.pk).update(
            jobs_cancelled=F("jobs_cancelled") + cancelled
        )
    return task_ids


def reopen_request(request_id: int) -> bool:
    """A failed request without prompts goes back to queued (its expansion is requeued)."""
    return bool(
        GenerationRequest.objects.filter(pk=request_id, status=Req.FAILED, jobs_total=0).update(
            status=Req.QUEUED, error="", finished_at=None, updated_at=timezone.now()
        )
    )


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
NO_CLAIM = {"claim_token": "", "claim_expires_at": None, "claim_message": ""}


# Job claims outlive message leases: a heartbeat delayed by a queue-storage failover must
# not let another worker take a job whose call is still in flight.
CLAIM_LEASES = 2


def _unclaimed(now) -> Q:
    return Q(claim_token="") | Q(claim_expires_at__lt=now)


def call_in_flight(job_id: int | None) -> bool:
    """Whether a worker holds a live claim on the open job: its provider call may be under
    way, past anything a revoke or cancel can stop."""
    return (
        bool(job_id)
        and GenerationJob.objects.filter(pk=job_id, status__in=GenerationJob.OPEN)
        .exclude(_unclaimed(timezone.now()))
        .exists()
    )


def mark_queued(job_ids: list[int], batch: str) -> list[int]:
    """Pending -> queued, before their tasks are enqueued; returns the jobs this call moved.

    One conditional UPDATE decides, so two clicks (or a click and a retried fan-out)
    enqueue each job once. Task ids are ``generate_image-<job>-<batch>``.
    """
    suffix = f"-{batch}"
    pending = GenerationJob.objects.filter(pk__in=job_ids, status=Job.PENDING)
    request_ids = set(pending.values_list("request_id", flat=True))
    if not request_ids:
        return []
    try:
        with transaction.atomic():
            # Requests first (the lock order every writer of both keeps); undone below
            # if another click queued the jobs first.
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
    """Each job's position in its request (the fan-out orders by it)."""
    return dict(GenerationJob.objects.filter(pk__in=job_ids).values_list("pk", "index"))


def unmark_queued(job_ids: list[int], batch: str) -> int:
    """Undo mark_queued when enqueueing failed: the jobs are pending again."""
    return GenerationJob.objects.filter(
        pk__in=job_ids, status=Job.QUEUED, task_id__endswith=f"-{batch}"
    ).update(status=Job.PENDING, task_id="", updated_at=timezone.now())


def runnable_job(job_id: int) -> GenerationJob | None:
    """The job if it still needs running; None when finished, cancelled or missing."""
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
        finish_job(job_id, Job.SUCCEEDED, image=image, request_id=job.request_id)
        return None
    if job is not None and job.request.status == Req.CANCELLED:
        finish_job(job_id, Job.CANCELLED, error="request cancelled", unclaimed_only=True)
        return None
    return job


class JobBusy(Exception):
    """Another worker holds a live claim on this job: its provider call may be in flight."""


def claim_job(job: GenerationJob, token: str, seconds: float, message_id: str = "") -> bool:
    """Claim a job exclusively for one counted attempt; False if it finished meanwhile.

    Raises JobBusy while another worker's claim is live; an expired claim is taken over
    (its holder's later writes are fenced out by the token). On success ``job`` carries
    the claim and its counted attempt.
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
        .filter(_unclaimed(now))
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
    """Whether ``token`` still holds a live claim on the job (checked before a paid call)."""
    return GenerationJob.objects.filter(
        pk=job_id, claim_token=token, claim_expires_at__gt=timezone.now()
    ).exists()


def extend_job_claims(claims: list[tuple[int, str]], seconds: float) -> set[tuple[int, str]]:
    """Push the expiry of held (job, token) claims forward; return those another worker
    holds now. A claim this worker gave back itself (its job finished or is to be retried)
    before it stopped holding it is not lost."""
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
    """Give a claim back before any provider call: the attempt it counted is returned."""
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


def generate(job: GenerationJob, model: ImageModel) -> GeneratedImage:
    """Call the image model for a claimed job. Provider errors propagate.

    A request with a source image (variations) has the model edit that image. A variation
    is never quietly made from the prompt alone: a source deleted since fails the job.
    """
    request = job.request
    if request.is_variation:
        source = request.source_image_id and load_source_image(request.source_image_id)
        if not source:
            raise NotCalled(SOURCE_DELETED)
        return model.edit(job.prompt, source, aspect_ratio=request.aspect_ratio, seed=job.seed)
    return model.generate(job.prompt, aspect_ratio=request.aspect_ratio, seed=job.seed)


SOURCE_DELETED = "its source image was deleted, so there is nothing to make a variation of"


def source_image_deleted(image_id: int) -> None:
    """Settle what was to derive from a source image being deleted (inside the delete).

    Requests still to be expanded fail, open jobs not in a provider call fail, and drafts
    say why their source is gone; jobs whose call is in flight finish it (with the image
    they read). Images already made keep their provenance elsewhere (KarasuImage).
    """
    requests = GenerationRequest.objects.filter(source_image_id=image_id)
    for request_id in requests.filter(
        status__in=[Req.QUEUED, Req.EXPANDING], jobs_total=0
    ).values_list("pk", flat=True):
        fail_request(request_id, f"Failed: {SOURCE_DELETED}.")
    requests.filter(status=Req.DRAFT, jobs_total=0).update(
        error="Its source image was deleted: this draft can no longer make variations."
    )
    jobs = GenerationJob.objects.filter(
        request__source_image_id=image_id, status__in=GenerationJob.OPEN
    )
    for job_id, request_id in jobs.values_list("pk", "request_id"):
        finish_job(
            job_id, Job.FAILED, error=SOURCE_DELETED, unclaimed_only=True, request_id=request_id
        )
    # Drafts whose prompts awaited review: settle_request() settles only generating ones.
    now = timezone.now()
    requests.filter(status=Req.DRAFT, jobs_total__gt=0).update(
        status=Req.FAILED, error=f"Failed: {SOURCE_DELETED}.", finished_at=now, updated_at=now
    )


def source_description(image) -> str:
    """What a source image shows, for the LLM: its title, and its prompt if generated."""
    if image is None:
        return ""
    text = image.title
    if image.prompt and image.prompt != image.title:
        text = f"{text}. Prompt: {image.prompt}"
    return text


# A source image goes to the editing model as it is up to these limits; beyond them (or in
# another format) as a JPEG rendition of at most 2048 px a side.
SOURCE_MAX_BYTES = 10 * 1024 * 1024
SOURCE_MAX_PIXELS = 16_000_000
SOURCE_TYPES = {"image/jpeg", "image/png", "image/webp"}
SOURCE_RENDITION = "max-2048x2048|format-jpeg"


def load_source_image(image_id: int) -> SourceImage | None:
    """The source image's original file, or None if the image was deleted meanwhile.
    A file that cannot be read raises (a media error: the job is retried)."""
    image = get_image_model().objects.filter(pk=image_id).first()
    if image is None:
        return None
    name = os.path.basename(image.file.name) or "source.jpg"
    content_type = mimetypes.guess_type(name)[0] or "image/jpeg"
    if (
        (image.file_size or 0) > SOURCE_MAX_BYTES
        or (image.width or 0) * (image.height or 0) > SOURCE_MAX_PIXELS
        or content_type not in SOURCE_TYPES
    ):
        # What every editing model takes, in bounded memory: Wagtail's own rendition of it.
        rendition = image.get_rendition(SOURCE_RENDITION)
        with rendition.file.open("rb") as file:
            data = file.read()
        return SourceImage(data, "image/jpeg", f"{os.path.splitext(name)[0]}.jpg")
    with image.open_file() as file:
        data = file.read()
    return SourceImage(data, content_type, name)


def store(job: GenerationJob, token: str, generated: GeneratedImage) -> bool:
    """File the image and mark the job succeeded, only while ``token`` holds the claim.

    A worker that lost its claim (past its deadline, taken over) files nothing.
    """

    def confirm(image) -> bool:
        return finish_job(
            job.pk, Job.SUCCEEDED, image=image, token=token, request_id=job.request_id
        )

    # runnable_job() found no image for this job, and only the claim holder files one.
    image, created = ingest(job, generated, confirm=confirm, check_existing=False)
    if image is None:
        return False
    # Found rather than created: filed by an attempt whose commit raised but went through
    # (the job then succeeded with it), or by an earlier run that did not confirm it.
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


def defer_job(job_id: int, token: str | None, reason: str, max_retries: int) -> int | None:
    """After a database, queue or media error: give the claim (and the attempt it counted)
    back and count an infrastructure retry. Returns that count, or None when the job was
    failed (too many) or is no longer this worker's."""
    now = timezone.now()
    jobs = GenerationJob.objects.filter(pk=job_id, status__in=GenerationJob.OPEN)
    jobs = jobs.filter(claim_token=token) if token else jobs.filter(_unclaimed(now))
    count = jobs.values_list("infra_retries", flat=True).first()
    if count is None:
        return None
    if count >= max_retries:
        finish_job(job_id, Job.FAILED, error=reason, token=token, unclaimed_only=not token)
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
    unclaimed_only: bool = False,
    claim_message: str = "",
    claim_stale_by=None,
    not_after=None,
    request_id: int | None = None,
) -> bool:
    """Move a job to a terminal status once, counting it on its request.

    With ``token``, only while that claim holds; with ``unclaimed_only``, only when no
    worker holds a live claim (its call may still be in flight), or the claim was taken
    by the message ``claim_message`` (whose worker is known to have stopped) and not
    renewed since (it expires by ``claim_stale_by``). With
    ``not_after``, only if nothing moved the job since then (e.g. an editor's retry).
    """
    now = timezone.now()
    if request_id is None:
        request_id = (
            GenerationJob.objects.filter(pk=job_id).values_list("request_id", flat=True).first()
        )
        if request_id is None:
            return False
    jobs = GenerationJob.objects.filter(pk=job_id, status__in=GenerationJob.OPEN)
    if token:
        jobs = jobs.filter(claim_token=token)
    elif unclaimed_only:
        unclaimed = _unclaimed(now)
        if claim_message:
            # A holder whose message was taken over keeps renewing its claim while its
            # call runs: only a claim left to expire is the stopped worker's.
            unclaimed |= Q(claim_message=claim_message, claim_expires_at__lte=claim_stale_by)
        jobs = jobs.filter(unclaimed)
    if not_after is not None:
        jobs = jobs.filter(updated_at__lte=not_after)
    counter = COUNTERS[status]
    counts = {counter: F(counter) + 1}
    price = None
    if status == Job.SUCCEEDED:
        # The image is paid for: the spend grows with the count, in the same UPDATE, at the
        # price per image the request was saved with (fixed once its prompts exist).
        price = costs.request_unit_price(request_id)
        if price:
            counts["cost_spent"] = F("cost_spent") + price
    try:
        with transaction.atomic():
            # The request row first, as every writer of both rows takes them, so PostgreSQL
            # never sees the two locks taken in opposite orders (a deadlock).
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
            if price:  # booked to the day and month it was spent in
                Spend.objects.create(
                    request_id=request_id, job_id=job_id, amount=price, spent_at=now
                )
            settle_request(request_id)
    except _Unchanged:
        return False
    return True


def _lock_request(request_id: int) -> None:
    # Editor actions that move finished jobs back serialise on the request row (PostgreSQL
    # row lock; SQLite's IMMEDIATE transactions serialise every writer anyway).
    list(GenerationRequest.objects.select_for_update().filter(pk=request_id).values("pk"))


def reset_failed_jobs(request: GenerationRequest) -> list[int]:
    """Failed jobs back to pending for another run; returns their ids.

    The read and the update use the same conditions under the request's lock, so two
    concurrent "Retry failed" clicks move (and count) each job once.
    """
    now = timezone.now()
    with transaction.atomic():
        _lock_request(request.pk)
        if GenerationRequest.objects.filter(pk=request.pk, status=Req.CANCELLED).exists():
            return []  # nothing of a cancelled request runs again
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
    """Give a finished job a new seed and run it again; its old images stay in the library
    but no longer belong to the job."""
    with transaction.atomic():
        _lock_request(job.request_id)
        status = GenerationJob.objects.filter(pk=job.pk).values_list("status", flat=True).first()
        if (
            status not in GenerationJob.TERMINAL
            or GenerationRequest.objects.filter(pk=job.request_id, status=Req.CANCELLED).exists()
        ):
            return False  # running already, or its request was cancelled (final)
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
        )
        counter = COUNTERS[status]
        # cost_spent stays: the old image was paid for and stays in the library, and the new
        # one is a new provider call that finish_job adds when it succeeds.
        GenerationRequest.objects.filter(pk=job.request_id).update(
            status=Req.GENERATING, finished_at=None, **{counter: F(counter) - 1}
        )
    return True


def reopen_job(job_id: int) -> bool:
    """A failed job whose message is being requeued (a dead letter) is queued again."""
    with transaction.atomic():
        request_id = (
            GenerationJob.objects.filter(pk=job_id).values_list("request_id", flat=True).first()
        )
        if request_id is None:
            return False
        _lock_request(request_id)
        if GenerationRequest.objects.filter(pk=request_id, status=Req.CANCELLED).exists():
            return False  # nothing of a cancelled request runs again
        moved = GenerationJob.objects.filter(pk=job_id, status=Job.FAILED).update(
            status=Job.QUEUED, error="", finished_at=None, updated_at=timezone.now(), **NO_CLAIM
        )
        if moved:
            GenerationRequest.objects.filter(pk=request_id).update(
                status=Req.GENERATING, finished_at=None, jobs_failed=F("jobs_failed") - 1
            )
    return bool(moved)


# Reconciliation: open states that no message will move on ---------------------------------
RECOVERABLE = [Job.QUEUED, Job.RETRYING, Job.RUNNING]


def lost_jobs(live: set[int], cutoff) -> list[tuple[int, int, str]]:
    """(job, recoveries, request status) of jobs queued, retrying or running since before
    ``cutoff`` with no live claim and no message in ``live``."""
    rows = (
        GenerationJob.objects.filter(status__in=RECOVERABLE, updated_at__lt=cutoff)
        .filter(_unclaimed(timezone.now()))
        .values_list("pk", "recoveries", "request__status")
    )
    return [row for row in rows if row[0] not in live]


def recover_jobs(job_ids: list[int], cutoff) -> list[int]:
    """Lost jobs back to pending (counted), under the conditions that found them lost."""
    now = timezone.now()
    GenerationJob.objects.filter(
        pk__in=job_ids, status__in=RECOVERABLE, updated_at__lt=cutoff
    ).filter(_unclaimed(now)).update(
        status=Job.PENDING, recoveries=F("recoveries") + 1, updated_at=now, **NO_CLAIM
    )
    return list(
        GenerationJob.objects.filter(pk__in=job_ids, status=Job.PENDING).values_list(
            "pk", flat=True
        )
    )


def stalled_requests(cutoff) -> list[GenerationRequest]:
    """Generating requests whose open jobs are all pending since before ``cutoff``: a
    fan-out that failed, or prompts the editor has not sent yet."""
    jobs = GenerationJob.objects.filter(request=OuterRef("pk"))
    return list(
        GenerationRequest.objects.filter(status=Req.GENERATING)
        .filter(Exists(jobs.filter(status=Job.PENDING)))
        .exclude(Exists(jobs.filter(status__in=RECOVERABLE)))
        .exclude(Exists(jobs.filter(status=Job.PENDING, updated_at__gte=cutoff)))
        .only("pk", "auto_generate")
    )


def pending_job_ids(request_id: int) -> list[int]:
    return list(
        GenerationJob.objects.filter(request_id=request_id, status=Job.PENDING).values_list(
            "pk", flat=True
        )
    )


def pause_request(request_id: int) -> bool:
    """Generating with only unsent prompts left: back to draft, for the editor."""
    running = GenerationJob.objects.filter(request=OuterRef("pk"), status__in=RECOVERABLE)
    return bool(
        GenerationRequest.objects.filter(pk=request_id, status=Req.GENERATING)
        .exclude(Exists(running))  # in the UPDATE itself: a click meanwhile wins
        .update(status=Req.DRAFT, updated_at=timezone.now())
    )


def lost_expansions(live: set[int], cutoff) -> list[tuple[int, int]]:
    """(request, recoveries) of requests queued or expanding since before ``cutoff`` with
    no expand_prompt message in ``live``."""
    rows = GenerationRequest.objects.filter(
        status__in=[Req.QUEUED, Req.EXPANDING], updated_at__lt=cutoff
    ).values_list("pk", "recoveries")
    return [row for row in rows if row[0] not in live]


def restart_expansion(request_id: int, cutoff) -> bool:
    return bool(
        GenerationRequest.objects.filter(
            pk=request_id, status__in=[Req.QUEUED, Req.EXPANDING], updated_at__lt=cutoff
        ).update(status=Req.QUEUED, recoveries=F("recoveries") + 1, updated_at=timezone.now())
    )


def update_prompt(job: GenerationJob, prompt: str) -> bool:
    """An editor's new prompt; its alt text, written for the old one, is derived again at
    ingest from the new prompt."""
    return bool(
        GenerationJob.objects.filter(pk=job.pk, status=Job.PENDING).update(
            prompt=prompt, alt_text=""
        )
    )


def retry_delay(attempt: int, retry_after: float | None, base: float, cap: float) -> float:
    """Exponential backoff with jitter; a provider's Retry-After wins when it is longer."""
    backoff = min(cap, base * 2 ** (attempt - 1)) * random.uniform(0.5, 1.5)
    return max(backoff, retry_after or 0.0)
