"""What the job monitor shows and does for whom: the permissions on task runs show the queue;
what its tasks are about (themes, prompts, images, spend) needs a permission on generation
requests, and acting on the pipeline's runs the change permission on them.

Users with exactly the named permissions (``limited_editor``), through Django's test client.
"""

import io

import pytest
from django.core.files.images import ImageFile
from django.urls import reverse
from django.utils import timezone
from huey.contrib.djhuey import HUEY
from wagtail.images import get_image_model

from generation.models import GenerationJob, GenerationRequest
from huey_tasks.models import TaskRun
from tests.support.factories import generated_images
from tests.support.images import jpeg

MONITOR = "/admin/job-monitor/"
THEME = "东京的乌鸦"
PROMPT = "一只乌鸦站在鸟居上，黎明时分，水墨风格"
pytestmark = [pytest.mark.usefixtures("empty_queue", "collections")]


def image_run() -> tuple[TaskRun, GenerationJob]:
    """A generating request's succeeded image and the run that made it."""
    request = GenerationRequest.objects.create(
        theme=THEME,
        count=2,
        status=GenerationRequest.Status.GENERATING,
        jobs_total=2,
        jobs_succeeded=1,
        llm="demo",
        image_model="demo",
        collection=generated_images(),
    )
    image = get_image_model().objects.create(
        title=PROMPT,
        collection=generated_images(),
        file=ImageFile(io.BytesIO(jpeg((64, 64), (20, 20, 40))), name="karasu.jpg"),
    )
    job = GenerationJob.objects.create(
        request=request,
        index=0,
        prompt=PROMPT,
        status=GenerationJob.Status.SUCCEEDED,
        image=image,
    )
    run = TaskRun.objects.create(
        task_name="generate_image",
        task_id="t-made",
        status=TaskRun.Status.SUCCEEDED,
        args=[job.pk],
        generation_request=request,
        generation_job=job,
        finished_at=timezone.now(),
    )
    return run, job


def monitor_pages(run: TaskRun) -> dict[str, str]:
    """Every page of the monitor and the raw task browser that shows this run or its
    request."""
    return {
        "monitor": MONITOR,
        "live part": MONITOR + "live/",
        "run detail": reverse("job_monitor:run", args=[run.pk]),
        "task browser": f"/admin/huey_tasks/taskrun/inspect/{run.pk}/",
    }


@pytest.mark.django_db
def test_task_run_viewers_see_the_queue_but_no_theme_prompt_image_or_spend(limited_editor):
    run, job = image_run()
    image_link = reverse("wagtailimages:edit", args=[job.image_id])
    client = limited_editor("view_taskrun")
    for page, url in monitor_pages(run).items():
        response = client.get(url)
        assert response.status_code == 200, page
        body = response.content.decode()
        assert "t-made" in body or page != "run detail", page
        assert THEME not in body, page
        assert PROMPT not in body, page
        assert image_link not in body and "karasu.jpg" not in body, page
        assert "Spend (USD)" not in body, page
    assert "Queue" in client.get(MONITOR).content.decode()  # the queue's own figures stay

    # Any permission on generation requests (here: view) shows all of it.
    client = limited_editor("view_taskrun", "view_generationrequest")
    pages = {page: client.get(url).content.decode() for page, url in monitor_pages(run).items()}
    assert THEME in pages["monitor"] and THEME in pages["live part"]
    assert "Spend (USD)" in pages["monitor"]
    assert THEME in pages["run detail"] and PROMPT in pages["run detail"]
    assert image_link in pages["run detail"]
    assert THEME in pages["task browser"] and PROMPT in pages["task browser"]


@pytest.mark.django_db(transaction=True)
def test_revoke_needs_the_change_permission_on_generation_requests(limited_editor):
    from generation.tasks import queue_jobs

    request = GenerationRequest.objects.create(
        theme=THEME, count=1, llm="demo", image_model="demo", jobs_total=1
    )
    job = GenerationJob.objects.create(request=request, index=0, prompt=PROMPT)
    queue_jobs([job.pk])
    run = TaskRun.objects.get(generation_job=job)
    detail = reverse("job_monitor:run", args=[run.pk])
    revoke = reverse("job_monitor:run_revoke", args=[run.pk])

    client = limited_editor("view_taskrun", "change_taskrun", "view_generationrequest")
    assert revoke not in client.get(detail).content.decode()
    for response in [client.get(revoke), client.post(revoke)]:
        # Wagtail answers a refused admin view with a redirect to the dashboard.
        assert response.status_code in (302, 403)
        assert response.get("Location") != detail
    run.refresh_from_db()
    job.refresh_from_db()
    assert run.status == TaskRun.Status.QUEUED and job.status == GenerationJob.Status.QUEUED
    assert not HUEY.is_revoked(run.task_id)

    client = limited_editor("view_taskrun", "change_taskrun", "change_generationrequest")
    assert revoke in client.get(detail).content.decode()
    assert client.post(revoke)["Location"] == detail
    run.refresh_from_db()
    job.refresh_from_db()
    assert run.status == TaskRun.Status.REVOKED and job.status == GenerationJob.Status.CANCELLED
    assert HUEY.is_revoked(run.task_id)


@pytest.mark.django_db
def test_a_plain_task_is_revoked_with_the_task_run_permissions_alone(limited_editor):
    from tests.support.tasks import record_run

    result = HUEY.enqueue(record_run.s("/dev/null", "仅任务"))
    run = TaskRun.objects.get(task_id=result.id)
    client = limited_editor("view_taskrun", "change_taskrun")
    assert client.post(reverse("job_monitor:run_revoke", args=[run.pk])).status_code == 302
    run.refresh_from_db()
    assert run.status == TaskRun.Status.REVOKED and HUEY.is_revoked(run.task_id)
