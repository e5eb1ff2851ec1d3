"""The job monitor's headline figures and its task-run filters, each checked against data
whose right answer is known."""

import datetime
import re

import pytest
from django.utils import timezone
from huey.contrib.djhuey import HUEY

from generation.models import GenerationRequest
from huey_tasks.models import TaskRun, WorkerHeartbeat
from tests.support import consumers
from tests.support.tasks import record_run

pytestmark = [pytest.mark.django_db, pytest.mark.usefixtures("empty_queue")]
Status = TaskRun.Status
MONITOR = "/admin/job-monitor/"
HOUR = datetime.timedelta(hours=1)


def add_runs(count: int, status: str, task: str = "generate_image", **fields) -> None:
    start = TaskRun.objects.count()
    TaskRun.objects.bulk_create(
        TaskRun(task_name=task, task_id=f"{task}-{status}-{start + i}", status=status, **fields)
        for i in range(count)
    )


def figures(html: str) -> dict[str, str]:
    return dict(re.findall(r'<dd data-stat="([a-z-]+)">([^<]*)</dd>', html))


def durations(html: str) -> list[tuple[str, ...]]:
    return re.findall(
        r"<tr><td>([^<]+)</td><td>(\d+)</td><td>([^<]+)</td><td>([^<]+)</td></tr>", html
    )


def test_the_headline_figures_count_what_they_say(editor):
    now = timezone.now()
    storage = HUEY.storage
    # Queue storage: one dead letter, two queued, one running, one scheduled.
    buried = record_run.s("/dev/null", "埋葬")
    HUEY.enqueue(buried)
    consumers.bury(buried.id)
    for key in ("一", "二", "三"):
        HUEY.enqueue(record_run.s("/dev/null", key))
    assert storage.claim(lease_seconds=60) is not None
    later = record_run.s("/dev/null", "後で")
    later.eta = datetime.datetime.now(datetime.UTC).replace(tzinfo=None) + HOUR
    HUEY.add_schedule(later)  # where a worker puts a task that is not due yet
    # The ledger: what is retrying and waiting now, failures of the last 24 hours, and
    # successes of the last hour (throughput) and the last 24 hours (durations).
    add_runs(2, Status.RETRYING)
    add_runs(1, Status.RATE_LIMITED)
    add_runs(3, Status.FAILED, finished_at=now - HOUR)
    add_runs(1, Status.FAILED, finished_at=now - 48 * HOUR)  # older than a day
    for seconds in range(1, 21):
        add_runs(1, Status.SUCCEEDED, duration=float(seconds), finished_at=now - HOUR / 2)
    add_runs(100, Status.SUCCEEDED, task="record_run", finished_at=now - HOUR / 3)
    add_runs(10, Status.SUCCEEDED, task="expand_prompt", duration=4.0, finished_at=now - 3 * HOUR)
    # Workers: two alive, one silent for minutes, one stopped.
    for pid, last_seen, stopped_at in [
        (1, now, None),
        (2, now, None),
        (3, now - datetime.timedelta(minutes=5), None),
        (4, now, now),
    ]:
        WorkerHeartbeat.objects.create(
            host="烏-host", pid=pid, workers=4, last_seen=last_seen, stopped_at=stopped_at
        )

    for url in (MONITOR, MONITOR + "live/"):
        html = editor.get(url).content.decode()
        shown = figures(html)
        assert {key: shown.get(key) for key in EXPECTED} == EXPECTED, url
        # p50 and p95 of the last 24 hours' successful runs, by task; runs without a
        # duration are left out.
        assert durations(html) == [
            ("expand_prompt", "10", "4.00 s", "4.00 s"),
            ("generate_image", "20", "10.00 s", "19.00 s"),
        ]
        assert "烏-host:1" in html and "烏-host:2" in html and "烏-host:3" not in html


EXPECTED = {
    "queued": "2",
    "scheduled": "1",
    "running": "1",
    "retrying": "2",
    "waiting": "1",
    "failed": "3",
    "dead": "1",
    "throughput": "2.0/min",  # 120 successes in the last hour
    "workers": "2",
}


def local(moment: datetime.datetime) -> str:
    """A time as the monitor's datetime-local inputs send it."""
    return timezone.localtime(moment).strftime("%Y-%m-%dT%H:%M:%S")


def test_the_task_run_filters(editor):
    now = timezone.now()
    first = GenerationRequest.objects.create(theme="烏", count=2)
    second = GenerationRequest.objects.create(theme="鷺", count=1)
    runs = [
        (
            "gi-failed-1",
            "generate_image",
            Status.FAILED,
            "demo: 拒否された (content policy)",
            first,
        ),
        ("gi-ok-1", "generate_image", Status.SUCCEEDED, "", first),
        ("ep-failed-1", "expand_prompt", Status.FAILED, "claude: timed out", second),
    ]
    for (task_id, task, status, error, request), age in zip(
        runs, [2 * HOUR, HOUR / 2, HOUR / 6], strict=True
    ):
        TaskRun.objects.create(
            task_id=task_id,
            task_name=task,
            status=status,
            error_message=error,
            generation_request=request,
            enqueued_at=now - age,
        )

    def shown(query: str) -> set[str]:
        response = editor.get(f"{MONITOR}?{query}")
        assert response.status_code == 200
        assert not response.context["filters"].errors, response.context["filters"].errors
        page = response.context["page"]
        task_ids = {run.task_id for run in page}
        for task_id in task_ids:
            assert task_id in response.content.decode()
        return task_ids

    assert shown("status=failed") == {"gi-failed-1", "ep-failed-1"}
    assert shown("task_name=generate_image") == {"gi-failed-1", "gi-ok-1"}
    assert shown("task_name=expand_prompt&status=failed") == {"ep-failed-1"}
    assert shown("q=拒否") == {"gi-failed-1"}  # in the error
    assert shown("q=ep-") == {"ep-failed-1"}  # the start of a task id
    assert shown(f"request={first.pk}") == {"gi-failed-1", "gi-ok-1"}
    assert shown(f"enqueued_after={local(now - HOUR)}") == {"gi-ok-1", "ep-failed-1"}
    assert shown(f"enqueued_before={local(now - HOUR)}") == {"gi-failed-1"}
    assert shown(f"status=succeeded&request={second.pk}") == set()
    assert "No task runs match." in editor.get(f"{MONITOR}?status=dead").content.decode()
