"""AI provenance inside the files: every generated original and every rendition of it says,
in XMP, that it was generated (IPTC's digital source type, the AI system used, Karasu as
the software agent), and an original is signed with a C2PA manifest when a certificate is
configured. Uploaded images are never marked.

``mark_original`` runs once when a generated image is filed (generation/ingest.py);
``mark_rendition`` runs on every rendition Wagtail makes of a generated image
(KarasuImage.generate_rendition_file). Renditions are not signed: they carry the marking
and a reference to their original (docs/provenance.md says why).
"""

from __future__ import annotations

import hashlib
import logging
import shutil
import uuid
from dataclasses import dataclass
from tempfile import SpooledTemporaryFile
from typing import IO

from django.conf import settings
from django.core.files import File

from cms.provenance.containers import HasManifest, UnsupportedImage, embed_xmp
from cms.provenance.signing import Credentials, Ingredient, SigningError, credentials, sign
from cms.provenance.xmp import (
    COMPOSITE_WITH_TRAINED_ALGORITHMIC_MEDIA,
    TRAINED_ALGORITHMIC_MEDIA,
    Marking,
    packet,
)
from cms.redaction import redact

__all__ = [
    "COMPOSITE_WITH_TRAINED_ALGORITHMIC_MEDIA",
    "TRAINED_ALGORITHMIC_MEDIA",
    "Ingredient",
    "MarkedOriginal",
    "Marking",
    "SigningError",
    "mark_original",
    "ingredient_title",
    "manifest_title",
    "mark_rendition",
    "marking_for",
]

logger = logging.getLogger(__name__)

# Originals up to this size stay in memory while they are marked and signed (as the
# providers' bodies do, generation/providers/images.py); larger ones spool to a file.
SPOOL_BYTES = 1024 * 1024


def _spool(max_size: int = SPOOL_BYTES) -> SpooledTemporaryFile:
    return SpooledTemporaryFile(
        max_size=max_size, dir=getattr(settings, "FILE_UPLOAD_TEMP_DIR", None)
    )


@dataclass
class MarkedOriginal:
    """An original as it is to be stored: its bytes (``file``, rewound), their size and
    SHA-1 (Wagtail's ``file_hash``), and what was done to it. ``note`` says why it is not
    marked or not signed; "" when all went as configured."""

    file: IO[bytes]
    size: int
    sha1: str
    marked: bool
    manifest: str
    note: str

    def close(self) -> None:
        self.file.close()


def marking_for(
    digital_source_type: str,
    generator: str,
    provenance_id: uuid.UUID | str | None,
    *,
    created: str = "",
    rendition: bool = False,
) -> Marking:
    """The marking of an original (or, with ``rendition``, of a rendition of it) whose XMP
    document is named by ``provenance_id``."""
    ident = str(provenance_id) if provenance_id else ""
    return Marking(
        digital_source_type=digital_source_type,
        generator=generator,
        document_id=f"xmp.did:{ident}" if ident else "",
        instance_id=f"xmp.iid:{ident}" if ident else "",
        rendition=rendition,
        created="" if rendition else created,
    )


def manifest_title(provenance_id: uuid.UUID | str, extension: str = "") -> str:
    """The title a signed manifest gives an original: neutral, like a file name. Never the
    prompt or the editor's title, which may hold what an editor would not publish."""
    suffix = f".{extension.lstrip('.')}" if extension else ""
    return f"karasu-{provenance_id}{suffix}"


def ingredient_title(image_id: int) -> str:
    """The title a variation's manifest gives its source image: neutral, as above."""
    return f"karasu-image-{image_id}"


def _measure(file: IO[bytes]) -> tuple[int, str]:
    file.seek(0)
    digest = hashlib.sha1()
    size = 0
    while chunk := file.read(1024 * 1024):
        digest.update(chunk)
        size += len(chunk)
    file.seek(0)
    return size, digest.hexdigest()


def mark_original(
    source: IO[bytes],
    marking: Marking,
    *,
    title: str,
    ingredient: Ingredient | None = None,
    signing: Credentials | None | bool = True,
) -> MarkedOriginal:
    """The original with its XMP marking and, when signing is configured, its signed C2PA
    manifest.

    Nothing here loses the image: a file that cannot be marked is kept as it came, and one
    that cannot be signed keeps its marking; ``note`` says which, and why. ``signing`` is
    the credentials to use (True: the configured ones; None or False: do not sign).
    """
    marked = _spool()
    note = ""
    try:
        embed_xmp(source, marked, packet(marking))
        is_marked = True
    except BaseException as exc:
        if not isinstance(exc, Exception):
            marked.close()  # an interrupt is not the file's fault
            raise
        # The file as it came: a provider's own C2PA manifest would break with any change,
        # and a file the marking code fails on (a parser's bug) is paid for all the same.
        is_marked = False
        if isinstance(exc, HasManifest):
            note = (
                "Kept as the provider made it, with its own C2PA manifest: not marked or "
                "signed by Karasu."
            )
        elif isinstance(exc, UnsupportedImage):
            note = f"Not marked: {exc}."
        else:
            note = f"Not marked: an internal error ({type(exc).__name__}), logged."
            logger.exception("XMP marking of %r failed; it is filed unmarked", title)
        try:
            # A full disk fails this copy too, and goes to the caller, who files again.
            marked.seek(0)
            marked.truncate()
            source.seek(0)
            shutil.copyfileobj(source, marked, 1024 * 1024)
        except BaseException:
            marked.close()
            raise
    manifest = ""
    if is_marked:
        try:
            signer = credentials() if signing is True else (signing or None)
            if signer is not None:
                signed = _spool()
                try:
                    manifest = sign(
                        marked, signed, marking, signer, title=title, ingredient=ingredient
                    )
                except BaseException:
                    signed.close()
                    raise
                marked.close()
                marked = signed
        except Exception as exc:
            # Whatever went wrong (a bad certificate, the source unreadable, the bindings),
            # the image is filed with its marking, and says why it is not signed.
            reason = redact(
                str(exc) if isinstance(exc, SigningError) else f"{type(exc).__name__}: {exc}"
            )
            note = f"Not signed: {reason}. The image carries its IPTC marking."
            logger.warning(
                "C2PA signing of %r failed: %s",
                title,
                reason,
                exc_info=not isinstance(exc, SigningError),  # a traceback for the unforeseen
            )
    size, sha1 = _measure(marked)
    return MarkedOriginal(marked, size, sha1, is_marked, manifest, note)


def mark_rendition(rendition: File, marking: Marking) -> File:
    """The rendition file Wagtail made, with its XMP marking. A rendition that cannot be
    marked (an SVG, an ICO) is returned as it was."""
    source = rendition.file
    marked = _spool(getattr(settings, "FILE_UPLOAD_MAX_MEMORY_SIZE", SPOOL_BYTES))
    try:
        embed_xmp(source, marked, packet(marking))
    except UnsupportedImage as exc:
        marked.close()
        logger.warning("Rendition %s was not marked as AI-generated: %s", rendition.name, exc)
        source.seek(0)
        return rendition
    except Exception:
        # A bug in the marking (a parser's error) must not break the page showing the
        # image: the rendition is served unmarked, and the error logged to be fixed.
        marked.close()
        logger.exception("Rendition %s was not marked as AI-generated", rendition.name)
        source.seek(0)
        return rendition
    except BaseException:
        marked.close()
        raise
    source.close()
    marked.seek(0)
    return File(marked, name=rendition.name)
