"""A job's provider call. It is submitted once, its request id is stored on the job, and
whoever holds the job next collects it."""

from __future__ import annotations

import logging
import mimetypes
import os

from django.utils import timezone
from wagtail.images import get_image_model

from generation.models import GenerationJob, GenerationRequest
from generation.providers import (
    GeneratedImage,
    ImageModel,
    ProviderCall,
    RequestFailed,
    RequestGone,
    SourceImage,
)
from generation.providers import get_image_model as get_provider_model
from generation.providers.errors import NotCalled, ProviderError
from generation.providers.images import StopCheck
from generation.retrying import DATABASE_ERRORS, paid_result_writes
from generation.services import jobs as _jobs
from generation.services import requests as _requests
from generation.services.common import (
    NO_PROVIDER_CALL,
    Job,
    Req,
)

logger = logging.getLogger(__name__)


class ClaimLost(Exception):
    """The job's claim passed to another worker, or the job ended, before this worker could
    store its provider request. The request was cancelled, and the job is no longer this
    worker's to run."""


def claimed_call(job_id: int, token: str) -> ProviderCall | None:
    """The stored provider request of a job this worker has just claimed, read after the
    claim: a worker frozen past its claim may have stored one after the job was read."""
    row = (
        GenerationJob.objects.filter(pk=job_id, claim_token=token)
        .values_list("provider_request_id", "provider_endpoint")
        .first()
    )
    if not row or not row[0]:
        return None
    return ProviderCall(*row)


def record_call(job_id: int, token: str, call: ProviderCall) -> bool:
    """Store a submitted request on the job, but only while ``token`` holds its claim. The
    request is paid for, so a database blip is retried in place."""
    for attempt in paid_result_writes():
        with attempt:
            return bool(
                GenerationJob.objects.filter(pk=job_id, claim_token=token).update(
                    provider_request_id=call.request_id,
                    provider_endpoint=call.endpoint,
                    provider_submitted_at=timezone.now(),
                )
            )
    return False  # Not reached, because the last error is raised.


def clear_call(job_id: int, call: ProviderCall, token: str | None = None) -> bool:
    """Forget a stored request that the provider failed or lost, or that was given up, so
    that the job's next attempt submits anew. With ``token``, this happens only while that
    claim holds."""
    jobs = GenerationJob.objects.filter(pk=job_id, provider_request_id=call.request_id)
    if token:
        jobs = jobs.filter(claim_token=token)
    return bool(jobs.update(**NO_PROVIDER_CALL))


def give_up_call(job_id: int) -> None:
    """Cancel the request at the provider (best effort) and forget it, when the job ended
    for good without its image (failed or cancelled)."""
    row = (
        GenerationJob.objects.filter(pk=job_id)
        .values_list("provider_request_id", "provider_endpoint", "request__image_model")
        .first()
    )
    if not row or not row[0]:
        return
    call = ProviderCall(row[0], row[1])
    if not clear_call(job_id, call):
        return  # Another worker's give-up, or a new run, got there first.
    try:
        get_provider_model(row[2]).cancel(call)
    except ProviderError:  # The model is gone from the settings, so nothing can cancel.
        pass


def generate(
    job: GenerationJob, model: ImageModel, token: str | None = None, stop: StopCheck | None = None
) -> GeneratedImage:
    """Call the image model for a claimed job. Provider errors propagate.

    With the claim's ``token``, a provider request that an earlier attempt submitted (and
    stored on the job) is resumed, not submitted again. A retry after a timeout or a
    download error, a takeover after a crash or a freeze, and a restart after a deploy all
    collect the request already paid for. Only a request that the provider failed, or no
    longer knows, is submitted again. A new request is stored on the job before its result
    is awaited. When ``stop()`` returns True, the wait is given up (``HandedBack``) and the
    request is left for the next worker.

    A request with a source image (a variation) has the model edit that image. A variation
    is never quietly made from the prompt alone, so a source deleted since fails the job.
    """
    call = claimed_call(job.pk, token) if token else None
    if call is not None:
        try:
            return _collect(job, model, call, token, stop)
        except RequestGone as exc:
            logger.warning("Job %s: %s; submitting it again.", job.pk, exc.reason)
            clear_call(job.pk, call, token)
    call = _submit(job, model)
    try:
        recorded = not token or record_call(job.pk, token, call)
    except DATABASE_ERRORS:
        # The database stayed away until the task's deadline was near: the request's id is
        # lost with this attempt, and the next one submits anew. Cancelling spares the
        # second payment whenever the provider has not started the first request yet.
        model.cancel(call)
        raise
    if not recorded:
        # Nobody will ever collect this request, because its job is over or belongs to
        # another worker now, which submits its own. This window, and a crash inside it,
        # are the only ways to pay twice.
        model.cancel(call)
        raise ClaimLost(f"job {job.pk}: its claim was taken over before its request was stored")
    return _collect(job, model, call, token, stop)


def _submit(job: GenerationJob, model: ImageModel) -> ProviderCall:
    request = job.request
    if request.is_variation:
        source = request.source_image_id and load_source_image(request.source_image_id)
        if not source:
            raise NotCalled(SOURCE_DELETED)
        return model.submit_edit(
            job.prompt, source, aspect_ratio=request.aspect_ratio, seed=job.seed
        )
    return model.submit(job.prompt, aspect_ratio=request.aspect_ratio, seed=job.seed)


def _collect(
    job: GenerationJob,
    model: ImageModel,
    call: ProviderCall,
    token: str | None,
    stop: StopCheck | None,
) -> GeneratedImage:
    try:
        image = model.result(call, stop=stop)
    except RequestFailed:
        if token:
            # It failed at the provider, so the retry submits anew.
            clear_call(job.pk, call, token)
        raise
    if image.seed is None:
        image.seed = job.seed  # The model takes no seed, so the job's seed is recorded.
    return image


SOURCE_DELETED = "its source image was deleted, so there is nothing to make a variation of"


def source_image_deleted(image_id: int) -> None:
    """Settle what was to be made from a source image that is being deleted. It runs
    inside the delete.

    Requests still to be expanded fail, open jobs not in a provider call fail, and drafts
    say why their source is gone. Jobs whose call is in flight finish it with the image
    they read. Images already made keep their provenance elsewhere (KarasuImage).
    """
    requests = GenerationRequest.objects.filter(source_image_id=image_id)
    for request_id in requests.filter(
        status__in=[Req.QUEUED, Req.EXPANDING], jobs_total=0
    ).values_list("pk", flat=True):
        _requests.fail_request(request_id, f"Failed: {SOURCE_DELETED}.")
    requests.filter(status=Req.DRAFT, jobs_total=0).update(
        error="Its source image was deleted: this draft can no longer make variations."
    )
    jobs = GenerationJob.objects.filter(
        request__source_image_id=image_id, status__in=GenerationJob.OPEN
    )
    for job_id in jobs.values_list("pk", flat=True):
        _jobs.finish_unclaimed_job(job_id, Job.FAILED, error=SOURCE_DELETED)
    # Drafts whose prompts awaited review fail here, because settle_request() settles only
    # generating requests.
    now = timezone.now()
    requests.filter(status=Req.DRAFT, jobs_total__gt=0).update(
        status=Req.FAILED, error=f"Failed: {SOURCE_DELETED}.", finished_at=now, updated_at=now
    )


def source_description(image) -> str:
    """What a source image shows, for the LLM: its title, and its prompt if it was
    generated."""
    if image is None:
        return ""
    text = image.title
    if image.prompt and image.prompt != image.title:
        text = f"{text}. Prompt: {image.prompt}"
    return text


# A source image goes to the editing model as it is, up to these limits. Beyond them, or in
# another format, it goes as a JPEG rendition of at most 2048 px a side.
SOURCE_MAX_BYTES = 10 * 1024 * 1024
SOURCE_MAX_PIXELS = 16_000_000
SOURCE_TYPES = {"image/jpeg", "image/png", "image/webp"}
SOURCE_RENDITION = "max-2048x2048|format-jpeg"


def load_source_image(image_id: int) -> SourceImage | None:
    """The source image's original file, or None if the image was deleted meanwhile. A
    file that cannot be read raises a media error, and the job is retried."""
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
        # Wagtail's own rendition is what every editing model takes, made in bounded
        # memory.
        rendition = image.get_rendition(SOURCE_RENDITION)
        with rendition.file.open("rb") as file:
            data = file.read()
        return SourceImage(data, "image/jpeg", f"{os.path.splitext(name)[0]}.jpg")
    with image.open_file() as file:
        data = file.read()
    return SourceImage(data, content_type, name)
