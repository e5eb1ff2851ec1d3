"""Wagtail's own background tasks run through the same Huey queue and show in the ledger."""

import pytest
from django.core.files.uploadedfile import SimpleUploadedFile
from wagtail.images import get_image_model

from huey_tasks.models import TaskRun
from tests.support.consumers import wait_for
from tests.support.images import png

pytestmark = [pytest.mark.django_db(transaction=True), pytest.mark.usefixtures("collections")]


def test_search_index_update_runs_in_the_consumer_and_is_in_the_ledger(thread_consumer):
    Image = get_image_model()
    image = Image.objects.create(
        title="untitled",
        file=SimpleUploadedFile("s.png", png(), content_type="image/png"),
        prompt="an origami crane over Kyoto",
    )

    # Wagtail enqueued its index update on commit; the consumer ran it.
    def index_task_done():
        runs = TaskRun.objects.filter(
            task_name__endswith="djtasks.run", status=TaskRun.Status.SUCCEEDED
        )
        return next((r for r in runs if "insert_or_update_object" in r.args[0]), None)

    run = wait_for(index_task_done, 30, message="the Wagtail index task in the ledger")
    assert run.short_name == "insert_or_update_object_task"
    assert run.worker_thread.startswith("Worker-")
    assert [found.pk for found in Image.objects.search("origami")] == [image.pk]
