"""The job monitor in the Wagtail admin: /admin/job-monitor/."""

from __future__ import annotations

from django.contrib import messages
from django.core.exceptions import PermissionDenied
from django.core.paginator import Paginator
from django.http import Http404
from django.shortcuts import get_object_or_404, redirect
from django.template.loader import render_to_string
from django.urls import reverse
from django.utils.translation import gettext as _
from django.utils.translation import gettext_lazy
from django.views.generic import TemplateView
from huey.contrib.djhuey import HUEY
from wagtail.admin.views.generic import WagtailAdminTemplateMixin
from wagtail.admin.views.generic.permissions import PermissionCheckedMixin
from wagtail.permission_policies import ModelPermissionPolicy

from huey_tasks import registry
from huey_tasks.filters import TaskRunFilterSet
from huey_tasks.models import TaskRun
from huey_tasks.monitor import activity, headline

permission_policy = ModelPermissionPolicy(TaskRun)
Status = TaskRun.Status
RETRYABLE = {Status.FAILED, Status.DEAD, Status.CANCELLED, Status.REVOKED, Status.EXPIRED}
REVOCABLE = {Status.QUEUED, Status.RETRYING, Status.RATE_LIMITED}
RUNS_PER_PAGE = 50
# Registered sections below this order come before the queue's figures, the rest after.
SECTIONS_SPLIT = 100


def spends_money(run: TaskRun) -> bool:
    """Retrying this run may call a paid provider."""
    return registry.task_kind(run.short_name).spends_money


def live_context(request) -> dict:
    """The self-refreshing part: the queue's figures and the registered sections."""
    sections = [
        (section.order, render_to_string(section.template, section.context(), request=request))
        for section in registry.live_sections(request.user)
    ]
    return {
        "stats": headline(),
        "activity": activity(),
        "sections_before": [html for order, html in sections if order < SECTIONS_SPLIT],
        "sections_after": [html for order, html in sections if order >= SECTIONS_SPLIT],
    }


class MonitorMixin(PermissionCheckedMixin, WagtailAdminTemplateMixin):
    permission_policy = permission_policy
    permission_required = "view"
    header_icon = "tasks"

    def can_change(self) -> bool:
        return permission_policy.user_has_permission(self.request.user, "change")

    def can_spend(self) -> bool:
        return self.can_change() and registry.may_spend(self.request.user)

    def get_breadcrumbs_items(self):
        items = list(self.breadcrumbs_items)
        if not isinstance(self, MonitorView):
            items.append({"url": reverse("job_monitor:index"), "label": _("Job monitor")})
        return items + [{"url": "", "label": self.get_page_title()}]


class MonitorView(MonitorMixin, TemplateView):
    template_name = "huey_tasks/monitor.html"
    page_title = gettext_lazy("Job monitor")

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
        # The subject names what the run is for, so only those who may see content see it.
        show_subjects = registry.may_see_content(self.request.user)
        for run in page:
            subject = registry.task_kind(run.short_name).subject
            run.subject = subject(run) if subject and show_subjects else None
        query = self.request.GET.copy()
        query.pop("p", None)
        context.update(
            **live_context(self.request),
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
        context.update(live_context(self.request))
        return context


class RunDetailView(MonitorMixin, TemplateView):
    template_name = "huey_tasks/run_detail.html"
    page_title = gettext_lazy("Task run")

    def get_context_data(self, **kwargs):
        context = super().get_context_data(**kwargs)
        run = get_object_or_404(TaskRun, pk=kwargs["pk"])
        may_act = registry.task_kind(run.short_name).allows_actions(self.request.user)
        context.update(
            run=run,
            run_sections=[
                render_to_string(section.template, section.context(run), request=self.request)
                for section in registry.run_sections(self.request.user)
            ],
            can_change=self.can_change(),
            can_retry=run.status in RETRYABLE
            and may_act
            and (not spends_money(run) or self.can_spend()),
            can_revoke=run.status in REVOCABLE and may_act,
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

    spends = False  # True when the action may call a paid provider

    def permitted(self) -> bool:
        """An action that may spend money also needs the spending permission, on top of
        the change permission on task runs that permission_required asks for."""
        return not self.spends_money() or self.can_spend()

    def spends_money(self) -> bool:
        return self.spends

    def get(self, request, *args, **kwargs):
        if not self.permitted():
            raise PermissionDenied
        return super().get(request, *args, **kwargs)

    def post(self, request, *args, **kwargs):
        if not self.permitted():
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

    def permitted(self) -> bool:
        # The run's task may also ask more of those who retry or revoke it. The pipeline's
        # tasks ask for permission to change their request, as the request page's actions do.
        kind = registry.task_kind(self.run.short_name)
        return super().permitted() and kind.allows_actions(self.request.user)


class RetryRunView(RunActionView):
    page_title = gettext_lazy("Retry task")

    def spends_money(self):
        return spends_money(self.run)

    def get_confirmation(self):
        return _("Run %(task)s %(task_id)s again?") % {
            "task": self.run.short_name,
            "task_id": self.run.task_id,
        }

    def perform(self):
        run = self.run
        if run.status not in RETRYABLE:
            return _("A run that is “%(status)s” cannot be retried.") % {
                "status": run.get_status_display()
            }, False
        kind = registry.task_kind(run.short_name)
        if kind.retry is not None:
            return kind.retry(run)
        # Only scalar arguments are stored verbatim; others were shown as redacted text.
        if not all(isinstance(a, int | float | bool) or a is None for a in run.args):
            return _("Its arguments are not stored verbatim, so it cannot be re-run here."), False
        try:
            task_class = HUEY._registry.string_to_task(run.task_name)
        except Exception:
            return _("Unknown task %(task)s.") % {"task": run.task_name}, False
        HUEY.enqueue(task_class(tuple(run.args), {}))
        return _("%(task)s queued again.") % {"task": run.short_name}, True


class RevokeRunView(RunActionView):
    page_title = gettext_lazy("Revoke task")

    def get_confirmation(self):
        return _("Revoke %(task)s %(task_id)s? It will not run.") % {
            "task": self.run.short_name,
            "task_id": self.run.task_id,
        }

    def perform(self):
        run = self.run
        if run.status not in REVOCABLE:
            return _("A run that is “%(status)s” cannot be revoked.") % {
                "status": run.get_status_display()
            }, False
        kind = registry.task_kind(run.short_name)
        if kind.revoke_refusal and (refusal := kind.revoke_refusal(run)):
            return refusal, False
        HUEY.revoke_by_id(run.task_id)
        if kind.revoked and (refusal := kind.revoked(run)):
            HUEY.restore_by_id(run.task_id)  # it started in the meantime, so undo the revoke
            return refusal, False
        TaskRun.objects.filter(pk=run.pk).update(status=Status.REVOKED)
        return _("%(task)s %(task_id)s revoked.") % {
            "task": run.short_name,
            "task_id": run.task_id,
        }, True


class DeadLettersView(MonitorMixin, TemplateView):
    template_name = "huey_tasks/dead_letters.html"
    page_title = gettext_lazy("Dead letters")

    def get_context_data(self, **kwargs):
        context = super().get_context_data(**kwargs)
        letters = []
        for letter in HUEY.storage.dead_letters(limit=200):
            try:
                task = HUEY.deserialize_task(letter.data)
                name, task_id = task.name.rsplit(".", 1)[-1], task.id
            except Exception as exc:
                name = _("(undecodable: %(error)s)") % {"error": exc.__class__.__name__}
                task_id = ""
            letters.append({"letter": letter, "name": name, "task_id": task_id})
        context.update(
            letters=letters,
            total=HUEY.storage.dead_letter_count(),
            can_change=self.can_change(),
            can_requeue=self.can_spend(),
        )
        return context


class DeadLetterActionView(ActionView):
    """Requeue or purge one dead letter (``message_id``) or all of them."""

    def setup(self, request, *args, **kwargs):
        super().setup(request, *args, **kwargs)
        if kwargs["action"] not in ("requeue", "purge"):
            raise Http404
        self.action = kwargs["action"]
        self.message_id = kwargs.get("message_id")

    def get_page_title(self):
        if self.action == "requeue":
            return _("Requeue dead letters")
        return _("Purge dead letters")

    def spends_money(self):
        return self.action == "requeue"

    def back_url(self):
        return reverse("job_monitor:dead_letters")

    def get_confirmation(self):
        if self.action == "requeue":
            if self.message_id:
                return _("Put this dead letter back on the queue with a fresh delivery count?")
            return _("Put every dead letter back on the queue with a fresh delivery count?")
        if self.message_id:
            return _("Delete this dead letter for good?")
        return _("Delete every dead letter for good?")

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
            message = _("%(count)s dead letters requeued.") % {"count": done}
            if refused:
                message += " " + _("%(count)s kept, as they would pay for more: %(reason)s") % {
                    "count": len(refused),
                    "reason": refused[0],
                }
            return message, bool(done)
        done = storage.purge_dead_letters(ids)
        return _("%(count)s dead letters purged.") % {"count": done}, bool(done)

    @staticmethod
    def requeue(letter) -> bool | str:
        """Reopen what the dead letter had failed, then put its message back.

        A reopened job or expansion is paid work again, so it is checked against the
        budgets like any retry. If it is over a budget, the letter stays and the reason is
        returned."""
        try:
            task = HUEY.deserialize_task(letter.data)
        except Exception:
            task = None
        if task is None or not task.args or not isinstance(task.args[0], int):
            return HUEY.requeue_dead_letter(letter)
        kind = registry.task_kind(task.name.rsplit(".", 1)[-1])
        if kind.requeue is not None and (refusal := kind.requeue(task)):
            return refusal
        return HUEY.requeue_dead_letter(letter)
