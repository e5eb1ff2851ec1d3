"""A request's timeline: what happened to it and when, for its page."""

from __future__ import annotations

from typing import Any

from django.db.models import Count, Max, Min, Q
from django.utils.translation import gettext as _

from generation.models import GenerationJob, GenerationRequest


def request_timeline(request: GenerationRequest) -> list[dict[str, Any]]:
    """What happened to ``request`` and when, oldest first: the page's timeline.

    One aggregate query over the request's jobs (none before it has any), whatever its size.
    """
    entries = [
        ("expansion_started", _("Expansion started"), request.expansion_started_at, ""),
        (
            "expansion_finished",
            _("Expansion finished"),
            request.expansion_finished_at,
            _("%(count)s prompts") % {"count": request.jobs_total} if request.jobs_total else "",
        ),
    ]
    if request.jobs_total:
        succeeded = Q(status=GenerationJob.Status.SUCCEEDED)
        failed = Q(status=GenerationJob.Status.FAILED)
        jobs = GenerationJob.objects.filter(request_id=request.pk).aggregate(
            first_image=Min("finished_at", filter=succeeded),
            last_image=Max("finished_at", filter=succeeded),
            failures=Count("pk", filter=failed),
            last_failure=Max("finished_at", filter=failed),
        )
        entries += [
            ("first_image", _("First image"), jobs["first_image"], ""),
            (
                "last_image",
                _("Last image"),
                jobs["last_image"],
                _("%(count)s in all") % {"count": request.jobs_succeeded},
            ),
            (
                "last_failure",
                _("Last failure"),
                jobs["last_failure"],
                _("%(count)s failed in all") % {"count": jobs["failures"]},
            ),
        ]
    if request.is_terminal:
        entries.append(
            (
                "finished",
                _("Finished: %(status)s") % {"status": request.get_status_display()},
                request.finished_at,
                "",
            )
        )
    # In time order (a failure may come before the first image); ties keep the order above.
    return sorted(
        (
            {"key": key, "label": label, "at": at, "detail": detail}
            for key, label, at, detail in entries
            if at
        ),
        key=lambda entry: entry["at"],
    )
