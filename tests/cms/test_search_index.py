"""The image library's search index under concurrent filing: workers index images at the
same moment, as a 500-image request's workers do."""

import threading

import pytest
from django.core.files.base import ContentFile
from django.db import connection
from wagtail.images import get_image_model
from wagtail.search.backends import get_search_backend

from tests.support.images import png

pytestmark = pytest.mark.django_db(transaction=True)
Image = get_image_model()
THREADS = 8
IMAGES_PER_THREAD = 40


def test_images_indexed_by_many_workers_at_once_are_all_found(collections):
    """On PostgreSQL each index write renormalises every entry still at the default title
    norm, and titles of one length (a request's, from one template) all stay there: unordered
    concurrent writes deadlock. Every image must be indexed, and found, at once."""
    images = [
        Image.objects.create(
            title=f"烏 crow «{index:03d}» — 夕暮れ",  # one length, as a request's titles
            file=ContentFile(png(), name=f"crow-{index}.png"),
            collection=collections,
        )
        for index in range(THREADS * IMAGES_PER_THREAD)
    ]
    backend = get_search_backend()
    errors = []
    start = threading.Barrier(THREADS)

    def index(batch):
        try:
            start.wait()
            for image in batch:
                backend.add(image)
        except Exception as exc:  # a deadlock or any other failure of the index write
            errors.append(exc)
        finally:
            connection.close()

    threads = [threading.Thread(target=index, args=(images[i::THREADS],)) for i in range(THREADS)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(60)
    assert errors == []
    found = backend.search("crow", Image.objects.all())
    assert {image.pk for image in found} == {image.pk for image in images}


ROUNDS = 30


def test_two_workers_indexing_one_image_at_once_both_succeed(collections):
    """Wagtail's index-update task and a worker's own add() can index the same new image at
    the same moment. modelsearch's SQLite index reads which entries exist, then inserts
    the missing ones: without one transaction around both, both threads insert and one
    fails on the entry's unique constraint."""
    backend = get_search_backend()
    errors = []
    for round_ in range(ROUNDS):
        image = Image.objects.create(
            title=f"京都の烏 «{round_}» — “dusk”",
            file=ContentFile(png(), name=f"kyoto-{round_}.png"),
            collection=collections,
        )
        start = threading.Barrier(2)

        def index(image=image, start=start):
            try:
                start.wait()
                backend.add(image)
            except Exception as exc:  # the unique constraint, or any other failure
                errors.append(exc)
            finally:
                connection.close()

        threads = [threading.Thread(target=index) for _ in range(2)]
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join(60)
    assert errors == []
    assert len(backend.search("dusk", Image.objects.all())) == ROUNDS
