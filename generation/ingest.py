"""File a generated image into the Wagtail image library, at most once per job."""

from __future__ import annotations

import logging
import uuid
from collections.abc import Callable
from contextlib import contextmanager
from dataclasses import dataclass

from django.core.files import File
from django.db import IntegrityError, connection, transaction
from django.utils import timezone
from django.utils.text import slugify
from taggit.models import Tag
from wagtail.images import get_image_model

from cms import provenance
from generation.media import MEDIA
from generation.models import GenerationJob
from generation.providers import GeneratedImage, clean_alt_text
from generation.retrying import DATABASE_ERRORS, paid_media_writes, paid_result_writes

logger = logging.getLogger(__name__)

TITLE_LENGTH = 255


def image_filename(job: GenerationJob, extension: str) -> str:
    slug = slugify(job.prompt)[:60].strip("-") or "image"
    return f"{slug}-job{job.pk}.{extension}"


def image_tags(request) -> list[Tag]:
    """A generated image's tags: its request's tags and its model's name."""
    tags = {tag.pk: tag for tag in request.tags.all()}
    model_tag, _ = Tag.objects.get_or_create(name=request.image_model)
    tags[model_tag.pk] = model_tag
    return list(tags.values())


def image_description(job: GenerationJob) -> str:
    """The image's alt text. It is the one written with its prompt, or else one derived
    from the prompt (for jobs from before alt texts, or whose alt text was cleared by a
    prompt edit)."""
    return clean_alt_text(job.alt_text, job.prompt)


def _tag(image, tags: list[Tag]) -> None:
    # One INSERT for a new image, where taggit's add() looks for existing links first and
    # inserts each under a savepoint.
    through = image.tags.through
    through.objects.bulk_create([through(content_object=image, tag=tag) for tag in tags])


def _discard(image) -> None:
    """Delete the stored file of an image that was not filed, because no row refers to it.

    This is best effort. When the storage fails too (an S3 endpoint gone), the file is left
    over and logged, and the caller still hears about what went wrong first, not about this.
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


def digital_source_type(request) -> str:
    """IPTC's digital source type of a request's images: a variation is a composite of its
    source and the model's work, anything else the model's alone."""
    if request.is_variation:
        return provenance.COMPOSITE_WITH_TRAINED_ALGORITHMIC_MEDIA
    return provenance.TRAINED_ALGORITHMIC_MEDIA


def source_ingredient(request) -> provenance.Ingredient | None:
    """A variation's source image, the parent ingredient of its C2PA manifest; None when
    the request is not a variation or its source was deleted."""
    if not request.is_variation or not request.source_image_id:
        return None
    Image = get_image_model()
    image_id = request.source_image_id
    if not Image.objects.filter(pk=image_id).exists():
        return None  # deleted while the job ran: the variation is filed without the link

    @contextmanager
    def open_source():
        # Read only when the manifest is signed. A source deleted meanwhile fails the
        # signing, which never fails the filing.
        with Image.objects.get(pk=image_id).open_file() as file:
            yield file

    return provenance.Ingredient(title=provenance.ingredient_title(image_id), open=open_source)


@dataclass
class MarkedImage:
    """A generated original made ready to file: its bytes with their provenance, and the
    image's fields that record it."""

    original: provenance.MarkedOriginal
    fields: dict

    def close(self) -> None:
        self.original.close()


def mark(job: GenerationJob, generated: GeneratedImage) -> MarkedImage:
    """The original with its provenance: XMP, and a C2PA manifest when a certificate is
    configured. A marking or signature that cannot be made never stops the filing; the
    fields' ``provenance_note`` says what is missing and why."""
    request = job.request
    provenance_id = uuid.uuid4()
    source_type = digital_source_type(request)
    marking = provenance.marking_for(
        source_type,
        request.image_model,
        provenance_id,
        created=timezone.now().isoformat(timespec="seconds"),
    )
    original = provenance.mark_original(
        generated.open(),
        marking,
        # Not the prompt: docs/provenance.md promises the files never carry it.
        title=provenance.manifest_title(provenance_id, generated.extension),
        ingredient=source_ingredient(request),
    )
    fields = {
        "digital_source_type": source_type,
        "provenance_id": provenance_id,
        "provenance_marked": original.marked,
        "c2pa_manifest": original.manifest,
        "provenance_note": original.note,
        "file_size": original.size,
        "file_hash": original.sha1,
    }
    return MarkedImage(original, fields)


def ingest(
    job: GenerationJob,
    generated: GeneratedImage,
    confirm: Callable[[object], bool] | None = None,
    check_existing: bool = True,
) -> tuple[object | None, bool]:
    """Create the library image for ``job`` and return (image, created).

    A second call returns the first image with created=False. The image model's unique
    ``generation_job_id`` makes this hold under concurrent redelivery too, because the
    loser's insert fails and it returns the winner's image. ``confirm(image)`` runs in the
    same transaction as the insert, and when it returns False nothing is filed and the
    result is (None, False). ``check_existing=False`` skips the first look-up, for a
    caller that has just made it.

    What is stored is the original with its provenance (``mark``): XMP saying it is
    AI-generated and, with a certificate configured, a signed C2PA manifest.

    ``generated`` is consumed. Its temporary file, if it has one, is closed whatever the
    outcome (filed, found, superseded, lost the race, or an error), except after a
    database error that outlasted the retries here. The image is paid for, so the caller
    may file it again once the database answers, and closes it itself.
    """
    keep_open = False
    # The marked (and signed) original, made once however many times the filing is tried.
    marked: list[MarkedImage] = []
    try:
        # The image is paid for, so a database blip while filing it is retried here.
        for attempt in paid_result_writes():
            with attempt:
                # After an error, look again, because the failed attempt may have committed
                # after all.
                again = attempt.retry_state.attempt_number > 1
                return _ingest(job, generated, confirm, check_existing or again, marked)
    except DATABASE_ERRORS:
        keep_open = True
        raise
    finally:
        for image in marked:
            image.close()
        if not keep_open:
            generated.close()


def _ingest(
    job: GenerationJob,
    generated: GeneratedImage,
    confirm: Callable[[object], bool] | None,
    check_existing: bool,
    marked: list[MarkedImage],
) -> tuple[object | None, bool]:
    Image = get_image_model()
    existing = Image.objects.filter(generation_job_id=job.pk).first() if check_existing else None
    if existing is not None:
        return existing, False
    request = job.request
    title = job.prompt if len(job.prompt) <= TITLE_LENGTH else job.prompt[: TITLE_LENGTH - 1] + "…"
    if not marked:
        marked.append(mark(job, generated))
    # The provenance is in the file before it is stored, and the size and hash recorded
    # are the marked file's.
    image = Image(
        title=title,
        description=image_description(job),
        collection_id=request.collection_id,
        width=generated.width,
        height=generated.height,
        prompt=job.prompt,
        image_model=request.image_model,
        llm=request.llm,
        seed=generated.seed,
        generation_request_id=request.pk,
        generation_job_id=job.pk,
        provider_request_id=generated.provider_request_id,
        source_image_id=request.source_image_id,
        **marked[0].fields,
    )
    # The file is written before the transaction, so the database lock is not held for it.
    # File() wraps the body, so the storage copies it in chunks and never reads it whole.
    # The stored name is then set on the field file (Django's documented way to point a
    # field at a stored file) rather than through file.save(). That assignment would make
    # Wagtail measure the image with Willow, which decodes every pixel (12 MB and 0.1 s for
    # a 2048x2048 PNG), and the provider has measured it already.
    # The tags are read before the transaction, because SQLite's write lock is shared.
    tags = image_tags(request)
    filename = image_filename(job, generated.extension)
    field = image.file.field
    name = field.generate_filename(image, filename)
    # The image is paid for, so a write error is retried.
    for attempt in paid_media_writes():
        with attempt:
            image.file.name = MEDIA.save(
                field.storage,
                name,
                File(_rewound(marked[0].original.file), name=filename),
                max_length=field.max_length,
            )
    # Once the body has run, an error is the commit's, which may have gone through.
    committing = False
    try:
        with transaction.atomic():
            if image.source_image_id is not None:
                # If the source was deleted while the job ran, the variation is kept without
                # the link. The source row stays locked until the commit, so that it cannot
                # be deleted in between.
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
            raise  # It is not the one-image-per-job constraint.
        return winner, False
    except DATABASE_ERRORS:
        # A commit that raised may have gone through, so the file stays if its row does.
        if not (committing and _filed(image)):
            _discard(image)
        raise
    except BaseException:
        _discard(image)  # No row refers to the file, so it must not be left behind.
        raise
    return image, True


def _rewound(file):
    file.seek(0)
    return file


def _filed(image) -> bool:
    """Whether the image's row exists after a database error. When that cannot be told
    (the database is still away), the answer is True, because a stray file is better than
    a row without its file."""
    if image.pk is None:
        return False  # The INSERT never ran.
    try:
        if not connection.in_atomic_block:
            connection.close_if_unusable_or_obsolete()  # The error may have broken it.
        return get_image_model().objects.filter(pk=image.pk).exists()
    except Exception:
        logger.warning(
            "Could not tell whether image %s was filed; its file %s is kept.",
            image.pk,
            image.file.name,
        )
        return True
