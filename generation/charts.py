"""A generation request's images per minute, drawn like the job monitor's activity chart."""

from __future__ import annotations

import datetime

from django.db.models import Q
from django.utils import timezone
from django.utils.translation import gettext_lazy

from generation.models import GenerationJob, GenerationRequest
from huey_tasks.charts import ActivityChart, per_minute, window


def request_chart(generation_request, now: datetime.datetime | None = None) -> ActivityChart:
    """A request's images by minute: its jobs that succeeded or failed, by finished_at.

    The hour is the last one while the request is active, else the hour up to its end, so
    a finished request still shows how its images came in."""
    Status = GenerationJob.Status
    now = now or timezone.now()
    live = generation_request.status not in GenerationRequest.TERMINAL or not (
        generation_request.finished_at
    )
    end = now if live else min(generation_request.finished_at, now)
    minutes = per_minute(
        # Filtering on request_id uses the (request, index) unique index, and a request
        # has at most MAX_COUNT jobs.
        GenerationJob.objects.filter(
            request_id=generation_request.pk, status__in=[Status.SUCCEEDED, Status.FAILED]
        ),
        "finished_at",
        succeeded=Q(status=Status.SUCCEEDED),
        failed=Q(status=Status.FAILED),
        end=end,
    )
    return ActivityChart(
        minutes,
        window(end)[-1] + datetime.timedelta(minutes=1),
        noun=gettext_lazy("images"),
        live=live,
    )
