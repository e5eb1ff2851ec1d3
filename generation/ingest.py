"""File a generated image into the Wagtail image library, at most once per job."""

from __future__ import annotations

import logging
from collections.abc import Callable

from django.core.files import File
from django.db import IntegrityError, connection, transaction
from django.utils.text import slugify
from taggit.models import Tag
from wagtail.images import get_image_model

from generation.media import MEDIA
from generation.models import GenerationJob
from generation.providers import GeneratedImage, clean_alt_text
from generation.retrying import DATABASE_ERRORS, paid_result_writes

logger = logging.getLogger(__name__)

TITLE_LENGTH = 255


def image_filename(job: GenerationJob, extension: str) -> str:
    slug = slugify(job.prompt)[:60].strip("-") or "image"
    return f"{slug}-job{job.pk}.{extension}"


def image_tags(request) -> list[Tag]:
    """A generated image's tags: its request's, and its model's name."""
    tags = {tag.pk: tag for tag in request.tags.all()}
    model_tag, _ = Tag.objects.get_or_create(name=request.image_model)
    tags[model_tag.pk] = model_tag
    return list(tags.values())


def image_description(job: GenerationJob) -> str:
    """The image's alt text: the one written with its prompt, else one derived from the
    prompt (jobs from before alt texts, or whose alt text was cleared with a prompt edit)."""
    return clean_alt_text(job.alt_text, job.prompt)


def _tag(image, tags: list[Tag]) -> None:
    # One INSERT for a new image, where taggit's add() looks for existing links first and
    # inserts each under a savepoint.
    through = image.tags.through
    through.objects.bulk_create([through(content_object=image, tag=tag) for tag in tags])


def _discard(image) -> None:
    """Delete the stored file of an image that was not filed: no row refers to it.

    Best effort: when the storage fails too (an S3 endpoint gone), the file is left over and
    logged, and the caller still hears about what went wrong first, not about this.
    """
    name = image.file.name
    try:
        image.file.delete(save=False)
    except Exception:
        logger.warning(
            "Could not delete %s, the file of an image that was not filed.", name, exc_info=True
        )


class Superseded(Exception):
    """The job's claim was lost while its image was being filed."""


def ingest(
    job: GenerationJob,
    generated: GeneratedImage,
    confirm: Callable[[object], bool] | None = None,
    check_existing: bool = True,
) -> tuple[object | None, bool]:
    """Create the library image for ``job``; returns (image, created).

    A second call returns the first image (created=False). The image model's unique
    ``generation_job_id`` makes this hold under concurrent redelivery too: the loser's
    insert fails and it returns the winner's image. ``confirm(image)`` runs in the same
    transaction as the insert; when it returns False nothing is filed: (None, False).
    ``check_existing=False`` skips the first look-up for a caller that just made it.

    ``generated`` is consumed: its temporary file, if it has one, is closed whatever the
    outcome (filed, found, superseded, lost the race, or an error).
    """
    try:
        # The image is paid for: a database blip while filing it is retried here.
        for attempt in paid_result_writes():
            with attempt:
                # Again after an error: the failed attempt may have committed after all.
                again = attempt.retry_state.attempt_number > 1
                return _ingest(job, generated, confirm, check_existing or again)
    finally:
        generated.close()


def _ingest(
    job: GenerationJob,
    generated: GeneratedImage,
    confirm: Callable[[object], bool] | None,
    check_existing: bool,
) -> tuple[object | None, bool]:
    Image = get_image_model()
    existing = Image.objects.filter(generation_job_id=job.pk).first() if check_existing else None
    if existing is not None:
        return existing, False
    request = job.request
    title = job.prompt if len(job.prompt) <= TITLE_LENGTH else job.prompt[: TITLE_LENGTH - 1] + "…"
    image = Image(
        title=title,
        description=image_description(job),
        collection_id=request.collection_id,
        width=generated.width,
        height=generated.height,
        # Counted and hashed while the body was written: no second pass over 20 MB.
        file_size=generated.size,
        file_hash=generated.sha1,
        prompt=job.prompt,
        image_model=request.image_model,
        llm=request.llm,
        seed=generated.seed,
        generation_request_id=request.pk,
        generation_job_id=job.pk,
        provider_request_id=generated.provider_request_id,
        source_image_id=request.source_image_id,
    )
    # The file is written before the transaction, so the database lock is not held for it.
    # File() over the body: the storage copies it in chunks, never reading it whole. The
    # stored name is then set on the field file (Django's documented way to point a field
    # at a stored file) rather than through file.save(), whose assignment makes Wagtail
    # measure the image with Willow, which decodes every pixel: 12 MB and 0.1 s for a
    # 2048x2048 PNG. The provider has measured it already.
    tags = image_tags(request)  # read before the transaction: SQLite's write lock is shared
    filename = image_filename(job, generated.extension)
    field = image.file.field
    image.file.name = MEDIA.save(
        field.storage,
        field.generate_filename(image, filename),
        File(generated.open(), name=filename),
        max_length=field.max_length,
    )
    committing = False  # the body ran: an error now is the commit's, which may have gone through
    try:
        with transaction.atomic():
            if image.source_image_id is not None:
                # Deleted while the job ran? The variation is kept, without the link (and the
                # row locked until commit, so the source cannot go in between).
                image.source_image_id = (
                    Image.objects.select_for_update()
                    .filter(pk=image.source_image_id)
                    .values_list("pk", flat=True)
                    .first()
                )
            image.save()
            _tag(image, tags)
            if confirm is not None and not confirm(image):
                raise Superseded
            committing = True
    except Superseded:
        _discard(image)
        return None, False
    except IntegrityError:
        _discard(image)
        winner = Image.objects.filter(generation_job_id=job.pk).first()
        if winner is None:
            raise  # not the one-image-per-job constraint
        return winner, False
    except DATABASE_ERRORS:
        # A commit that raised may have gone through: the file stays if its row does.
        if not (committing and _filed(image)):
            _discard(image)
        raise
    except BaseException:
        _discard(image)  # no row refers to it: no orphan file
        raise
    return image, True


def _filed(image) -> bool:
    """Whether the image's row exists after a database error; when that cannot be told
    (the database still away), True: a stray file is better than a row without its file."""
    if image.pk is None:
        return False  # the INSERT never ran
    try:
        if not connection.in_atomic_block:
            connection.close_if_unusable_or_obsolete()  # the error may have broken it
        return get_image_model().objects.filter(pk=image.pk).exists()
    except Exception:
        logger.warning(
            "Could not tell whether image %s was filed; its file %s is kept.",
            image.pk,
            image.file.name,
        )
        return True
