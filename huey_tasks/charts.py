"""Per-minute activity over an hour, as a small server-rendered SVG chart.

Two charts use this: the job monitor's (every task run that succeeded or failed, from the
TaskRun ledger) and, through ``per_minute``, any other model's (a generation request's
images, in ``generation.charts``). Each is one
aggregate query that counts by minute in the database; the minutes with nothing in them are
filled in here, so the query returns at most 60 rows whatever the number of runs.
"""

from __future__ import annotations

import datetime
from collections.abc import Iterable
from dataclasses import dataclass

from django.db.models import Count, Q
from django.db.models.functions import TruncMinute
from django.utils import timezone
from django.utils.text import capfirst
from django.utils.translation import gettext as _
from django.utils.translation import gettext_lazy

MINUTES = 60
UTC = datetime.UTC

# SVG geometry (user units; the SVG scales to the width of its container).
BAR_STEP = 10
BAR_WIDTH = 8
PLOT_HEIGHT = 60
TOP_MARGIN = 2


@dataclass(frozen=True)
class Minute:
    start: datetime.datetime  # aware, UTC, on the minute
    succeeded: int = 0
    failed: int = 0

    @property
    def total(self) -> int:
        return self.succeeded + self.failed


@dataclass(frozen=True)
class ActivityChart:
    """Succeeded and failed per minute, oldest minute first."""

    minutes: list[Minute]
    end: datetime.datetime  # the end of the window, exclusive (the minute after the last)
    noun: str = gettext_lazy("task runs")  # what is counted, for the text alternative
    live: bool = True  # the window ends now ("in the last hour")

    @property
    def succeeded(self) -> int:
        return sum(minute.succeeded for minute in self.minutes)

    @property
    def failed(self) -> int:
        return sum(minute.failed for minute in self.minutes)

    @property
    def start(self) -> datetime.datetime:
        return self.minutes[0].start

    @property
    def peak(self) -> int:
        return max((minute.total for minute in self.minutes), default=0)

    @property
    def period(self) -> str:
        if self.live:
            return _("in the last hour")
        last = timezone.localtime(self.end - datetime.timedelta(minutes=1))
        return _("in the hour to %(time)s") % {"time": f"{last:%Y-%m-%d %H:%M}"}

    @property
    def label(self) -> str:
        """The chart's accessible name: what it shows and its totals."""
        return _("%(succeeded)s succeeded and %(failed)s failed %(period)s") % {
            "succeeded": self.succeeded,
            "failed": self.failed,
            "period": self.period,
        }

    @property
    def title(self) -> str:
        return _("%(what)s per minute: %(label)s") % {
            "what": capfirst(self.noun),
            "label": self.label,
        }

    def bars(self) -> list[dict]:
        """Geometry of the stacked bars: succeeded at the bottom, failed on top."""
        peak = self.peak or 1
        scale = (PLOT_HEIGHT - TOP_MARGIN) / peak
        bars = []
        for position, minute in enumerate(self.minutes):
            if not minute.total:
                continue
            succeeded_height = round(minute.succeeded * scale, 2)
            failed_height = round(minute.failed * scale, 2)
            # A single run in a busy hour is still visible.
            if minute.succeeded:
                succeeded_height = max(succeeded_height, 1)
            if minute.failed:
                failed_height = max(failed_height, 1)
            bars.append(
                {
                    "minute": minute,
                    "x": position * BAR_STEP + (BAR_STEP - BAR_WIDTH) / 2,
                    "succeeded_y": round(PLOT_HEIGHT - succeeded_height, 2),
                    "succeeded_height": succeeded_height,
                    "failed_y": round(PLOT_HEIGHT - succeeded_height - failed_height, 2),
                    "failed_height": failed_height,
                }
            )
        return bars


def window(end: datetime.datetime, minutes: int = MINUTES) -> list[datetime.datetime]:
    """The starts of the ``minutes`` whole minutes up to and including ``end``'s minute."""
    last = end.astimezone(UTC).replace(second=0, microsecond=0)
    return [last - datetime.timedelta(minutes=back) for back in range(minutes - 1, -1, -1)]


def bucket(
    rows: Iterable[tuple[datetime.datetime, int, int]],
    end: datetime.datetime,
    minutes: int = MINUTES,
) -> list[Minute]:
    """Turn the database's (minute, succeeded, failed) rows into one Minute for each minute
    of the window up to ``end``. Minutes without rows get zeros; rows outside are dropped."""
    counts = {}
    for start, succeeded, failed in rows:
        key = start.astimezone(UTC).replace(second=0, microsecond=0)
        previous = counts.get(key, (0, 0))
        counts[key] = (previous[0] + succeeded, previous[1] + failed)
    return [Minute(start, *counts.get(start, (0, 0))) for start in window(end, minutes)]


def per_minute(
    queryset, field: str, succeeded: Q, failed: Q, end: datetime.datetime, minutes: int = MINUTES
) -> list[Minute]:
    """Count ``queryset``'s rows with ``field`` in the window by minute, in one query.

    The caller's queryset should already be narrowed to finished rows (status) so that the
    database can use an index on (status, ``field``) for the time range."""
    starts = window(end, minutes)
    rows = (
        queryset.filter(
            **{
                f"{field}__gte": starts[0],
                f"{field}__lt": starts[-1] + datetime.timedelta(minutes=1),
            }
        )
        .annotate(minute=TruncMinute(field, tzinfo=UTC))
        .order_by()
        .values("minute")
        .annotate(succeeded=Count("pk", filter=succeeded), failed=Count("pk", filter=failed))
        .values_list("minute", "succeeded", "failed")
    )
    return bucket(rows, end, minutes)


def task_runs_chart(now: datetime.datetime | None = None) -> ActivityChart:
    """Every task run that succeeded or failed in the last hour, by minute (the monitor).

    A dead letter counts as a failure. Its task failed for good, in the queue rather than
    in the task itself.
    """
    from huey_tasks.models import TaskRun

    Status = TaskRun.Status
    now = now or timezone.now()
    failed = [Status.FAILED, Status.DEAD]
    minutes = per_minute(
        # status IN (...) AND finished_at in [start, end) uses the taskrun_finished index
        # (status, finished_at), with one range per status.
        TaskRun.objects.filter(status__in=[Status.SUCCEEDED, *failed]),
        "finished_at",
        succeeded=Q(status=Status.SUCCEEDED),
        failed=Q(status__in=failed),
        end=now,
    )
    return ActivityChart(minutes, window(now)[-1] + datetime.timedelta(minutes=1))
