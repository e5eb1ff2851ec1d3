"""Generation requests and jobs for the tests, made directly or through the admin, and
waiting for them to finish.

Every request here uses the offline demo LLM and image model unless a test says otherwise,
and files its images into the "Generated images" collection that the data migrations create.
"""

from __future__ import annotations

import io

from django.core.files.images import ImageFile
from django.urls import reverse
from huey.contrib.djhuey import HUEY
from wagtail.images import get_image_model
from wagtail.models import Collection

from generation.models import GenerationJob, GenerationRequest
from tests.support.admin import NS
from tests.support.consumers import wait_for
from tests.support.forms import request_form_data
from tests.support.images import jpeg

THEME = "Crows over Kyoto"
PROMPT = "{theme}: prompt number {i}"


def generated_images() -> Collection:
    return Collection.objects.get(name="Generated images")


def make_request(
    count: int = 4,
    *,
    with_jobs: bool = True,
    theme: str = THEME,
    prompt: str = PROMPT,
    status: str | None = None,
    job_status: str = GenerationJob.Status.PENDING,
    **fields,
) -> GenerationRequest:
    """A request for ``count`` images, saved in code (no form, no LLM call).

    With ``with_jobs`` (the default) its prompts are written as the LLM's answer would write
    them: it is generating (unless ``status`` says otherwise), with ``count`` jobs in
    ``job_status`` whose prompts are ``prompt`` formatted with ``theme`` and the index ``i``.
    Without, it is saved as a draft (or in ``status``) and has no jobs. ``fields`` are the
    request's other fields. Wagtail's index tasks for the new rows are dropped from the
    queue: they are not under test.
    """
    values = {
        "theme": theme,
        "count": count,
        "llm": "demo",
        "image_model": "demo",
        "collection": generated_images(),
        **fields,
    }
    if with_jobs:
        values.setdefault("jobs_total", count)
        status = status or GenerationRequest.Status.GENERATING
    if status is not None:
        values["status"] = status
    request = GenerationRequest.objects.create(**values)
    if with_jobs:
        GenerationJob.objects.bulk_create(
            GenerationJob(
                request=request,
                index=i,
                prompt=prompt.format(theme=theme, i=i),
                seed=i,
                status=job_status,
            )
            for i in range(count)
        )
    HUEY.storage.flush_queue()
    return request


def write_prompts(
    request: GenerationRequest, *, job_status: str = GenerationJob.Status.QUEUED
) -> list[GenerationJob]:
    """A draft's prompts written afterwards, as expand_request writes them, so its jobs can
    finish. The request becomes generating; its estimate, set while it was a draft, stays."""
    GenerationRequest.objects.filter(pk=request.pk).update(
        status=GenerationRequest.Status.GENERATING, jobs_total=request.count
    )
    return GenerationJob.objects.bulk_create(
        GenerationJob(
            request=request,
            index=i,
            prompt=PROMPT.format(theme=request.theme, i=i),
            seed=i,
            status=job_status,
        )
        for i in range(request.count)
    )


def make_request_with_results(
    count: int, prompt: str = "A crow on a torii gate, study {i}"
) -> GenerationRequest:
    """A generating request whose jobs cycle through succeeded (each with a real image filed
    in the library), failed and pending, counted on the request as the pipeline counts them.
    """
    Job = GenerationJob.Status
    Image = get_image_model()
    collection = generated_images()
    request = GenerationRequest.objects.create(
        theme=THEME,
        count=count,
        llm="demo",
        image_model="demo",
        status=GenerationRequest.Status.GENERATING,
        jobs_total=count,
        jobs_succeeded=len(range(0, count, 3)),
        jobs_failed=len(range(1, count, 3)),
        collection=collection,
    )
    statuses = [Job.SUCCEEDED, Job.FAILED, Job.PENDING]
    created = GenerationJob.objects.bulk_create(
        GenerationJob(
            request=request,
            index=i,
            prompt=prompt.format(i=i),
            status=statuses[i % 3],
            attempts=1 + i % 3,
            error="demo: rejected" if i % 3 == 1 else "",
        )
        for i in range(count)
    )
    data = jpeg((32, 32), (40, 40, 90))
    for job in created[::3]:
        job.image = Image.objects.create(
            title=job.prompt,
            file=ImageFile(io.BytesIO(data), name=f"job{job.pk}.jpg"),
            collection=collection,
            prompt=job.prompt,
            generation_request_id=request.pk,
            generation_job_id=job.pk,
        )
        job.save(update_fields=["image"])
    return request


def create_request_in_admin(client, **fields) -> GenerationRequest:
    """A request saved through the admin's add form by ``client``; ``fields`` override the
    form's (six images, tagged "crows, kyoto", generated as soon as it is saved)."""
    data = request_form_data(**{"count": 6, "tags": "crows, kyoto", **fields})
    response = client.post(reverse(f"{NS}:add"), data)
    assert response.status_code == 302, response.content.decode()[:3000]
    return GenerationRequest.objects.latest("pk")


def settled(request: GenerationRequest) -> bool:
    """Whether ``request`` (refreshed) has reached a final status."""
    request.refresh_from_db()
    return request.status in GenerationRequest.TERMINAL


def wait_terminal(request: GenerationRequest, timeout: float = 60) -> GenerationRequest:
    """``request``, refreshed, once it has reached a final status (or AssertionError)."""
    wait_for(
        lambda: settled(request),
        timeout,
        message=f"request {request.pk} to finish ({request.status})",
    )
    return request
