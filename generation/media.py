"""Whether this process can write media, checked before a job pays for an image.

A job calls the (paid) image model before it files the image. When the media storage does
not take writes (a bucket that does not exist, wrong credentials, a full disk), every
retry of every job would pay again for an image it cannot store. So once a write of this
process fails, each job first proves that the storage takes a write (a tiny file written
and deleted) before its paid call. While the storage does not, the job waits without
calling the provider. Its message is handed back uncounted with a back-off, as in a
database outage, and the job says why it waits.
"""

from __future__ import annotations

import logging
import uuid

from django.core.files.base import ContentFile
from django.core.files.storage import default_storage

from cms.redaction import redact

logger = logging.getLogger(__name__)
PROBE_DIRECTORY = "karasu-probes"


class MediaUnavailable(OSError):
    """The media storage refused the last write, so no call is paid for until it takes one
    again."""


class MediaWrites:
    def __init__(self) -> None:
        self.failure = ""  # Why the last write failed, or "" while writes succeed.

    def save(self, storage, name: str, content, max_length: int | None = None) -> str:
        """``storage.save()``, noting whether it worked."""
        try:
            stored = storage.save(name, content, max_length=max_length)
        except Exception as exc:
            self.failure = redact(f"{exc.__class__.__name__}: {exc}")
            raise
        self.failure = ""
        return stored

    def ensure_writable(self, storage=None) -> None:
        """Return at once while writes succeed. After a failure, write and delete a probe
        file, and raise MediaUnavailable if that fails too."""
        if not self.failure:
            return
        storage = storage or default_storage
        try:
            name = self.save(
                storage,
                f"{PROBE_DIRECTORY}/{uuid.uuid4().hex}.txt",
                ContentFile(b"karasu media probe\n"),
            )
        except Exception:
            raise MediaUnavailable(
                f"the media storage does not take writes ({self.failure})"
            ) from None
        try:
            storage.delete(name)
        except Exception:  # The write worked, which is what the job needs.
            logger.warning("Could not delete the media probe %s.", name, exc_info=True)


# One per process, so that its worker threads share what the storage last said.
MEDIA = MediaWrites()
