"""Mark (and, with a certificate configured, sign) the originals of AI-generated images
filed before Karasu marked them, and drop their renditions so that they are made again,
marked.

    python manage.py mark_generated_images [--dry-run] [--no-sign] [--limit N]
    python manage.py mark_generated_images --unsigned [--dry-run] [--limit N]

``--unsigned`` signs originals that are marked but unsigned (filed before a certificate
was configured, or when signing failed). Either way each original is stored under a new
name, so its URL changes (docs/provenance.md).
"""

from __future__ import annotations

import uuid
from pathlib import PurePosixPath

from django.core.management.base import BaseCommand, CommandError
from django.db import transaction
from wagtail.images import get_image_model
from wagtail.tasks import delete_file_from_storage_task

from cms.provenance import (
    Ingredient,
    SigningError,
    ingredient_title,
    manifest_title,
    mark_original,
    marking_for,
)
from cms.provenance.signing import credentials


class Command(BaseCommand):
    help = (
        "Write the XMP marking (and a C2PA manifest, when a certificate is configured) into "
        "the originals of AI-generated images filed before marking existed, and drop their "
        "renditions so that they are made again, marked."
    )

    def add_arguments(self, parser) -> None:
        parser.add_argument("--dry-run", action="store_true", help="Count, change nothing.")
        parser.add_argument("--no-sign", action="store_true", help="Mark, do not sign.")
        parser.add_argument("--limit", type=int, default=0, help="At most this many images.")
        parser.add_argument(
            "--unsigned",
            action="store_true",
            help="Sign the originals that are marked but not signed (needs a certificate).",
        )

    def handle(
        self, *args, dry_run: bool, no_sign: bool, limit: int, unsigned: bool, **options
    ) -> None:
        Image = get_image_model()
        images = Image.objects.exclude(digital_source_type="")
        if unsigned:
            if no_sign:
                raise CommandError("--unsigned signs: it cannot go with --no-sign.")
            # Marked by Karasu and unsigned. A provider-signed original is never marked
            # (its own manifest would break), so it is not among them.
            images = images.filter(provenance_marked=True, c2pa_manifest="")
            state = "are marked but not signed"
        else:
            images = images.filter(provenance_marked=False)
            state = "are not marked"
        images = images.order_by("pk")
        if limit:
            images = images[:limit]
        if dry_run:
            self.stdout.write(f"{images.count()} AI-generated originals {state}.")
            return
        if unsigned:
            try:
                configured = credentials()
            except SigningError as exc:
                raise CommandError(f"C2PA signing is misconfigured: {exc}.") from None
            if configured is None:
                raise CommandError("No C2PA certificate is configured: nothing to sign with.")
        marked = signed = 0
        for image in images.iterator():
            result = self.mark(image, sign=not no_sign, only_if_signed=unsigned)
            if result is None:
                continue
            marked += 1
            signed += bool(result)
        self.stdout.write(
            self.style.SUCCESS(f"Marked {marked} originals, {signed} of them signed.")
        )

    def mark(self, image, *, sign: bool, only_if_signed: bool = False) -> str | None:
        """Mark one image's original: its manifest's label ("" when unsigned), or None
        when it was left as it was."""
        provenance_id = image.provenance_id or uuid.uuid4()
        created = image.created_at.isoformat(timespec="seconds") if image.created_at else ""
        marking = marking_for(
            image.digital_source_type, image.image_model, provenance_id, created=created
        )
        source = image.source_image if image.source_image_id else None
        ingredient = Ingredient(ingredient_title(source.pk), source.open_file) if source else None
        # A neutral title: the image's own may be its prompt, which the files never carry.
        title = manifest_title(provenance_id, PurePosixPath(image.file.name).suffix)
        with image.open_file() as file:
            result = mark_original(
                file, marking, title=title, ingredient=ingredient, signing=sign or None
            )
        try:
            if not result.marked or (only_if_signed and not result.manifest):
                # Nothing gained: the stored file (and its URL) stays as it is.
                type(image).objects.filter(pk=image.pk).update(provenance_note=result.note)
                self.stdout.write(f"Image {image.pk} left as it was: {result.note}")
                return None
            field = image.file.field
            old_name = image.file.name
            new_name = field.storage.save(
                field.generate_filename(image, PurePosixPath(old_name).name),
                result.file,
                max_length=field.max_length,
            )
            with transaction.atomic():
                # Only if its file is still the one marked (an editor may have replaced it).
                updated = (
                    type(image)
                    .objects.filter(pk=image.pk, file=old_name)
                    .update(
                        file=new_name,
                        file_size=result.size,
                        file_hash=result.sha1,
                        provenance_id=provenance_id,
                        provenance_marked=True,
                        c2pa_manifest=result.manifest,
                        provenance_note=result.note,
                    )
                )
                if not updated:
                    field.storage.delete(new_name)
                    return None
                if not only_if_signed:
                    # Renditions made before carry no marking; Wagtail deletes their files.
                    # A re-signed original's renditions are marked already, and name it by
                    # its unchanged InstanceID, so they stay (and keep their URLs).
                    image.renditions.all().delete()
                transaction.on_commit(
                    lambda: delete_file_from_storage_task.enqueue(
                        field.storage.deconstruct(), old_name
                    )
                )
        finally:
            result.close()
        if result.note:
            self.stdout.write(f"Image {image.pk}: {result.note}")
        return result.manifest
