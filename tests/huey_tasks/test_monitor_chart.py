"""The activity charts: per-minute bucketing, the SVG and its text, the monitor and the
request page's live fragment, one query each."""

from __future__ import annotations

import datetime
import itertools
import re

import pytest
from django.db import connection
from django.template.loader import render_to_string
from django.test.utils import CaptureQueriesContext
from django.urls import reverse
from django.utils import timezone

from generation.charts import request_chart
from generation.models import GenerationJob, GenerationRequest
from huey_tasks import charts
from huey_tasks.models import TaskRun
from tests.support.admin import NS
from tests.support.factories import make_request

Status = TaskRun.Status
Job = GenerationJob.Status
MONITOR = "/admin/job-monitor/"
UTC = datetime.UTC
NOW = datetime.datetime(2025, 3, 4, 12, 30, 45, tzinfo=UTC)
pytestmark = pytest.mark.usefixtures("empty_queue")


def ago(minutes: float, now: datetime.datetime = NOW) -> datetime.datetime:
    return now - datetime.timedelta(minutes=minutes)


def run(status: str, finished_at: datetime.datetime | None, **fields) -> TaskRun:
    run.counter = getattr(run, "counter", 0) + 1
    return TaskRun.objects.create(
        task_name="generate_image",
        task_id=f"chart-{run.counter}",
        status=status,
        finished_at=finished_at,
        **fields,
    )


def chart_of(html: str, chart_id: str) -> str:
    start = html.index(f'data-chart="{chart_id}"')
    return html[start : html.index("</figure>", start)]


# Bucketing --------------------------------------------------------------------------------


def test_window_is_the_sixty_whole_minutes_up_to_now():
    starts = charts.window(NOW)
    assert len(starts) == 60
    assert starts[-1] == datetime.datetime(2025, 3, 4, 12, 30, tzinfo=UTC)
    assert starts[0] == datetime.datetime(2025, 3, 4, 11, 31, tzinfo=UTC)
    assert all(b - a == datetime.timedelta(minutes=1) for a, b in itertools.pairwise(starts))


def test_bucket_fills_empty_minutes_with_zeros_and_drops_rows_outside():
    minute = datetime.datetime(2025, 3, 4, 12, 0, tzinfo=UTC)
    other_zone = datetime.timezone(datetime.timedelta(hours=9))
    rows = [
        (minute, 3, 1),
        (minute.astimezone(other_zone), 1, 0),  # the same minute, another zone: added up
        (datetime.datetime(2025, 3, 4, 12, 30, tzinfo=UTC), 0, 2),
        (datetime.datetime(2025, 3, 4, 11, 30, tzinfo=UTC), 7, 7),  # before the window
    ]
    minutes = charts.bucket(rows, NOW)
    assert len(minutes) == 60
    by_start = {m.start: (m.succeeded, m.failed) for m in minutes}
    assert by_start[minute] == (4, 1)
    assert minutes[-1].failed == 2 and minutes[-1].succeeded == 0
    assert sum(m.total for m in minutes) == 7
    assert sum(1 for m in minutes if m.total) == 2  # every other minute is zero


@pytest.mark.django_db
def test_runs_at_known_minutes_land_in_their_buckets():
    run(Status.SUCCEEDED, ago(0.5))  # 12:30
    run(Status.SUCCEEDED, ago(0.7))  # 12:30
    run(Status.FAILED, ago(5, NOW.replace(second=0)))  # 12:25:00 exactly
    run(Status.DEAD, ago(10))  # 12:20, a dead letter is a failure
    run(Status.SUCCEEDED, ago(59.5))  # 11:31:15, the first minute
    run(Status.SUCCEEDED, ago(60))  # 11:30:45, before the window
    run(Status.SUCCEEDED, ago(-2))  # 12:32, after it
    run(Status.CANCELLED, ago(3))  # neither succeeded nor failed
    run(Status.RUNNING, None)

    chart = charts.task_runs_chart(now=NOW)
    counts = {m.start.strftime("%H:%M"): (m.succeeded, m.failed) for m in chart.minutes if m.total}
    assert counts == {"12:30": (2, 0), "12:25": (0, 1), "12:20": (0, 1), "11:31": (1, 0)}
    assert (chart.succeeded, chart.failed) == (3, 2)
    assert chart.label == "3 succeeded and 2 failed in the last hour"
    assert len(chart.minutes) == 60 and chart.peak == 2


@pytest.mark.django_db
def test_the_chart_is_one_query_on_the_finished_index():
    for minute in range(30):
        run(Status.SUCCEEDED, ago(minute))
    with CaptureQueriesContext(connection) as queries:
        charts.task_runs_chart(now=NOW)
    assert len(queries) == 1
    sql = queries[0]["sql"]
    assert "GROUP BY" in sql and "finished_at" in sql
    if connection.vendor == "sqlite":
        with connection.cursor() as cursor:
            cursor.execute("EXPLAIN QUERY PLAN " + sql)
            plan = str(cursor.fetchall())
        assert "taskrun_finished" in plan, plan


def test_empty_chart_renders_with_zero_totals():
    chart = charts.ActivityChart(charts.bucket([], NOW), NOW)
    html = render_to_string("huey_tasks/activity_chart.html", {"chart": chart, "chart_id": "c"})
    assert 'role="img"' in html and 'aria-labelledby="c-title"' in html
    assert "0 succeeded and 0 failed in the last hour" in html
    assert "<rect data-series" not in html
    assert "<table" not in html and 'class="w-sr-only"' in html


def test_svg_bars_legend_and_text_alternative():
    rows = [
        (datetime.datetime(2025, 3, 4, 12, 10, tzinfo=UTC), 4, 0),
        (datetime.datetime(2025, 3, 4, 12, 11, tzinfo=UTC), 2, 2),
    ]
    chart = charts.ActivityChart(charts.bucket(rows, NOW), NOW, noun="task <runs>")
    html = render_to_string("huey_tasks/activity_chart.html", {"chart": chart, "chart_id": "c"})
    # Escaped, wherever it comes from.
    assert "<runs>" not in html and "&lt;runs&gt;" in html
    assert html.count('data-series="succeeded"') == 2 and html.count('data-series="failed"') == 1
    # The tallest minute fills the plot; minute 12:10 is the 40th bar.
    heights = re.findall(
        r'data-series="succeeded" x="([\d.]+)" y="[\d.]+" width="8" '
        r'height="([\d.]+)"',
        html,
    )
    assert heights == [("391", "58"), ("401", "29")]
    assert "6 succeeded and 2 failed in the last hour" in html
    assert "var(--w-color-positive-100" in html and "var(--w-color-critical-200" in html
    table = html[html.index('<table class="w-sr-only">') :]
    assert re.findall(r"<th scope=\"row\">([\d:]+)</th><td>(\d+)</td><td>(\d+)</td>", table) == [
        ("12:10", "4", "0"),
        ("12:11", "2", "2"),
    ]


# The monitor ------------------------------------------------------------------------------


@pytest.mark.django_db
def test_monitor_and_its_live_fragment_show_the_chart(editor):
    now = timezone.now()
    for _ in range(3):
        run(Status.SUCCEEDED, now - datetime.timedelta(minutes=2))
    run(Status.FAILED, now - datetime.timedelta(minutes=1), error_message="<b>x</b>")
    run(Status.SUCCEEDED, now - datetime.timedelta(hours=2))
    for url in (MONITOR, MONITOR + "live/"):
        html = editor.get(url).content.decode()
        chart = chart_of(html, "karasu-monitor-activity")
        assert "3 succeeded and 1 failed in the last hour" in chart, url
        assert 'role="img"' in chart and "<svg" in chart
    page = editor.get(MONITOR).content.decode()
    live_part = page[
        page.index('id="karasu-monitor-live"') : page.index('id="karasu-runs-heading"')
    ]
    assert 'data-chart="karasu-monitor-activity"' in live_part  # refreshed with the rest


@pytest.mark.django_db
def test_monitor_queries_do_not_grow_with_the_runs_in_the_hour(editor):
    editor.get(MONITOR)  # warm per-process caches
    counts = []
    for batch in (10, 1000):
        now = timezone.now()
        TaskRun.objects.bulk_create(
            TaskRun(
                task_name="generate_image",
                task_id=f"bulk-{batch}-{i}",
                status=Status.FAILED if i % 7 == 0 else Status.SUCCEEDED,
                finished_at=now - datetime.timedelta(seconds=i * 3),
            )
            for i in range(batch)
        )
        with CaptureQueriesContext(connection) as queries:
            assert editor.get(MONITOR).status_code == 200
        counts.append(len(queries))
    assert counts[0] == counts[1], counts


# A request's page -------------------------------------------------------------------------


def jobs(request: GenerationRequest, *finished: tuple[str, datetime.datetime | None]) -> None:
    for index, (status, finished_at) in enumerate(finished):
        GenerationJob.objects.create(
            request=request, index=index, prompt=f"p{index}", status=status, finished_at=finished_at
        )


@pytest.mark.django_db
@pytest.mark.usefixtures("collections")
def test_request_live_fragment_shows_only_that_requests_images(editor):
    now = timezone.now()
    mine = make_request(
        with_jobs=False,
        theme="Crows",
        jobs_total=4,
        status=GenerationRequest.Status.GENERATING,
        jobs_succeeded=2,
        jobs_failed=1,
    )
    jobs(
        mine,
        (Job.SUCCEEDED, now - datetime.timedelta(minutes=3)),
        (Job.SUCCEEDED, now - datetime.timedelta(minutes=1)),
        (Job.FAILED, now - datetime.timedelta(minutes=1)),
        (Job.PENDING, None),
    )
    other = make_request(
        with_jobs=False, theme="Herons", jobs_total=4, status=GenerationRequest.Status.GENERATING
    )
    jobs(other, *[(Job.SUCCEEDED, now)] * 3, (Job.FAILED, now))
    run(Status.SUCCEEDED, now, generation_request=mine)  # the ledger is not what is counted

    html = editor.get(reverse(f"{NS}:live", args=[mine.pk])).content.decode()
    chart = chart_of(html, f"karasu-request-{mine.pk}-activity")
    assert "Images per minute: 2 succeeded and 1 failed in the last hour" in chart
    assert chart.count('data-series="succeeded"') == 2
    assert chart.count('data-series="failed"') == 1
    page = editor.get(reverse(f"{NS}:inspect", args=[mine.pk])).content.decode()
    assert "Images per minute: 2 succeeded and 1 failed in the last hour" in page


@pytest.mark.django_db
def test_a_finished_request_shows_its_last_hour():
    finished = timezone.now() - datetime.timedelta(days=2)
    done = make_request(
        with_jobs=False,
        theme="Owls",
        jobs_total=4,
        status=GenerationRequest.Status.COMPLETED_WITH_ERRORS,
        finished_at=finished,
    )
    jobs(
        done,
        (Job.SUCCEEDED, finished - datetime.timedelta(minutes=50)),
        (Job.SUCCEEDED, finished - datetime.timedelta(minutes=61)),  # before its last hour
        (Job.FAILED, finished),
    )
    with CaptureQueriesContext(connection) as queries:
        chart = request_chart(done)
    assert len(queries) == 1
    assert (chart.succeeded, chart.failed) == (1, 1)
    assert not chart.live
    last = timezone.localtime(finished)
    assert chart.label == f"1 succeeded and 1 failed in the hour to {last:%Y-%m-%d %H:%M}"
