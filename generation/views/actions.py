"""Request actions (confirm on GET, act on POST) and per-prompt edits."""

from __future__ import annotations

from django.contrib import messages
from django.http import HttpResponseNotAllowed
from django.shortcuts import get_object_or_404, redirect
from django.urls import reverse
from django.utils.translation import gettext as _
from django.views.generic import TemplateView
from wagtail.admin.views.generic import WagtailAdminTemplateMixin
from wagtail.admin.views.generic.permissions import PermissionCheckedMixin

from generation import costs
from generation.actions import (
    ACTIONS,
    cannot_spend,
    generate_job,
    one_more_image_error,
    run,
)
from generation.forms import PromptForm
from generation.models import GenerationJob, GenerationRequest
from generation.services import update_prompt
from generation.views.request_page import RequestInspectView, job_page_number


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
        return self.action.label if self.action else _("Unknown action")

    def get_page_subtitle(self):
        return str(self.object)

    def back_url(self):
        return reverse(self.inspect_url_name, args=[self.object.pk])

    def refuse(self):
        messages.error(
            self.request,
            _("“%(action)s” is not possible for this request now (status: %(status)s).")
            % {
                "action": self.action.label if self.action else _("This action"),
                "status": self.object.get_status_display(),
            },
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
            confirmation=str(self.action.confirmation) % {"count": self.object.count},
            back_url=self.back_url(),
        )
        return context

    def post(self, request, *args, **kwargs):
        if not self.action or not self.action.allowed(self.object):
            return self.refuse()
        message, error = run(self.action, self.object)
        if error:
            messages.error(request, error)
        elif message:
            messages.success(request, message)
        else:
            messages.warning(request, _("Nothing to do: the request changed meanwhile."))
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
        # Back to the page that lists the job, scrolled to its row.
        url = reverse(self.inspect_url_name, args=[self.job.request_id])
        page = job_page_number(self.job)
        query = f"?{RequestInspectView.page_kwarg}={page}" if page > 1 else ""
        return redirect(f"{url}{query}#job-{self.job.pk}")

    def http_method_not_allowed(self, request, *args, **kwargs):
        return HttpResponseNotAllowed(["POST"])


class JobPromptView(JobView):
    def post(self, request, *args, **kwargs):
        form = PromptForm(request.POST)
        if not form.is_valid():
            messages.error(
                request,
                _("Prompt #%(number)s not saved: %(errors)s")
                % {"number": self.job.index + 1, "errors": " ".join(form.errors["prompt"])},
            )
        elif update_prompt(self.job, form.cleaned_data["prompt"]):
            messages.success(
                request, _("Prompt #%(number)s saved.") % {"number": self.job.index + 1}
            )
        else:
            messages.error(request, _("Only a pending prompt can be edited."))
        return self.back()


class JobGenerateView(JobView):
    def post(self, request, *args, **kwargs):
        with costs.budget_lock():
            self.job.request.refresh_from_db()  # its status and spend as they are now
            # A regeneration is one more paid image.
            error = (
                cannot_spend(self.job.request)
                if self.job.status == GenerationJob.Status.PENDING
                else one_more_image_error(self.job.request)
            )
            message = "" if error else generate_job(self.job)
        if error:
            messages.error(request, error)
        elif message:
            messages.success(request, message)
        else:
            messages.error(request, _("This prompt is being generated already."))
        return self.back()
