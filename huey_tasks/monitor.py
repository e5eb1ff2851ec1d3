"""What the job monitor shows. Each figure is one query (or one storage call), so the number
of queries does not grow with the data."""

from __future__ import annotations

import datetime
import math
from collections import defaultdict
from dataclasses import dataclass

from django.db.models import Count, Q
from django.utils import timezone
from huey.contrib.djhuey import HUEY

from huey_tasks import maintenance
from huey_tasks.charts import ActivityChart, task_runs_chart
from huey_tasks.models import TaskRun, WorkerHeartbeat

Status = TaskRun.Status
LIVE_WORKER_SECONDS = 30
DURATION_SAMPLE = 5000


@dataclass
class DurationStats:
    task: str
    count: int
    p50: float
    p95: float


def percentile(sorted_values: list[float], fraction: float) -> float:
    index = max(0, math.ceil(fraction * len(sorted_values)) - 1)
    return sorted_values[index]


def task_label(task_name: str, first_arg: str | None = None) -> str:
    """A task's short name for the duration table, naming Wagtail's own task, not Huey's
    shim."""
    return TaskRun(task_name=task_name, args=[first_arg] if first_arg else []).short_name


def headline() -> dict:
    now = timezone.now()
    storage = HUEY.storage
    day_ago, hour_ago = now - datetime.timedelta(hours=24), now - datetime.timedelta(hours=1)
    counts = TaskRun.objects.aggregate(
        retrying=Count("pk", filter=Q(status=Status.RETRYING)),
        waiting=Count("pk", filter=Q(status=Status.RATE_LIMITED)),
    )
    failed_24h = TaskRun.objects.filter(status=Status.FAILED, finished_at__gte=day_ago).count()
    done_hour = TaskRun.objects.filter(status=Status.SUCCEEDED, finished_at__gte=hour_ago).count()
    samples = defaultdict(list)
    names: dict[tuple, str] = {}
    # Only the first argument is read: it names the Wagtail task run through Huey's
    # djtasks.run shim.
    for name, first_arg, duration in (
        TaskRun.objects.filter(status=Status.SUCCEEDED, finished_at__gte=day_ago)
        .exclude(duration=None)
        .order_by("-finished_at")
        .values_list("task_name", "args__0", "duration")[:DURATION_SAMPLE]
    ):
        key = (name, first_arg if isinstance(first_arg, str) else None)
        if key not in names:
            names[key] = task_label(*key)
        samples[names[key]].append(duration)
    durations = [
        DurationStats(name, len(values), percentile(values, 0.5), percentile(values, 0.95))
        for name, values in sorted(samples.items())
        for values in [sorted(values)]
    ]
    workers = list(
        WorkerHeartbeat.objects.filter(
            stopped_at=None, last_seen__gte=now - datetime.timedelta(seconds=LIVE_WORKER_SECONDS)
        )
    )
    return {
        "queued": storage.queue_size(),
        "scheduled": storage.schedule_size(),
        "running": storage.leased_count(),
        "retrying": counts["retrying"],
        "waiting": counts["waiting"],
        "failed_24h": failed_24h,
        "dead_letters": storage.dead_letter_count(),
        "throughput_per_minute": done_hour / 60,
        "durations": durations,
        "workers": workers,
        "maintenance": last_maintenance(),
    }


def activity() -> ActivityChart:
    """Task runs succeeded and failed per minute over the last hour (one query)."""
    return task_runs_chart()


def last_maintenance() -> dict | None:
    """What the last maintenance run repaired (kept in the queue storage)."""
    result = maintenance.last_result(HUEY)
    if result:
        result = {
            **result,
            "finished_at": datetime.datetime.fromtimestamp(result["finished_at"], tz=datetime.UTC),
        }
    return result
