"""What the job monitor is told about the pipeline (see ``huey_tasks.registry``).

The pipeline's two tasks link their runs to requests and jobs, and retrying, revoking or
requeueing them goes through the same checks as the request page's actions: budgets, a
deleted source, a cancelled request, a call in flight. The monitor's live part gets the
spend and the requests in flight; a run's page gets its request, prompt and image.
"""

from __future__ import annotations

import datetime

from django.db.models import Case, Q, Value, When
from django.shortcuts import get_object_or_404
from django.urls import path, reverse
from django.utils import timezone
from django.utils.translation import gettext as _
from django.utils.translation import gettext_lazy
from wagtail.permission_policies import ModelPermissionPolicy

from generation import actions, costs, services
from generation.models import GenerationJob, GenerationRequest
from generation.tasks import queue_jobs
from huey_tasks.registry import (
    MonitorSection,
    Outcome,
    TaskKind,
    register_content_permission,
    register_live_section,
    register_run_section,
    register_spending_permission,
    register_task,
    register_urls,
)
from huey_tasks.views import ActionView

request_policy = ModelPermissionPolicy(GenerationRequest)


def _short_name(task) -> str:
    return task.name.rsplit(".", 1)[-1]


# Ledger links -----------------------------------------------------------------------------
def expansion_links(tasks: list) -> dict[str, dict]:
    return {task.id: {"generation_request_id": task.args[0]} for task in tasks if task.args}


def call_links(tasks: list) -> dict[str, dict]:
    """Link each LLM call's run to its request; the task's arguments are (call, request)."""
    return {
        task.id: {"generation_request_id": task.args[1]} for task in tasks if len(task.args) > 1
    }


def image_links(tasks: list) -> dict[str, dict]:
    """Each run's job and its request, in one query per batch."""
    job_ids = {task.id: task.args[0] for task in tasks if task.args}
    if not job_ids:
        return {}
    requests = dict(
        GenerationJob.objects.filter(pk__in=job_ids.values()).values_list("pk", "request_id")
    )
    return {
        task_id: {"generation_job_id": job_id, "generation_request_id": requests.get(job_id)}
        for task_id, job_id in job_ids.items()
    }


def request_subject(run) -> tuple[str, str] | None:
    if not run.generation_request_id:
        return None
    url = reverse(
        "wagtailsnippets_generation_generationrequest:inspect", args=[run.generation_request_id]
    )
    return f"#{run.generation_request_id}", url


# Retry ------------------------------------------------------------------------------------
def retry_image(run) -> Outcome:
    job = GenerationJob.objects.select_related("request").filter(pk=run.generation_job_id).first()
    if job is not None and job.status == GenerationJob.Status.SUCCEEDED:
        return _("Its job has succeeded since; nothing to retry."), False
    if job is None or job.status not in GenerationJob.TERMINAL:
        return _("Its job is not finished, so there is nothing to retry."), False
    with costs.budget_lock():
        job.request.refresh_from_db()  # its spend as it is now, under the lock
        if error := actions.one_more_image_error(job.request):
            return error, False
        if not services.regenerate_job(job):
            return _("Its job changed meanwhile; nothing was retried."), False
    queue_jobs([job.pk])
    return _("Job #%(number)s of request #%(request)s queued again.") % {
        "number": job.index + 1,
        "request": job.request_id,
    }, True


def retry_expansion(run) -> Outcome:
    generation_request = GenerationRequest.objects.filter(pk=run.generation_request_id).first()
    if generation_request is None:
        return _("Its request no longer exists."), False
    message, error = actions.run(actions.ACTIONS["generate"], generation_request)
    if error:
        return error, False
    return (message, True) if message else (_("The request has prompts already."), False)


class RetryRequestFailedView(ActionView):
    """The monitor's "Retry failed" for a request in flight. It is the request page's
    action, with the same checks (budgets, a deleted source, a cancelled request)."""

    page_title = gettext_lazy("Retry failed jobs")
    spends = True

    def setup(self, request, *args, **kwargs):
        super().setup(request, *args, **kwargs)
        self.generation_request = get_object_or_404(GenerationRequest, pk=kwargs["pk"])

    def get_confirmation(self):
        return _("Retry all %(count)s failed jobs of “%(request)s”?") % {
            "count": self.generation_request.jobs_failed,
            "request": self.generation_request,
        }

    def perform(self) -> Outcome:
        message, error = actions.run(actions.ACTIONS["retry_failed"], self.generation_request)
        if error:
            return error, False
        if not message:
            return _("This request has no failed jobs to retry."), False
        return message, True


# Revoke -----------------------------------------------------------------------------------
UNDER_WAY = gettext_lazy(
    "%(name)s %(task_id)s cannot be revoked: it is under way (its provider call in flight, "
    "or its prompts being written). Cancelling its request stops any further attempt."
)


def _current_job_run(run) -> bool:
    return (
        bool(run.generation_job_id)
        and GenerationJob.objects.filter(pk=run.generation_job_id, task_id=run.task_id).exists()
    )


def _under_way(run) -> str:
    return str(UNDER_WAY) % {"name": run.short_name, "task_id": run.task_id}


def image_revoke_refusal(run) -> str:
    # A run still shown queued or waiting may have started, since a worker holding its
    # job's claim is already past Huey's revoke check.
    if _current_job_run(run) and services.call_in_flight(run.generation_job_id):
        return _under_way(run)
    return ""


def image_revoked(run) -> str:
    if not _current_job_run(run):
        return ""
    # Cancel the job only for its current run, and not while a worker holds it. A held
    # job's call finishes, as it does after a cancel.
    cancelled = services.finish_unclaimed_job(
        run.generation_job_id,
        GenerationJob.Status.CANCELLED,
        error="revoked from the job monitor",
    )
    if not cancelled and services.call_in_flight(run.generation_job_id):
        # A worker claimed it between the check and the cancel: Huey clears the flag after
        # that execution anyway, so the run is not revoked at all.
        return _under_way(run)
    return ""


def expansion_revoke_refusal(run) -> str:
    expanding = GenerationRequest.objects.filter(
        pk=run.generation_request_id, status=GenerationRequest.Status.EXPANDING
    ).exists()
    return _under_way(run) if expanding else ""


def call_revoke_refusal(run) -> str:
    return _(
        "%(name)s %(task_id)s is one LLM call of an expansion and is not revoked alone: "
        "cancel its request to stop the expansion."
    ) % {"name": run.short_name, "task_id": run.task_id}


def retry_call(run) -> Outcome:
    return (
        _(
            "An LLM call is retried with its expansion: use Generate or Retry failed on its "
            "request."
        ),
        False,
    )


def expansion_revoked(run) -> str:
    """Refuse if the expansion started between the check and the revoke.

    Otherwise end its request, which is left queued with no message, because maintenance
    would restart the expansion the editor revoked."""
    if refusal := expansion_revoke_refusal(run):
        return refusal
    if run.generation_request_id:
        services.cancel_queued_expansion(run.generation_request_id, "revoked from the job monitor")
    return ""


# Dead letters -----------------------------------------------------------------------------
def requeue_image(task) -> str:
    """A reopened failed job is paid work again, so it is checked against the budgets."""
    with costs.budget_lock():
        job = GenerationJob.objects.select_related("request").filter(pk=task.args[0]).first()
        if job is not None and job.status == GenerationJob.Status.FAILED:
            if error := actions.one_more_image_error(job.request):
                return error
            services.reopen_job(job.pk)
    return ""


def requeue_expansion(task) -> str:
    with costs.budget_lock():
        request = GenerationRequest.objects.filter(pk=task.args[0]).first()
        if request is not None and request.status == GenerationRequest.Status.FAILED:
            if error := actions.cannot_spend(request) or costs.budget_error(
                request.count, request.image_model, exclude_pk=request.pk
            ):
                return error
            services.reopen_request(request.pk)
    return ""


# Permissions ------------------------------------------------------------------------------
def may_change_requests(user) -> bool:
    return request_policy.user_has_permission(user, "change")


def may_view_requests(user) -> bool:
    """Whoever may open a request's page (Wagtail allows any permission on requests) may
    see the themes, prompts, images and spend the monitor shows beside the runs. The
    permissions on task runs alone show the queue's own figures and nothing of the domain."""
    return request_policy.user_has_any_permission(user, ["add", "change", "delete", "view"])


# Monitor sections -------------------------------------------------------------------------


def recent_requests(limit: int = 10) -> list[GenerationRequest]:
    """Requests in flight first, then those finished in the last hour (one query)."""
    hour_ago = timezone.now() - datetime.timedelta(hours=1)
    in_flight = Q(status__in=GenerationRequest.ACTIVE)
    return list(
        GenerationRequest.objects.filter(
            in_flight | Q(status__in=GenerationRequest.TERMINAL, finished_at__gte=hour_ago)
        )
        .annotate(in_flight=Case(When(in_flight, then=Value(0)), default=Value(1)))
        .order_by("in_flight", "-created_at")[:limit]
    )


def spend_context() -> dict:
    # Image spend today and this month, booked by request (generation/costs.py).
    return {"spend": costs.spend_summary(timezone.now())}


def requests_context() -> dict:
    return {"requests": recent_requests()}


def run_context(run) -> dict:
    """The request, prompt and image a run belongs to (two queries at most)."""
    job = None
    if run.generation_job_id:
        job = GenerationJob.objects.select_related("image").filter(pk=run.generation_job_id).first()
    generation_request = None
    if run.generation_request_id:
        generation_request = GenerationRequest.objects.filter(pk=run.generation_request_id).first()
    return {"generation_request": generation_request, "job": job}


def register() -> None:
    """Called once from ``GenerationConfig.ready``."""
    # Retrying or revoking a run changes its job or request (a revoke cancels them), so it
    # needs the change permission on requests, as the request page's actions do.
    register_task(
        TaskKind(
            "generate_image",
            links=image_links,
            subject=request_subject,
            spends_money=True,
            retry=retry_image,
            revoke_refusal=image_revoke_refusal,
            revoked=image_revoked,
            requeue=requeue_image,
            may_act=may_change_requests,
        )
    )
    register_task(
        TaskKind(
            "expand_prompt",
            links=expansion_links,
            subject=request_subject,
            spends_money=True,
            retry=retry_expansion,
            revoke_refusal=expansion_revoke_refusal,
            revoked=expansion_revoked,
            requeue=requeue_expansion,
            may_act=may_change_requests,
        )
    )
    register_task(
        TaskKind(
            "expand_call",
            links=call_links,
            subject=request_subject,
            spends_money=True,
            retry=retry_call,
            revoke_refusal=call_revoke_refusal,
            may_act=may_change_requests,
        )
    )
    register_spending_permission(may_change_requests)
    register_content_permission(may_view_requests)
    register_live_section(
        MonitorSection(
            "generation/monitor/spend.html", spend_context, shown_to=may_view_requests, order=10
        )
    )
    register_live_section(
        MonitorSection(
            "generation/monitor/requests.html",
            requests_context,
            shown_to=may_view_requests,
            order=200,
        )
    )
    register_run_section(
        MonitorSection("generation/monitor/run.html", run_context, shown_to=may_view_requests)
    )
    register_urls(
        path(
            "requests/<int:pk>/retry-failed/",
            RetryRequestFailedView.as_view(),
            name="request_retry_failed",
        )
    )
