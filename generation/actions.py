"""What editors can do to a request. Views call these; they enqueue through huey_tasks."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

from django.db import transaction
from django.utils.translation import gettext as _
from django.utils.translation import gettext_lazy
from huey.contrib.djhuey import HUEY

from generation import costs, services
from generation.models import GenerationJob, GenerationRequest
from generation.tasks import expand_prompt, queue_jobs

Job = GenerationJob.Status
Req = GenerationRequest.Status


@dataclass(frozen=True)
class Action:
    name: str
    label: str
    icon: str
    confirmation: str
    allowed: Callable[[GenerationRequest], bool]
    perform: Callable[[GenerationRequest], str]
    # Why starting this paid work would break a budget (costs.budget_error), or None.
    over_budget: Callable[[GenerationRequest], str | None] = lambda request: None
    spends: bool = True  # starts paid work (cancel does not)


def run(action: Action, request: GenerationRequest) -> tuple[str, str | None]:
    """Perform the action after its budget check, under one lock.

    Returns (message, budget error). An empty message means the request changed in the
    meantime and nothing was done."""
    if not action.spends:
        request.refresh_from_db()
        return (action.perform(request) if action.allowed(request) else ""), None
    with costs.budget_lock():
        # Check and start the request as its row is now: an edit or a worker may have
        # changed it.
        request.refresh_from_db()
        if error := cannot_spend(request):
            return "", error
        if not action.allowed(request):
            return "", None
        if error := action.over_budget(request):
            return "", error
        return action.perform(request), None


def one_more_image_error(request: GenerationRequest) -> str | None:
    """Why one more paid image of ``request`` (a regeneration, a retried job) may not start.

    Call it under ``costs.budget_lock()`` with the request as it is now."""
    return cannot_spend(request) or costs.budget_error(1, request.image_model, request=request)


def cannot_spend(request: GenerationRequest) -> str | None:
    """Why no more paid work may start for this request, beyond budgets."""
    if request.status == Req.CANCELLED:
        return _("This request was cancelled, so nothing of it runs again. Copy it to start anew.")
    if request.source_deleted:
        return _(
            "Its source image was deleted, so it can make no more variations. "
            "Start a new request from another image."
        )
    return None


def has_pending_jobs(request: GenerationRequest) -> bool:
    # The request listing (RequestIndexView) annotates every row at once, saving a query
    # per row.
    annotated = getattr(request, "pending_jobs_exist", None)
    if annotated is not None:
        return annotated
    return request.jobs.filter(status=Job.PENDING).exists()


def generate(request: GenerationRequest) -> str:
    if not services.start_request(request):
        return ""
    # After commit, so the worker finds the request queued.
    transaction.on_commit(lambda: expand_prompt(request.pk))
    return _("Writing %(count)s prompts for “%(request)s”.") % {
        "count": request.count,
        "request": request,
    }


def generate_pending(request: GenerationRequest) -> str:
    ids = list(request.jobs.filter(status=Job.PENDING).values_list("pk", flat=True))
    transaction.on_commit(lambda: queue_jobs(ids))
    return _("Generating %(count)s pending prompts.") % {"count": len(ids)}


def cancel(request: GenerationRequest) -> str:
    task_ids = services.cancel_request(request)
    for task_id in task_ids:
        HUEY.revoke_by_id(task_id)
    return _("Cancelled “%(request)s”; %(count)s queued jobs revoked, running ones finish.") % {
        "request": request,
        "count": len(task_ids),
    }


def retry_failed(request: GenerationRequest) -> str:
    ids = services.reset_failed_jobs(request)
    transaction.on_commit(lambda: queue_jobs(ids))
    return _("Retrying %(count)s failed jobs.") % {"count": len(ids)}


ACTIONS = {
    action.name: action
    for action in [
        Action(
            "generate",
            gettext_lazy("Generate"),
            "resubmit",
            gettext_lazy(
                "Ask the LLM for %(count)s prompts and, with auto-generate on, generate the images?"
            ),
            lambda r: r.status in (Req.DRAFT, Req.FAILED) and r.jobs_total == 0,
            generate,
            # A budget may have been set after the draft was saved, or this month's spend
            # may have grown since.
            lambda r: costs.budget_error(r.count, r.image_model, exclude_pk=r.pk),
        ),
        Action(
            "generate_pending",
            gettext_lazy("Generate pending prompts"),
            "image",
            gettext_lazy("Generate an image for every pending prompt?"),
            lambda r: r.status != Req.CANCELLED and has_pending_jobs(r),
            generate_pending,
        ),
        Action(
            "cancel",
            gettext_lazy("Cancel"),
            "cross",
            gettext_lazy(
                "Cancel this request? Pending and queued jobs are revoked; running ones finish."
            ),
            lambda r: (
                r.status in GenerationRequest.ACTIVE or (r.status == Req.DRAFT and r.jobs_total > 0)
            ),
            cancel,
            spends=False,
        ),
        Action(
            "retry_failed",
            gettext_lazy("Retry failed jobs"),
            "rotate",
            gettext_lazy("Run every failed job of this request again?"),
            lambda r: r.jobs_failed > 0 and r.status != Req.CANCELLED,  # cancelled is final
            retry_failed,
            # Each failed job is paid for again.
            lambda r: costs.budget_error(r.jobs_failed, r.image_model, request=r),
        ),
    ]
}


def generate_job(job: GenerationJob) -> str:
    """Generate a pending prompt, or regenerate a finished one with a new seed."""
    if job.status != Job.PENDING and not services.regenerate_job(job):
        return ""
    transaction.on_commit(lambda: queue_jobs([job.pk]))
    return _("Generating prompt #%(number)s.") % {"number": job.index + 1}
