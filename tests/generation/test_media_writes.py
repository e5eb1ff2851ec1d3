"""generation.media: after a failed write, a job proves the storage takes one before it pays."""

import logging

import pytest
from django.core.files.base import ContentFile

from generation.media import MediaUnavailable, MediaWrites


class FlakyStorage:
    """Writes fail while ``broken``; deletes fail while ``undeletable``."""

    def __init__(self):
        self.broken = False
        self.undeletable = False
        self.names = set()

    def save(self, name, content, max_length=None):
        if self.broken:
            raise PermissionError("AccessDenied: the key SECRET-abc is not allowed")
        self.names.add(name)
        return name

    def delete(self, name):
        if self.undeletable:
            raise OSError("DeleteObject denied")
        self.names.discard(name)


def test_no_probe_while_writes_work_and_one_after_a_failure():
    storage, media = FlakyStorage(), MediaWrites()
    media.ensure_writable(storage)  # nothing failed: no write at all
    assert storage.names == set()
    storage.broken = True
    with pytest.raises(PermissionError):
        media.save(storage, "original_images/a.png", ContentFile(b"x"))
    with pytest.raises(MediaUnavailable, match=r"does not take writes \(PermissionError: "):
        media.ensure_writable(storage)
    storage.broken = False
    media.ensure_writable(storage)  # the probe is written and deleted: writes work again
    assert storage.names == set() and media.failure == ""


def test_a_probe_that_cannot_be_deleted_still_lets_the_job_go_on(caplog):
    storage, media = FlakyStorage(), MediaWrites()
    media.failure = "OSError: disk full"
    storage.undeletable = True
    with caplog.at_level(logging.WARNING, logger="generation.media"):
        media.ensure_writable(storage)
    assert media.failure == ""
    assert "Could not delete the media probe karasu-probes/" in caplog.text
