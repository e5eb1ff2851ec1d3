"""The pipeline end to end: real admin views, real queue, a real consumer, demo providers."""

import threading
import time

import pytest
from django.urls import reverse
from wagtail.images import get_image_model
from wagtail.models import Collection

from generation.models import GenerationJob, GenerationRequest
from generation.providers.demo import call_key
from generation.retrying import retry_policy
from generation.tasks import generate_image
from huey_tasks.limiter import DEFAULT_SLOT_WAIT
from tests.support.admin import NS, act
from tests.support.consumers import queued_tasks, wait_for
from tests.support.docs import documented_number
from tests.support.factories import create_request_in_admin, wait_terminal
from tests.support.provider_calls import (
    calls_per_key,
    max_in_flight,
    overlapping_calls,
    read_calls,
)

# Transactional, so that worker threads see committed data.
pytestmark = [pytest.mark.django_db(transaction=True), pytest.mark.usefixtures("collections")]
Image = get_image_model()
Req = GenerationRequest.Status
Job = GenerationJob.Status
SLOT_PATIENCE = 2.0  # ConcurrencyLimiter.slot(): how long a task waits in-thread for a slot


def test_generate_from_the_admin_files_every_image_with_provenance(editor, demo, thread_consumer):
    request = create_request_in_admin(editor)
    assert request.status == Req.DRAFT
    confirm = editor.get(reverse(f"{NS}:action", args=[request.pk, "generate"]))
    assert confirm.status_code == 200 and b"Ask the LLM for 6 prompts" in confirm.content
    response = act(editor, request, "generate")
    assert response.status_code == 302
    request = wait_terminal(request)
    assert request.status == Req.COMPLETED
    assert (request.jobs_total, request.jobs_succeeded, request.jobs_failed) == (6, 6, 0)

    images = Image.objects.filter(generation_request_id=request.pk).order_by("generation_job_id")
    assert images.count() == 6
    job = request.jobs.get(index=0)
    image = job.image
    assert image.prompt == job.prompt == image.title
    assert image.collection.name == "Generated images"
    assert (image.image_model, image.llm, image.generation_job_id) == ("demo", "demo", job.pk)
    assert image.seed == job.seed and image.provider_request_id.startswith("demo-")
    assert sorted(image.tags.names()) == ["crows", "demo", "kyoto"]
    assert image.file_size == len(image.file.read()) and len(image.file_hash) == 40
    assert f"-job{job.pk}.jpg" in image.file.name
    # Wagtail's index update runs as a task on the same queue.
    wait_for(
        lambda: image.pk in [found.pk for found in Image.objects.search(job.prompt)],
        10,
        message="the image in the search index",
    )

    page = editor.get(reverse(f"{NS}:inspect", args=[request.pk]))
    assert page.status_code == 200
    assert page.content.decode().count(reverse("wagtailimages:edit", args=[image.pk])) == 1
    listing = editor.get(reverse(f"{NS}:list"))
    assert b"6 done / 6" in listing.content


def test_review_prompts_edit_one_then_generate_pending(editor, demo, thread_consumer):
    request = create_request_in_admin(editor, count=3, auto_generate="")
    act(editor, request, "generate")

    def drafted():
        request.refresh_from_db()
        return request.jobs_total == 3 and request.status == Req.DRAFT

    wait_for(drafted, 30, message="prompts written")
    assert not request.jobs.exclude(status=Job.PENDING).exists()
    job = request.jobs.get(index=1)
    too_short = editor.post(reverse(f"{NS}:job_prompt", args=[job.pk]), {"prompt": "crow"})
    assert too_short.status_code == 302
    job.refresh_from_db()
    assert job.prompt != "crow"
    editor.post(
        reverse(f"{NS}:job_prompt", args=[job.pk]),
        {"prompt": "A single crow on a snowy torii gate at dawn"},
    )
    job.refresh_from_db()
    assert job.prompt == "A single crow on a snowy torii gate at dawn"
    act(editor, request, "generate_pending")
    request = wait_terminal(request)
    assert request.status == Req.COMPLETED
    job.refresh_from_db()
    assert job.image.prompt == "A single crow on a snowy torii gate at dawn"
    # The alt text written for the old prompt was dropped; the new one describes the edit.
    assert "snowy torii gate" in job.image.description
    # Not pending any more: the prompt can no longer be edited.
    editor.post(reverse(f"{NS}:job_prompt", args=[job.pk]), {"prompt": "something else entirely"})
    job.refresh_from_db()
    assert job.prompt == "A single crow on a snowy torii gate at dawn"


def test_cancel_midway(editor, demo, thread_consumer, tmp_path):
    calls = tmp_path / "calls.log"
    demo(latency=0.3, concurrency=2, call_log=str(calls))
    request = create_request_in_admin(editor, count=20)
    act(editor, request, "generate")
    wait_for(
        lambda: Image.objects.filter(generation_request_id=request.pk).count() >= 2,
        30,
        message="first images",
    )
    assert act(editor, request, "cancel").status_code == 302
    cancel_time = time.time()  # committed: a call started before this may still finish
    request.refresh_from_db()
    assert request.status == Req.CANCELLED
    cancelled_at_once = set(request.jobs.filter(status=Job.CANCELLED).values_list("pk", flat=True))
    assert cancelled_at_once  # queued jobs were cancelled; running ones may finish
    open_statuses = [Job.PENDING, Job.QUEUED, Job.RUNNING, Job.RETRYING]
    wait_for(
        lambda: not request.jobs.filter(status__in=open_statuses).exists(),
        30,
        message="running jobs to finish",
    )
    # Tasks that found no free slot were re-scheduled; they come back after the slot wait,
    # having waited up to the limiter's patience first. Wait past that before concluding.
    threading.Event().wait(DEFAULT_SLOT_WAIT + SLOT_PATIENCE + 1.0)

    request.refresh_from_db()
    succeeded = set(request.jobs.filter(status=Job.SUCCEEDED).values_list("pk", flat=True))
    cancelled = set(request.jobs.filter(status=Job.CANCELLED).values_list("pk", flat=True))
    assert not cancelled_at_once & succeeded  # revoked tasks stay revoked
    assert cancelled_at_once <= cancelled
    assert len(succeeded) + len(cancelled) == 20
    assert (request.jobs_succeeded, request.jobs_cancelled) == (len(succeeded), len(cancelled))
    assert Image.objects.filter(generation_request_id=request.pk).count() == len(succeeded)
    assert request.status == Req.CANCELLED
    # No provider call started after the cancel (running calls finished, nothing new).
    assert [c for c in read_calls(calls) if c.start > cancel_time] == []


def test_exhausted_transient_retries_fail_the_job(editor, demo, thread_consumer, tmp_path):
    calls = tmp_path / "calls.log"
    # Every call fails transiently, with no streak cap letting a call through.
    demo(failure_rate=1.0, max_failure_streak=0, call_log=str(calls))
    request = create_request_in_admin(editor, count=3)
    act(editor, request, "generate")
    request = wait_terminal(request, timeout=60)

    # As many provider attempts as the docs promise (the first and its retries).
    attempts = documented_number("architecture.md", r"one of its (\d+) provider attempts")
    assert documented_number("configuration.md", r"(\d+) provider attempts in all") == attempts
    assert attempts == 1 + retry_policy()["MAX_RETRIES"]
    jobs = list(request.jobs.all())
    assert len(jobs) == 3
    for job in jobs:
        assert job.status == Job.FAILED
        assert "simulated transient failure" in job.error, job.error
        assert job.attempts == attempts
    assert request.status == Req.FAILED
    assert (request.jobs_failed, request.jobs_succeeded) == (3, 0)
    assert not Image.objects.filter(generation_request_id=request.pk).exists()
    # The provider saw exactly those attempts, one at a time per job.
    assert calls_per_key(calls) == {call_key(job.prompt): attempts for job in jobs}
    assert overlapping_calls(calls) == []


def test_retry_failed_then_regenerate_one(editor, demo, thread_consumer):
    demo(reject_rate=1.0)
    request = create_request_in_admin(editor, count=4)
    act(editor, request, "generate")
    request = wait_terminal(request)
    assert request.status == Req.FAILED
    assert request.jobs_failed == 4
    assert set(request.jobs.values_list("error", flat=True)) == {
        "demo: rejected by content policy (simulated)"
    }
    assert all(job.attempts == 1 for job in request.jobs.all())  # permanent: no retries

    demo(reject_rate=0.0)
    act(editor, request, "retry_failed")
    request = wait_terminal(request)
    assert request.status == Req.COMPLETED and request.jobs_failed == 0

    job = request.jobs.get(index=2)
    old_image, old_seed = job.image, job.seed
    assert old_image.seed == old_seed
    response = editor.post(reverse(f"{NS}:job_generate", args=[job.pk]))
    assert response.status_code == 302
    request = wait_terminal(request)
    job.refresh_from_db()
    old_image.refresh_from_db()
    assert job.image_id != old_image.pk and job.status == Job.SUCCEEDED
    assert old_image.generation_job_id is None  # kept in the library, detached
    # Regenerated with a new seed, which the new image was made with; the old image keeps
    # its own.
    assert job.seed != old_seed
    assert job.image.seed == job.seed and old_image.seed == old_seed
    assert request.jobs_succeeded == 4
    assert Image.objects.filter(generation_request_id=request.pk).count() == 5


def test_transient_failures_still_end_with_every_image(editor, demo, thread_consumer):
    demo(failure_rate=0.3)
    request = create_request_in_admin(editor, count=20)
    act(editor, request, "generate")
    request = wait_terminal(request, timeout=120)
    assert request.status == Req.COMPLETED
    assert Image.objects.filter(generation_request_id=request.pk).count() == 20
    assert request.jobs.filter(attempts__gt=1).exists()


def test_limiter_never_exceeds_its_limit_across_threads(
    queue_backend, editor, demo, thread_consumer, tmp_path
):
    call_log = tmp_path / "calls.log"
    demo(latency=0.15, concurrency=3, call_log=str(call_log))
    request = create_request_in_admin(editor, count=15)
    act(editor, request, "generate")
    request = wait_terminal(request, timeout=120)
    assert request.status == Req.COMPLETED
    # Submission to result, as the provider saw them: 8 worker threads, never more than
    # the 3 slots.
    assert max_in_flight(call_log) == 3


def test_redelivered_generate_image_creates_no_second_image(editor, demo, thread_consumer):
    request = create_request_in_admin(editor, count=2)
    act(editor, request, "generate")
    request = wait_terminal(request)
    job = request.jobs.first()
    generate_image.call_local(job.pk)  # a second delivery changes nothing
    assert Image.objects.filter(generation_request_id=request.pk).count() == 2

    # A crash after ingest but before the job was marked: the redelivery adopts the image.
    image = job.image
    GenerationJob.objects.filter(pk=job.pk).update(status=Job.RUNNING, image=None)
    GenerationRequest.objects.filter(pk=request.pk).update(jobs_succeeded=1, status=Req.GENERATING)
    generate_image.call_local(job.pk)
    job.refresh_from_db()
    request.refresh_from_db()
    assert job.image_id == image.pk and job.status == Job.SUCCEEDED
    assert request.status == Req.COMPLETED and request.jobs_succeeded == 2
    assert Image.objects.filter(generation_request_id=request.pk).count() == 2


def test_the_database_refuses_two_images_for_one_job(demo):
    from django.db import IntegrityError, transaction

    Image.objects.create(
        title="a", file="original_images/a.jpg", width=1, height=1, generation_job_id=99
    )
    with pytest.raises(IntegrityError), transaction.atomic():
        Image.objects.create(
            title="b", file="original_images/b.jpg", width=1, height=1, generation_job_id=99
        )


@pytest.mark.parametrize(
    "fields, field, message",
    [
        ({"theme": ""}, "theme", "This field is required"),
        ({"theme": "   "}, "theme", "This field is required"),
        ({"theme": "x" * 501}, "theme", "at most 500 characters"),
        ({"count": 0}, "count", "greater than or equal to 1"),
        ({"count": 501}, "count", "less than or equal to 500"),
        ({"count": "many"}, "count", "Enter a whole number"),
        ({"llm": "gpt-99"}, "llm", "Select a valid choice"),
        ({"image_model": "flux-schnell"}, "image_model", "Select a valid choice"),
        ({"aspect_ratio": "2:1"}, "aspect_ratio", "Select a valid choice"),
        ({"collection": ""}, "collection", "This field is required"),
    ],
)
def test_form_validation(editor, fields, field, message):
    data = {
        "theme": "Crows",
        "count": 5,
        "llm": "demo",
        "image_model": "demo",
        "aspect_ratio": "1:1",
        "collection": Collection.objects.get(name="Generated images").pk,
        "tags": "",
        **fields,
    }
    response = editor.post(reverse(f"{NS}:add"), data)
    assert response.status_code == 200
    assert field in response.context["form"].errors
    assert message in " ".join(response.context["form"].errors[field])
    assert not GenerationRequest.objects.exists()


def test_editor_without_snippet_permissions_is_denied(limited_editor):
    request = GenerationRequest.objects.create(theme="Crows", count=2)
    client = limited_editor()
    for url in [
        reverse(f"{NS}:list"),
        reverse(f"{NS}:inspect", args=[request.pk]),
        reverse(f"{NS}:action", args=[request.pk, "generate"]),
    ]:
        response = client.get(url)
        assert response.status_code in (302, 403), url
    assert act(client, request, "generate").status_code in (302, 403)
    request.refresh_from_db()
    assert request.status == Req.DRAFT

    # With view permission only: the page shows, actions do not, and POSTs are refused.
    client = limited_editor("view_generationrequest")
    page = client.get(reverse(f"{NS}:inspect", args=[request.pk]))
    assert page.status_code == 200
    assert reverse(f"{NS}:action", args=[request.pk, "generate"]).encode() not in page.content
    act(client, request, "generate")
    request.refresh_from_db()
    assert request.status == Req.DRAFT


def test_actions_need_post_and_csrf(editor, demo, django_user_model):
    from django.test import Client
    from huey.contrib.djhuey import HUEY

    def unchanged(request, status, jobs):
        """The request, its jobs and the queue are as they were: nothing was done."""
        request.refresh_from_db()
        assert request.status == status
        assert list(request.jobs.order_by("index").values_list("status", flat=True)) == jobs
        # Wagtail's own index updates share the queue: only the pipeline's tasks count.
        assert not queued_tasks("expand_prompt") and not queued_tasks("generate_image")
        assert HUEY.storage.schedule_size() == 0

    HUEY.storage.flush_all()
    draft = GenerationRequest.objects.create(theme="鴉の群れ", count=2, llm="demo")
    strict = Client(enforce_csrf_checks=True)
    strict.force_login(django_user_model.objects.get(username="editor"))
    response = strict.post(reverse(f"{NS}:action", args=[draft.pk, "generate"]))
    assert response.status_code == 403
    unchanged(draft, Req.DRAFT, [])
    # GET only asks for confirmation.
    confirm = editor.get(reverse(f"{NS}:action", args=[draft.pk, "generate"]))
    assert confirm.status_code == 200 and b"Ask the LLM for 2 prompts" in confirm.content
    unchanged(draft, Req.DRAFT, [])
    unknown = editor.post(reverse(f"{NS}:action", args=[draft.pk, "explode"]))
    assert unknown.status_code == 302
    unchanged(draft, Req.DRAFT, [])

    # An action that does not apply now changes nothing: a cancelled request's failed
    # jobs are never retried.
    cancelled = create_request_in_admin(editor, count=2)
    cancelled.jobs.create(index=0, prompt="鴉 at dawn over the river", status=Job.FAILED)
    cancelled.jobs.create(index=1, prompt="鴉 at dusk over the river", status=Job.CANCELLED)
    GenerationRequest.objects.filter(pk=cancelled.pk).update(
        status=Req.CANCELLED, jobs_total=2, jobs_failed=1, jobs_cancelled=1
    )
    not_now = editor.post(reverse(f"{NS}:action", args=[cancelled.pk, "retry_failed"]))
    assert not_now.status_code == 302
    unchanged(cancelled, Req.CANCELLED, [Job.FAILED, Job.CANCELLED])
    shown = editor.get(not_now["Location"]).content.decode()
    assert "is not possible for this request now (status: Cancelled)" in shown
    # A prompt's Generate is a POST too.
    job = cancelled.jobs.get(index=0)
    assert editor.get(reverse(f"{NS}:job_generate", args=[job.pk])).status_code == 405
    unchanged(cancelled, Req.CANCELLED, [Job.FAILED, Job.CANCELLED])


def test_llm_failure_fails_the_request_with_its_reason(editor, demo, thread_consumer, monkeypatch):
    from generation.providers import PermanentProviderError, get_llm

    def refuse(*args, **kwargs):
        raise PermanentProviderError("demo: the model refused this theme")

    monkeypatch.setattr(get_llm("demo"), "request_prompts", refuse)
    request = create_request_in_admin(editor, count=3)
    act(editor, request, "generate")
    request = wait_terminal(request)
    assert request.status == Req.FAILED
    assert request.error == "demo: the model refused this theme"
    assert not request.jobs.exists()
    page = editor.get(reverse(f"{NS}:inspect", args=[request.pk]))
    assert b"the model refused this theme" in page.content


def test_cancelled_while_expanding_queues_nothing(editor, demo, monkeypatch):
    from generation import services
    from generation.providers import get_llm

    request = create_request_in_admin(editor, count=3)
    services.start_request(request)
    llm = get_llm("demo")
    original = llm.request_prompts

    def cancel_then_expand(*args, **kwargs):
        request.refresh_from_db()
        services.cancel_request(request)  # the editor cancels while the LLM writes
        return original(*args, **kwargs)

    monkeypatch.setattr(llm, "request_prompts", cancel_then_expand)
    assert services.expand_request(request.pk) == []
    request.refresh_from_db()
    assert request.status == Req.CANCELLED
