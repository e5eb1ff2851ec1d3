"""Wagtail's own tasks are named by their real task in the monitor, not by Huey's shim."""

import datetime

import pytest
from django.db import connection
from django.test.utils import CaptureQueriesContext
from django.urls import reverse
from django.utils import timezone
from huey.contrib.djhuey.tasks_backend import _shim

from huey_tasks import ledger
from huey_tasks.models import TaskRun
from huey_tasks.monitor import headline, task_label

Status = TaskRun.Status
MONITOR = "/admin/job-monitor/"
WAGTAIL_TASK = "modelsearch.tasks.insert_or_update_object_task"

pytestmark = [pytest.mark.django_db, pytest.mark.usefixtures("empty_queue")]


def wagtail_run(task_path: str = WAGTAIL_TASK, duration: float = 0.25) -> TaskRun:
    """A finished Wagtail task, recorded by the ledger as an enqueue of the shim records it."""
    task = _shim.s(task_path, ["wagtailimages", "image", "1"], {})
    ledger.record_enqueued([task])
    TaskRun.objects.filter(task_id=task.id).update(
        status=Status.SUCCEEDED, duration=duration, finished_at=timezone.now()
    )
    return TaskRun.objects.get(task_id=task.id)


def test_the_ledger_keeps_the_shim_and_the_wagtail_task_path():
    run = wagtail_run()
    assert run.task_name.endswith("djtasks.run")
    assert run.args[0] == WAGTAIL_TASK
    assert run.short_name == "insert_or_update_object_task"


def test_task_label():
    assert task_label("huey.contrib.djhuey.tasks_backend.djtasks.run", WAGTAIL_TASK) == (
        "insert_or_update_object_task"
    )
    assert task_label("generation.tasks.generate_image") == "generate_image"
    assert task_label("huey.contrib.djhuey.tasks_backend.djtasks.run") == "run"  # no args


def test_duration_table_names_wagtail_tasks_and_keeps_them_apart():
    wagtail_run(duration=0.2)
    wagtail_run(duration=0.4)
    wagtail_run("wagtail.tasks.update_reference_index_task", duration=1.0)
    TaskRun.objects.create(
        task_name="generation.tasks.generate_image",
        task_id="g1",
        args=[7],
        status=Status.SUCCEEDED,
        duration=3.0,
        finished_at=timezone.now(),
    )
    rows = {row.task: (row.count, row.p95) for row in headline()["durations"]}
    assert rows == {
        "generate_image": (1, 3.0),
        "insert_or_update_object_task": (2, 0.4),
        "update_reference_index_task": (1, 1.0),
    }


def test_monitor_page_shows_the_wagtail_task(editor):
    run = wagtail_run()
    body = editor.get(MONITOR).content.decode()
    # The run list: the full dotted path, linked to the run.
    link = reverse("job_monitor:run", args=[run.pk])
    assert f'<a href="{link}">{WAGTAIL_TASK}</a>' in body
    # The duration table: the function name.
    assert "<tr><td>insert_or_update_object_task</td><td>1</td>" in body
    assert "<tr><td>run</td>" not in body
    live = editor.get(MONITOR + "live/").content.decode()
    assert "<tr><td>insert_or_update_object_task</td><td>1</td>" in live
    detail = editor.get(link).content.decode()
    assert "insert_or_update_object_task · Succeeded" in detail
    assert f"{WAGTAIL_TASK} (Wagtail, run by {run.task_name})" in detail


def populate(runs: int) -> None:
    now = timezone.now()
    TaskRun.objects.bulk_create(
        TaskRun(
            task_name="huey.contrib.djhuey.tasks_backend.djtasks.run",
            task_id=f"w-{runs}-{i}",
            args=[WAGTAIL_TASK, "['wagtailimages', 'image', '1']", "{}"],
            status=Status.SUCCEEDED,
            duration=0.1 + i % 7 / 10,
            enqueued_at=now - datetime.timedelta(seconds=i),
            finished_at=now - datetime.timedelta(seconds=i),
        )
        for i in range(runs)
    )


def test_monitor_query_count_does_not_grow_with_wagtail_runs(editor):
    editor.get(MONITOR)  # warm per-process caches (site, menu)
    counts = []
    for runs in [5, 60]:
        populate(runs)
        with CaptureQueriesContext(connection) as queries:
            response = editor.get(MONITOR)
        assert response.status_code == 200
        counts.append(len(queries))
    assert counts[0] == counts[1], counts


def test_duration_table_query_count_does_not_grow_with_wagtail_runs():
    counts = []
    for runs in [5, 300]:
        populate(runs)
        with CaptureQueriesContext(connection) as queries:
            durations = headline()["durations"]
        assert [row.task for row in durations] == ["insert_or_update_object_task"]
        counts.append(len(queries))
    assert counts[0] == counts[1], counts
