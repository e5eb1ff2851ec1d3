"""Wagtail's index updates for a generated image run in the worker that filed it: the image
is searchable as soon as its job succeeds, and no follow-up message is queued for it."""

import pytest
from wagtail.images import get_image_model
from wagtail.models import ReferenceIndex

from huey_tasks.models import TaskRun
from tests.support.admin import act
from tests.support.consumers import wait_for
from tests.support.factories import create_request_in_admin, wait_terminal

pytestmark = [pytest.mark.django_db(transaction=True), pytest.mark.usefixtures("collections")]
Image = get_image_model()


def wagtail_runs() -> list[TaskRun]:
    """Queued Wagtail tasks for images (the request's own save queues some for itself)."""
    runs = TaskRun.objects.filter(task_name__endswith="djtasks.run")
    return [run for run in runs if "karasuimage" in str(run.args)]


def test_index_updates_run_in_place_with_the_image(editor, demo, thread_consumer):
    request = create_request_in_admin(editor, count=5)
    act(editor, request, "generate")
    request = wait_terminal(request)
    assert request.jobs_succeeded == 5

    for job in request.jobs.all():
        found = wait_for(
            lambda job=job: list(Image.objects.search(job.prompt)),
            5,
            message="the image in the search index",
        )
        assert job.image_id in [image.pk for image in found]
    assert wagtail_runs() == []  # five images, no follow-up messages
    assert ReferenceIndex.objects.filter(
        object_id__in=[str(job.image_id) for job in request.jobs.all()]
    ).exists()  # its collection is a reference: the reference index ran too


def test_a_follow_up_that_fails_in_place_is_queued_and_runs_from_the_queue(
    editor, demo, thread_consumer, monkeypatch
):
    from modelsearch import index

    original = index.insert_or_update_object
    failures = []

    def first_call_fails(instance):
        if isinstance(instance, Image) and not failures:
            failures.append(instance.pk)
            raise RuntimeError("search backend unavailable")
        return original(instance)

    monkeypatch.setattr(index, "insert_or_update_object", first_call_fails)
    request = create_request_in_admin(editor, count=1)
    act(editor, request, "generate")
    request = wait_terminal(request)
    job = request.jobs.get()
    assert request.jobs_succeeded == 1 and failures == [job.image_id]  # the job is unharmed

    run = wait_for(
        lambda: next((r for r in wagtail_runs() if r.status == "succeeded"), None),
        20,
        message="the queued index update",
    )
    assert run.short_name == "insert_or_update_object_task"
    assert [image.pk for image in Image.objects.search(job.prompt)] == [job.image_id]
