"""The job monitor through Django's test client: access, actions, escaping, query counts."""

import datetime
import re
import time

import pytest
from django.db import connection
from django.test.utils import CaptureQueriesContext
from django.urls import reverse
from django.utils import timezone
from huey.contrib.djhuey import HUEY

from generation.models import GenerationJob, GenerationRequest
from huey_tasks.models import TaskRun, WorkerHeartbeat
from tests.support.consumers import queued_tasks

Status = TaskRun.Status
MONITOR = "/admin/job-monitor/"
pytestmark = pytest.mark.usefixtures("empty_queue")


def failed_job_run() -> TaskRun:
    request = GenerationRequest.objects.create(
        theme="Crows",
        count=1,
        status=GenerationRequest.Status.FAILED,
        jobs_total=1,
        jobs_failed=1,
        llm="demo",
        image_model="demo",
    )
    job = GenerationJob.objects.create(
        request=request,
        index=0,
        prompt="a crow at dawn",
        status=GenerationJob.Status.FAILED,
        error="boom",
    )
    return TaskRun.objects.create(
        task_name="generate_image",
        task_id="t-failed",
        status=Status.FAILED,
        args=[job.pk],
        generation_request=request,
        generation_job=job,
        error_class="PermanentProviderError",
        error_message="demo: rejected",
        finished_at=timezone.now(),
    )


@pytest.mark.django_db
def test_no_access_without_the_view_permission(limited_editor):
    client = limited_editor()
    for url in [MONITOR, MONITOR + "live/", MONITOR + "dead-letters/"]:
        response = client.get(url)
        assert response.status_code in (302, 403), url
        assert b"Dead letters" not in response.content


@pytest.mark.django_db
def test_viewer_sees_the_monitor_but_no_actions(limited_editor):
    run = failed_job_run()
    client = limited_editor("view_taskrun")
    response = client.get(MONITOR)
    assert response.status_code == 200
    body = response.content.decode()
    assert "Job monitor" in body and "t-failed" in body
    assert 'data-controller="karasu-poll w-swap"' in body
    detail = client.get(reverse("job_monitor:run", args=[run.pk]))
    assert detail.status_code == 200
    assert reverse("job_monitor:run_retry", args=[run.pk]).encode() not in detail.content
    assert client.post(reverse("job_monitor:run_retry", args=[run.pk])).status_code in (302, 403)
    assert GenerationJob.objects.get().status == GenerationJob.Status.FAILED
    menu = client.get("/admin/")
    assert b"Job monitor" in menu.content  # menu item and dashboard panel


@pytest.mark.django_db(transaction=True)
@pytest.mark.usefixtures("collections")
def test_changer_retries_a_failed_run(limited_editor):
    run = failed_job_run()
    client = limited_editor("view_taskrun", "change_taskrun", "change_generationrequest")
    confirm = client.get(reverse("job_monitor:run_retry", args=[run.pk]))
    assert confirm.status_code == 200 and b"again?" in confirm.content
    response = client.post(reverse("job_monitor:run_retry", args=[run.pk]))
    assert response.status_code == 302
    job = GenerationJob.objects.get()
    assert job.status == GenerationJob.Status.QUEUED
    assert [task.args for task in queued_tasks("generate_image")] == [(job.pk,)]
    new_run = TaskRun.objects.get(task_id=job.task_id)
    assert new_run.status == Status.QUEUED and new_run.generation_request_id == job.request_id
    request = GenerationRequest.objects.get()
    assert request.status == GenerationRequest.Status.GENERATING and request.jobs_failed == 0


@pytest.mark.django_db(transaction=True)
@pytest.mark.usefixtures("collections")
def test_changer_revokes_a_queued_run_and_retries_a_requests_failures(limited_editor):
    from generation.tasks import queue_jobs

    request = GenerationRequest.objects.create(
        theme="Crows", count=2, llm="demo", image_model="demo", jobs_total=2
    )
    jobs = [
        GenerationJob.objects.create(request=request, index=i, prompt=f"crow number {i} x")
        for i in range(2)
    ]
    queue_jobs([job.pk for job in jobs])
    run = TaskRun.objects.get(generation_job=jobs[0])
    client = limited_editor("view_taskrun", "change_taskrun", "change_generationrequest")
    client.post(reverse("job_monitor:run_revoke", args=[run.pk]))
    run.refresh_from_db()
    jobs[0].refresh_from_db()
    assert run.status == Status.REVOKED
    assert jobs[0].status == GenerationJob.Status.CANCELLED
    assert HUEY.is_revoked(run.task_id)

    GenerationJob.objects.filter(pk=jobs[1].pk).update(status=GenerationJob.Status.FAILED)
    GenerationRequest.objects.filter(pk=request.pk).update(jobs_failed=1, jobs_cancelled=1)
    response = client.post(reverse("job_monitor:request_retry_failed", args=[request.pk]))
    assert response.status_code == 302
    jobs[1].refresh_from_db()
    assert jobs[1].status == GenerationJob.Status.QUEUED


@pytest.mark.django_db
def test_dead_letters_listed_requeued_and_purged(limited_editor):
    from tests.support.tasks import record_run

    storage = HUEY.storage
    for key in ("a", "b"):
        HUEY.enqueue(record_run.s("/dev/null", key))
    # Workers that keep dying: every lease runs out until both messages are buried.
    for _ in range(100):
        if storage.dead_letter_count() == 2:
            break
        storage.claim(lease_seconds=0.001)
        time.sleep(0.002)
    assert storage.dead_letter_count() == 2 and storage.claim() is None
    client = limited_editor("view_taskrun", "change_taskrun", "change_generationrequest")
    page = client.get(MONITOR + "dead-letters/")
    assert page.status_code == 200 and page.content.count(b"record_run") == 2
    [first, second] = storage.dead_letters()
    client.post(reverse("job_monitor:dead_letter", args=[first.message_id, "requeue"]))
    assert storage.dead_letter_count() == 1 and storage.queue_size() == 1
    confirm = client.get(reverse("job_monitor:dead_letters_all", args=["purge"]))
    assert b"Delete every dead letter" in confirm.content
    client.post(reverse("job_monitor:dead_letters_all", args=["purge"]))
    assert storage.dead_letter_count() == 0


@pytest.mark.django_db
def test_prompt_theme_and_error_text_are_escaped(limited_editor):
    request = GenerationRequest.objects.create(
        theme="<script>alert('theme')</script>", count=1, status="generating", jobs_total=1
    )
    job = GenerationJob.objects.create(
        request=request, index=0, prompt="<script>alert('prompt')</script> crow"
    )
    run = TaskRun.objects.create(
        task_name="generate_image",
        task_id="t-xss",
        status=Status.FAILED,
        args=[job.pk],
        generation_request=request,
        generation_job=job,
        error_message="<script>alert('error')</script>",
        traceback="<script>tb</script>",
    )
    # Themes and prompts show to those who may view requests (test_monitor_permissions).
    client = limited_editor("view_taskrun", "view_generationrequest")
    for url in [MONITOR, MONITOR + "live/", reverse("job_monitor:run", args=[run.pk])]:
        body = client.get(url).content.decode()
        assert "<script>alert(" not in body, url
        assert "&lt;script&gt;alert(" in body, url


def populate(runs: int, requests: int) -> None:
    now = timezone.now()
    request_objs = GenerationRequest.objects.bulk_create(
        GenerationRequest(
            theme=f"theme {i}",
            count=10,
            jobs_total=10,
            jobs_succeeded=i % 10,
            status="generating" if i % 3 else "completed",
            finished_at=now,
        )
        for i in range(requests)
    )
    statuses = [Status.SUCCEEDED, Status.FAILED, Status.RETRYING, Status.QUEUED]
    TaskRun.objects.bulk_create(
        (
            TaskRun(
                task_name="generate_image",
                task_id=f"run-{runs}-{i}",
                status=statuses[i % 4],
                duration=0.1 + (i % 50) / 10,
                enqueued_at=now - datetime.timedelta(seconds=i),
                finished_at=now - datetime.timedelta(seconds=i),
                generation_request_id=request_objs[i % requests].pk,
            )
            for i in range(runs)
        ),
        batch_size=2000,
    )
    WorkerHeartbeat.objects.create(host="h", pid=1, workers=16)


@pytest.mark.django_db
def test_monitor_query_count_does_not_grow_with_the_data(limited_editor):
    client = limited_editor("view_taskrun", "change_taskrun")
    client.get(MONITOR)  # warm per-process caches (site, menu)
    counts = []
    failed = 0
    for runs, requests in [(40, 5), (2000, 200)]:
        populate(runs, requests)
        failed += runs // 4  # every fourth run populate() writes failed
        with CaptureQueriesContext(connection) as queries:
            response = client.get(MONITOR + "?status=failed")
        assert response.status_code == 200
        counts.append(len(queries))
        # The filter's result: the failed runs, and only them.
        page = response.context["page"]
        assert page.paginator.count == failed
        assert {run.status for run in page} == {Status.FAILED}
    assert counts[0] == counts[1], counts
    assert f"({failed} runs)" in response.content.decode()


@pytest.mark.django_db
def test_raw_task_run_browser(limited_editor):
    run = failed_job_run()
    client = limited_editor("view_taskrun")
    index = client.get("/admin/huey_tasks/taskrun/?status=failed")
    assert index.status_code == 200 and b"t-failed" in index.content
    inspect = client.get(f"/admin/huey_tasks/taskrun/inspect/{run.pk}/")
    assert inspect.status_code == 200 and b"demo: rejected" in inspect.content


@pytest.mark.django_db
def test_every_action_is_refused_without_the_change_permission(limited_editor):
    from tests.support.tasks import record_run

    run = failed_job_run()
    queued = TaskRun.objects.create(
        task_name="record_run", task_id="t-queued", status=Status.QUEUED
    )
    HUEY.enqueue(record_run.s("/dev/null", "x"))
    bury_everything()
    [letter] = HUEY.storage.dead_letters()
    client = limited_editor("view_taskrun")
    urls = [
        reverse("job_monitor:run_retry", args=[run.pk]),
        reverse("job_monitor:run_revoke", args=[queued.pk]),
        reverse("job_monitor:request_retry_failed", args=[run.generation_request_id]),
        reverse("job_monitor:dead_letters_all", args=["requeue"]),
        reverse("job_monitor:dead_letters_all", args=["purge"]),
        reverse("job_monitor:dead_letter", args=[letter.message_id, "requeue"]),
        reverse("job_monitor:dead_letter", args=[letter.message_id, "purge"]),
    ]
    for url in urls:
        assert client.get(url).status_code in (302, 403), url
        assert client.post(url).status_code in (302, 403), url
    assert GenerationJob.objects.get().status == GenerationJob.Status.FAILED
    assert TaskRun.objects.get(pk=queued.pk).status == Status.QUEUED
    assert not HUEY.is_revoked("t-queued")
    assert HUEY.storage.dead_letter_count() == 1
    page = client.get(MONITOR + "dead-letters/")
    assert b"Requeue" not in page.content and b"Purge" not in page.content


def bury_everything():
    while HUEY.storage.queue_size() or HUEY.storage.leased_count():
        HUEY.storage.claim(lease_seconds=0.001)
        time.sleep(0.002)


@pytest.mark.django_db
def test_retry_of_a_plain_task_replays_only_verbatim_arguments(limited_editor):
    from tests.support.tasks import add, record_run

    client = limited_editor("view_taskrun", "change_taskrun")
    scalar = TaskRun.objects.create(
        task_name=HUEY._registry.task_to_string(add.task_class),
        task_id="t-add",
        status=Status.FAILED,
        args=[2, 3],
    )
    texts = TaskRun.objects.create(
        task_name=HUEY._registry.task_to_string(record_run.task_class),
        task_id="t-text",
        status=Status.FAILED,
        args=["/dev/null", "[redacted]"],
    )
    client.post(reverse("job_monitor:run_retry", args=[scalar.pk]))
    client.post(reverse("job_monitor:run_retry", args=[texts.pk]))
    assert [list(task.args) for task in queued_tasks("add")] == [[2, 3]]
    assert queued_tasks("record_run") == []


@pytest.mark.django_db(transaction=True)
@pytest.mark.usefixtures("collections")
def test_the_monitor_shows_what_maintenance_repaired(editor, settings):
    from generation.tasks import maintenance, queue_jobs
    from tests.support.factories import make_request

    # Replaced, not mutated, so the setting is restored after the test.
    settings.KARASU = {**settings.KARASU, "RECONCILE": {"GRACE_SECONDS": 0}}
    lost = make_request(2)
    queue_jobs(list(lost.jobs.values_list("pk", flat=True)))
    cancelled = make_request(1, theme="Herons")
    queue_jobs(list(cancelled.jobs.values_list("pk", flat=True)))
    GenerationRequest.objects.filter(pk=cancelled.pk).update(
        status=GenerationRequest.Status.CANCELLED
    )
    HUEY.storage.flush_queue()  # every message lost: the jobs stay queued with none
    result = maintenance.call_local()
    assert (result["jobs_requeued"], result["jobs_cancelled"]) == (2, 1)
    assert len(queued_tasks("generate_image")) == 2

    expected = (
        "2 lost jobs requeued, 0 failed, 1 cancelled; 0 expansions restarted, 0 failed, "
        "0 back to draft, 0 settled."
    )
    for url in [MONITOR, MONITOR + "live/"]:
        response = editor.get(url)
        assert response.status_code == 200, url
        body = response.content.decode()
        [paragraph] = re.findall(r"<p[^>]*data-maintenance[^>]*>(.*?)</p>", body, re.S)
        text = " ".join(paragraph.split())
        assert text.startswith("Last maintenance "), text
        assert "ago" in text or "now" in text, text  # when, as the operator reads it
        assert text.endswith(expected), text
