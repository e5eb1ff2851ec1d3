"""Admin views: request actions (confirm on GET, act on POST), per-prompt edits, inspect."""

from __future__ import annotations

from django.contrib import messages
from django.db.models import Prefetch
from django.http import HttpResponseNotAllowed
from django.shortcuts import get_object_or_404, redirect
from django.urls import reverse
from django.utils.functional import cached_property
from django.views.generic import TemplateView
from wagtail.admin.ui.tables import Column
from wagtail.admin.views.generic import WagtailAdminTemplateMixin
from wagtail.admin.views.generic.permissions import PermissionCheckedMixin
from wagtail.admin.widgets.button import Button
from wagtail.snippets.views.snippets import EditView, IndexView, InspectView

from generation.actions import ACTIONS, generate_job
from generation.forms import PromptForm
from generation.models import GenerationJob, GenerationRequest
from generation.services import update_prompt


class ProgressColumn(Column):
    cell_template_name = "generation/progress_cell.html"


def action_url(viewset_namespace: str, request: GenerationRequest, name: str) -> str:
    return reverse(f"{viewset_namespace}:action", args=[request.pk, name])


class ActionButtonsMixin:
    """Offer the actions that apply to the request, to users who may change it."""

    def action_buttons(self, instance: GenerationRequest, priority: int = 50) -> list[Button]:
        if not self.permission_policy.user_has_permission(self.request.user, "change"):
            return []
        namespace = self.index_url_name.rsplit(":", 1)[0]
        return [
            Button(
                action.label,
                url=action_url(namespace, instance, action.name),
                icon_name=action.icon,
                priority=priority + i,
            )
            for i, action in enumerate(ACTIONS.values())
            if action.allowed(instance)
        ]


class RequestIndexView(ActionButtonsMixin, IndexView):
    def get_list_more_buttons(self, instance):
        return super().get_list_more_buttons(instance) + self.action_buttons(instance)


class RequestEditView(ActionButtonsMixin, EditView):
    @cached_property
    def header_more_buttons(self):
        return self.action_buttons(self.object, priority=5) + super().header_more_buttons


class RequestInspectView(ActionButtonsMixin, InspectView):
    """The request's own page: progress, actions, every prompt and the images."""

    template_name = "generation/inspect.html"

    def get_object(self, queryset=None):
        return get_object_or_404(
            GenerationRequest.objects.select_related("collection").prefetch_related(
                Prefetch("jobs", GenerationJob.objects.select_related("image"))
            ),
            pk=self.pk,
        )

    @cached_property
    def header_more_buttons(self):
        return self.action_buttons(self.object, priority=5) + super().header_more_buttons

    def get_context_data(self, **kwargs):
        context = super().get_context_data(**kwargs)
        namespace = self.index_url_name.rsplit(":", 1)[0]
        context["can_change"] = self.permission_policy.user_has_permission(
            self.request.user, "change"
        )
        context["jobs"] = self.object.jobs.all()
        context["job_prompt_url_name"] = f"{namespace}:job_prompt"
        context["job_generate_url_name"] = f"{namespace}:job_generate"
        return context


class RequestActionView(PermissionCheckedMixin, WagtailAdminTemplateMixin, TemplateView):
    """GET asks for confirmation; POST (CSRF-checked by Django) performs the action."""

    permission_required = "change"
    template_name = "generation/confirm_action.html"
    permission_policy = None
    inspect_url_name = None
    header_icon = "image"

    def setup(self, request, *args, **kwargs):
        super().setup(request, *args, **kwargs)
        self.object = get_object_or_404(GenerationRequest, pk=kwargs["pk"])
        self.action = ACTIONS.get(kwargs["action"])

    def get_page_title(self):
        return self.action.label if self.action else "Unknown action"

    def get_page_subtitle(self):
        return str(self.object)

    def back_url(self):
        return reverse(self.inspect_url_name, args=[self.object.pk])

    def refuse(self):
        messages.error(
            self.request,
            f"“{self.action.label if self.action else 'This action'}” is not possible for "
            f"this request now (status: {self.object.get_status_display()}).",
        )
        return redirect(self.back_url())

    def get(self, request, *args, **kwargs):
        if not self.action or not self.action.allowed(self.object):
            return self.refuse()
        return super().get(request, *args, **kwargs)

    def get_context_data(self, **kwargs):
        context = super().get_context_data(**kwargs)
        context.update(
            object=self.object,
            action=self.action,
            confirmation=self.action.confirmation.format(count=self.object.count),
            back_url=self.back_url(),
        )
        return context

    def post(self, request, *args, **kwargs):
        if not self.action or not self.action.allowed(self.object):
            return self.refuse()
        message = self.action.perform(self.object)
        if message:
            messages.success(request, message)
        else:
            messages.warning(request, "Nothing to do: the request changed meanwhile.")
        return redirect(self.back_url())


class JobView(PermissionCheckedMixin, TemplateView):
    """Per-prompt POST actions; they answer by redirecting to the request's page."""

    permission_required = "change"
    permission_policy = None
    inspect_url_name = None
    http_method_names = ["post"]

    def setup(self, request, *args, **kwargs):
        super().setup(request, *args, **kwargs)
        self.job = get_object_or_404(
            GenerationJob.objects.select_related("request"), pk=kwargs["job_id"]
        )

    def back(self):
        url = reverse(self.inspect_url_name, args=[self.job.request_id])
        return redirect(f"{url}#job-{self.job.pk}")

    def http_method_not_allowed(self, request, *args, **kwargs):
        return HttpResponseNotAllowed(["POST"])


class JobPromptView(JobView):
    def post(self, request, *args, **kwargs):
        form = PromptForm(request.POST)
        if not form.is_valid():
            messages.error(request, f"Prompt #{self.job.index + 1} not saved: "
                           + " ".join(form.errors["prompt"]))
        elif update_prompt(self.job, form.cleaned_data["prompt"]):
            messages.success(request, f"Prompt #{self.job.index + 1} saved.")
        else:
            messages.error(request, "Only a pending prompt can be edited.")
        return self.back()


class JobGenerateView(JobView):
    def post(self, request, *args, **kwargs):
        if self.job.request.status == GenerationRequest.Status.CANCELLED and (
            self.job.status == GenerationJob.Status.CANCELLED
        ):
            messages.error(request, "This request was cancelled.")
        elif message := generate_job(self.job):
            messages.success(request, message)
        else:
            messages.error(request, "This prompt is being generated already.")
        return self.back()
