"""The job monitor in the Wagtail admin: /admin/job-monitor/."""

from __future__ import annotations

from django.contrib import messages
from django.core.exceptions import PermissionDenied
from django.core.paginator import Paginator
from django.http import Http404
from django.shortcuts import get_object_or_404, redirect
from django.urls import reverse
from django.views.generic import TemplateView
from huey.contrib.djhuey import HUEY
from wagtail.admin.views.generic import WagtailAdminTemplateMixin
from wagtail.admin.views.generic.permissions import PermissionCheckedMixin
from wagtail.permission_policies import ModelPermissionPolicy

from generation import actions as request_actions
from generation import costs, services
from generation.models import GenerationJob, GenerationRequest
from huey_tasks.filters import TaskRunFilterSet
from huey_tasks.models import TaskRun
from huey_tasks.monitor import activity, headline, recent_requests
from huey_tasks.tasks import queue_jobs

permission_policy = ModelPermissionPolicy(TaskRun)
# Actions that may call a paid provider also need to be allowed to change requests.
spending_policy = ModelPermissionPolicy(GenerationRequest)
GENERATION_TASKS = {"generate_image", "expand_prompt"}
Status = TaskRun.Status
RETRYABLE = {Status.FAILED, Status.DEAD, Status.CANCELLED, Status.REVOKED, Status.EXPIRED}
REVOCABLE = {Status.QUEUED, Status.RETRYING, Status.RATE_LIMITED}
RUNS_PER_PAGE = 50


def spends_money(run: TaskRun) -> bool:
    """Retrying this run may call a paid provider."""
    return bool(run.generation_job_id or run.generation_request_id) or (
        run.short_name in GENERATION_TASKS
    )


class MonitorMixin(PermissionCheckedMixin, WagtailAdminTemplateMixin):
    permission_policy = permission_policy
    permission_required = "view"
    header_icon = "tasks"

    def can_change(self) -> bool:
        return permission_policy.user_has_permission(self.request.user, "change")

    def can_spend(self) -> bool:
        return self.can_change() and spending_policy.user_has_permission(
            self.request.user, "change"
        )

    def get_breadcrumbs_items(self):
        items = list(self.breadcrumbs_items)
        if not isinstance(self, MonitorView):
            items.append({"url": reverse("job_monitor:index"), "label": "Job monitor"})
        return items + [{"url": "", "label": self.get_page_title()}]


class MonitorView(MonitorMixin, TemplateView):
    template_name = "huey_tasks/monitor.html"
    page_title = "Job monitor"

    def get_context_data(self, **kwargs):
        context = super().get_context_data(**kwargs)
        filters = TaskRunFilterSet(self.request.GET or None, queryset=TaskRun.objects.all())
        runs = filters.qs if filters.is_bound and filters.is_valid() else TaskRun.objects.all()
        page = Paginator(
            runs.only(
                "pk",
                "task_name",
                "task_id",
                "status",
                "attempts",
                "deliveries",
                "enqueued_at",
                "duration",
                "worker_host",
                "worker_pid",
                "error_message",
                "generation_request_id",
                "generation_job_id",
                "args",
            ),
            RUNS_PER_PAGE,
        ).get_page(self.request.GET.get("p"))
        query = self.request.GET.copy()
        query.pop("p", None)
        context.update(
            stats=headline(),
            activity=activity(),
            requests=recent_requests(),
            filters=filters,
            page=page,
            query=query.urlencode(),
            can_change=self.can_change(),
            live_url=reverse("job_monitor:live"),
        )
        return context


class LiveView(MonitorMixin, TemplateView):
    """The self-refreshing part of the monitor (headline and requests), for w-swap."""

    template_name = "huey_tasks/monitor_live.html"

    def get_context_data(self, **kwargs):
        context = super().get_context_data(**kwargs)
        context.update(stats=headline(), activity=activity(), requests=recent_requests())
        return context


class RunDetailView(MonitorMixin, TemplateView):
    template_name = "huey_tasks/run_detail.html"
    page_title = "Task run"

    def get_context_data(self, **kwargs):
        context = super().get_context_data(**kwargs)
        run = get_object_or_404(
            TaskRun.objects.select_related("generation_request", "generation_job__image"),
            pk=kwargs["pk"],
        )
        context.update(
            run=run,
            can_change=self.can_change(),
            can_retry=run.status in RETRYABLE and (not spends_money(run) or self.can_spend()),
            can_revoke=run.status in REVOCABLE,
        )
        return context

    def get_page_subtitle(self):
        return self.kwargs["pk"]


class ActionView(MonitorMixin, TemplateView):
    """GET asks for confirmation; POST (CSRF-checked) acts and returns to the monitor."""

    permission_required = "change"
    template_name = "huey_tasks/confirm.html"
    confirmation = ""

    def get_context_data(self, **kwargs):
        context = super().get_context_data(**kwargs)
        context.update(confirmation=self.get_confirmation(), back_url=self.back_url())
        return context

    def get_confirmation(self) -> str:
        return self.confirmation

    def back_url(self) -> str:
        return reverse("job_monitor:index")

    spends = False  # True: the action may call a paid provider

    def check_spending(self) -> bool:
        return not self.spends_money() or self.can_spend()

    def spends_money(self) -> bool:
        return self.spends

    def get(self, request, *args, **kwargs):
        if not self.check_spending():
            raise PermissionDenied
        return super().get(request, *args, **kwargs)

    def post(self, request, *args, **kwargs):
        if not self.check_spending():
            raise PermissionDenied
        message, ok = self.perform()
        (messages.success if ok else messages.error)(request, message)
        return redirect(self.back_url())

    def perform(self) -> tuple[str, bool]:
        raise NotImplementedError


class RunActionView(ActionView):
    def setup(self, request, *args, **kwargs):
        super().setup(request, *args, **kwargs)
        self.run = get_object_or_404(TaskRun, pk=kwargs["pk"])

    def back_url(self):
        return reverse("job_monitor:run", args=[self.run.pk])


class RetryRunView(RunActionView):
    page_title = "Retry task"

    def spends_money(self):
        return spends_money(self.run)

    def get_confirmation(self):
        return f"Run {self.run.short_name} {self.run.task_id} again?"

    def perform(self):
        run = self.run
        if run.status not in RETRYABLE:
            return f"A {run.get_status_display().lower()} run cannot be retried.", False
        if run.generation_job_id:
            job = (
                GenerationJob.objects.select_related("request")
                .filter(pk=run.generation_job_id)
                .first()
            )
            if job is not None and job.status == GenerationJob.Status.SUCCEEDED:
                return "Its job has succeeded since; nothing to retry.", False
            if job is None or job.status not in GenerationJob.TERMINAL:
                return "Its job is not finished, so there is nothing to retry.", False
            with costs.budget_lock():
                job.request.refresh_from_db()  # its spend as it is now, under the lock
                if error := request_actions.one_more_image_error(job.request):
                    return error, False
                if not services.regenerate_job(job):
                    return "Its job changed meanwhile; nothing was retried.", False
            queue_jobs([job.pk])
            return f"Job #{job.index + 1} of request #{job.request_id} queued again.", True
        if run.short_name == "expand_prompt":
            generation_request = GenerationRequest.objects.filter(
                pk=run.generation_request_id
            ).first()
            if generation_request is None:
                return "Its request no longer exists.", False
            message, error = request_actions.run(
                request_actions.ACTIONS["generate"], generation_request
            )
            if error:
                return error, False
            return (message, True) if message else ("The request has prompts already.", False)
        # Only scalar arguments are stored verbatim; others were shown as redacted text.
        if not all(isinstance(a, int | float | bool) or a is None for a in run.args):
            return "Its arguments are not stored verbatim, so it cannot be re-run here.", False
        try:
            task_class = HUEY._registry.string_to_task(run.task_name)
        except Exception:
            return f"Unknown task {run.task_name}.", False
        HUEY.enqueue(task_class(tuple(run.args), {}))
        return f"{run.short_name} queued again.", True


class RevokeRunView(RunActionView):
    page_title = "Revoke task"

    def get_confirmation(self):
        return f"Revoke {self.run.short_name} {self.run.task_id}? It will not run."

    def perform(self):
        run = self.run
        if run.status not in REVOCABLE:
            return f"A {run.get_status_display().lower()} run cannot be revoked.", False
        current = (
            run.generation_job_id
            and GenerationJob.objects.filter(pk=run.generation_job_id, task_id=run.task_id).exists()
        )
        # A run still shown queued or waiting may have started: a worker holding its job's
        # claim (or writing its request's prompts) is past Huey's revoke check.
        if current and services.call_in_flight(run.generation_job_id) or self.expanding():
            return self.in_flight(), False
        HUEY.revoke_by_id(run.task_id)
        if self.expanding():  # started between the check and the revoke
            HUEY.restore_by_id(run.task_id)
            return self.in_flight(), False
        if current:
            # Only the job's current run, and not while a worker holds it (its call
            # finishes, like a cancel's).
            cancelled = services.finish_job(
                run.generation_job_id,
                GenerationJob.Status.CANCELLED,
                error="revoked from the job monitor",
                unclaimed_only=True,
            )
            if not cancelled and services.call_in_flight(run.generation_job_id):
                # A worker claimed it between the check and the cancel: Huey clears the
                # flag after that execution anyway, so the run is not revoked at all.
                HUEY.restore_by_id(run.task_id)
                return self.in_flight(), False
        TaskRun.objects.filter(pk=run.pk).update(status=Status.REVOKED)
        return f"{run.short_name} {run.task_id} revoked.", True

    def expanding(self) -> bool:
        return (
            self.run.short_name == "expand_prompt"
            and GenerationRequest.objects.filter(
                pk=self.run.generation_request_id, status=GenerationRequest.Status.EXPANDING
            ).exists()
        )

    def in_flight(self) -> str:
        return (
            f"{self.run.short_name} {self.run.task_id} cannot be revoked: it is under way "
            "(its provider call in flight, or its prompts being written). Cancelling its "
            "request stops any further attempt."
        )


class RetryRequestFailedView(ActionView):
    page_title = "Retry failed jobs"
    spends = True

    def setup(self, request, *args, **kwargs):
        super().setup(request, *args, **kwargs)
        self.generation_request = get_object_or_404(GenerationRequest, pk=kwargs["pk"])

    def get_confirmation(self):
        return (
            f"Retry all {self.generation_request.jobs_failed} failed jobs of "
            f"“{self.generation_request}”?"
        )

    def perform(self):
        # The request page's action, with its checks: budgets, a deleted source, cancelled.
        message, error = request_actions.run(
            request_actions.ACTIONS["retry_failed"], self.generation_request
        )
        if error:
            return error, False
        return (message, True) if message else ("This request has no failed jobs to retry.", False)


class DeadLettersView(MonitorMixin, TemplateView):
    template_name = "huey_tasks/dead_letters.html"
    page_title = "Dead letters"

    def get_context_data(self, **kwargs):
        context = super().get_context_data(**kwargs)
        letters = []
        for letter in HUEY.storage.dead_letters(limit=200):
            try:
                task = HUEY.deserialize_task(letter.data)
                name, task_id = task.name.rsplit(".", 1)[-1], task.id
            except Exception as exc:
                name, task_id = f"(undecodable: {exc.__class__.__name__})", ""
            letters.append({"letter": letter, "name": name, "task_id": task_id})
        context.update(
            letters=letters,
            total=HUEY.storage.dead_letter_count(),
            can_change=self.can_change(),
            can_requeue=self.can_spend(),
        )
        return context


class DeadLetterActionView(ActionView):
    """requeue/purge one dead letter (``message_id``) or all of them."""

    def setup(self, request, *args, **kwargs):
        super().setup(request, *args, **kwargs)
        if kwargs["action"] not in ("requeue", "purge"):
            raise Http404
        self.action = kwargs["action"]
        self.message_id = kwargs.get("message_id")

    def get_page_title(self):
        return f"{self.action.capitalize()} dead letters"

    def spends_money(self):
        return self.action == "requeue"

    def back_url(self):
        return reverse("job_monitor:dead_letters")

    def get_confirmation(self):
        target = "this dead letter" if self.message_id else "every dead letter"
        if self.action == "requeue":
            return f"Put {target} back on the queue with a fresh delivery count?"
        return f"Delete {target} for good?"

    def perform(self):
        storage = HUEY.storage
        ids = (
            [self.message_id]
            if self.message_id
            else [letter.message_id for letter in storage.dead_letters()]
        )
        if self.action == "requeue":
            letters = [letter for letter in storage.dead_letters() if letter.message_id in ids]
            outcomes = [self.requeue(letter) for letter in letters]
            done = sum(1 for outcome in outcomes if outcome is True)
            refused = [outcome for outcome in outcomes if isinstance(outcome, str)]
            message = f"{done} dead letters requeued."
            if refused:
                message += f" {len(refused)} kept, as they would pay for more: {refused[0]}"
            return message, bool(done)
        done = storage.purge_dead_letters(ids)
        return f"{done} dead letters purged.", bool(done)

    @staticmethod
    def requeue(letter) -> bool | str:
        """Reopen what the dead letter had failed, then put its message back.

        A failed job or expansion reopened is paid work again, checked against the budgets
        like any retry: over them, the letter stays and the reason is returned."""
        try:
            task = HUEY.deserialize_task(letter.data)
        except Exception:
            task = None
        if task is None or not task.args or not isinstance(task.args[0], int):
            return HUEY.requeue_dead_letter(letter)
        name = task.name.rsplit(".", 1)[-1]
        with costs.budget_lock():
            if name == "generate_image":
                job = (
                    GenerationJob.objects.select_related("request").filter(pk=task.args[0]).first()
                )
                if job is not None and job.status == GenerationJob.Status.FAILED:
                    if error := request_actions.one_more_image_error(job.request):
                        return error
                    services.reopen_job(job.pk)
            elif name == "expand_prompt":
                request = GenerationRequest.objects.filter(pk=task.args[0]).first()
                if request is not None and request.status == GenerationRequest.Status.FAILED:
                    if error := request_actions.cannot_spend(request) or costs.budget_error(
                        request.count, request.image_model, exclude_pk=request.pk
                    ):
                        return error
                    services.reopen_request(request.pk)
        return HUEY.requeue_dead_letter(letter)
