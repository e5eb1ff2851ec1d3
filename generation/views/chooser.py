"""The Generate tab of Wagtail's image chooser: a prompt starts a generation request, and its
candidates appear in the modal as their images are filed.

The tab is part of the chooser's own page (templates/wagtailimages/chooser/chooser.html);
these views answer its form and its refreshes with HTML fragments, which Wagtail's w-swap
controller writes into the tab. A candidate links to the chooser's own "chosen" (or
"select_format") URL, so choosing one is choosing a library image.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from typing import Any
from urllib.parse import urlencode

from django.core.exceptions import PermissionDenied
from django.db.models import Prefetch
from django.http import HttpRequest, HttpResponse
from django.shortcuts import render
from django.urls import reverse
from django.utils.translation import gettext as _
from django.utils.translation import gettext_lazy
from django.views import View
from wagtail.images import get_image_model
from wagtail.permissions import policy_registry

from generation import actions, costs
from generation.forms import ChooserGenerationForm, chooser_collections_for
from generation.models import GenerationJob, GenerationRequest, default_llm
from generation.providers import available_image_models
from generation.views.requests import can_generate

Job = GenerationJob.Status
# "Your recent generations": the user's last requests from the chooser.
RECENT_REQUESTS = 5
# How often the tab asks for new candidates while one of them is still being made (a tick
# is skipped while the last answer is still on its way).
POLL_INTERVAL_MS = 500
# The thumbnail of a candidate, as in Wagtail's own chooser results.
CANDIDATE_SPEC = "max-165x165"
WAITING_LABELS = {
    Job.PENDING: gettext_lazy("Waiting"),
    Job.QUEUED: gettext_lazy("Waiting"),
    Job.RUNNING: gettext_lazy("Generating…"),
    Job.RETRYING: gettext_lazy("Retrying…"),
    Job.CANCELLED: gettext_lazy("Cancelled"),
}


def can_generate_in_chooser(user: Any) -> bool:
    """Whether ``user`` sees the Generate tab: they may add and start generation requests
    and add images to a collection where they may also choose them."""
    requests = GenerationRequest.snippet_viewset.permission_policy
    return (
        requests.user_has_permission(user, "add")
        and can_generate(user, requests)
        and bool(available_image_models(editing=False))
        and chooser_collections_for(user).exists()
    )


@dataclass
class Candidate:
    """One image of a request, as the tab shows it: chosen by its link once filed."""

    label: str
    image: Any = None
    chosen_url: str = ""
    error: str = ""


@dataclass
class RecentGeneration:
    request: GenerationRequest
    candidates: list[Candidate] = field(default_factory=list)

    @property
    def active(self) -> bool:
        return self.request.status in GenerationRequest.ACTIVE

    @property
    def summary(self) -> str:
        """What a screen reader is told of it as it changes."""
        request = self.request
        values = {
            "theme": request.theme,
            "status": request.get_status_display(),
            "ready": request.jobs_succeeded,
            "count": request.count,
            "failed": request.jobs_failed,
        }
        if request.jobs_failed:
            return (
                _("“%(theme)s”: %(status)s, %(ready)s of %(count)s ready, %(failed)s failed.")
                % values
            )
        return _("“%(theme)s”: %(status)s, %(ready)s of %(count)s ready.") % values


def chooser_url(name: str, http_request: HttpRequest) -> str:
    """The URL of one of this module's views, keeping the chooser's ``select_format``: rich
    text asks for the image's format after it is chosen."""
    url = reverse(GenerationRequest.snippet_viewset.get_url_name(name))
    if http_request.GET.get("select_format"):
        url += "?" + urlencode({"select_format": "true"})
    return url


def recent_generations(http_request: HttpRequest) -> list[RecentGeneration]:
    user = http_request.user
    Rendition = get_image_model().get_rendition_model()
    requests = list(
        GenerationRequest.objects.filter(created_by=user, from_chooser=True).order_by(
            "-created_at"
        )[:RECENT_REQUESTS]
    )
    jobs = (
        GenerationJob.objects.filter(request__in=requests)
        .order_by("index")
        .only("request_id", "index", "status", "error", "image")
        .select_related("image")
        # The {% image %} tag finds the thumbnails here: no query per candidate.
        .prefetch_related(
            Prefetch(
                "image__renditions",
                queryset=Rendition.objects.filter(filter_spec=CANDIDATE_SPEC),
                to_attr="prefetched_renditions",
            )
        )
    )
    image_ids = [job.image_id for job in jobs if job.image_id]
    choosable = set(
        policy_registry.get_by_type(get_image_model())
        .instances_user_has_any_permission_for(user, ["choose"])
        .filter(pk__in=image_ids)
        .values_list("pk", flat=True)
    )
    chosen_view = (
        "wagtailimages_chooser:select_format"
        if http_request.GET.get("select_format")
        else "wagtailimages_chooser:chosen"
    )
    by_request = {request.pk: RecentGeneration(request) for request in requests}
    for job in jobs:
        candidates = by_request[job.request_id].candidates
        if job.status == Job.SUCCEEDED and job.image_id in choosable:
            url = reverse(chosen_view, args=[job.image_id])
            candidates.append(Candidate(job.image.title, job.image, url))
        elif job.status == Job.SUCCEEDED and job.image_id is None:
            candidates.append(Candidate(_("Deleted from the library")))
        elif job.status == Job.SUCCEEDED:
            candidates.append(Candidate(_("Filed where you may not choose it")))
        elif job.status == Job.FAILED:
            candidates.append(
                Candidate(_("Failed"), error=job.error or _("No reason was recorded."))
            )
        else:
            candidates.append(Candidate(WAITING_LABELS.get(job.status, job.get_status_display())))
    for generation in by_request.values():
        # Prompts still being written: their candidates are on the way.
        missing = generation.request.count - len(generation.candidates)
        if missing > 0 and generation.active:
            generation.candidates += [Candidate(_("Writing the prompt…")) for __ in range(missing)]
    return list(by_request.values())


def recent_context(http_request: HttpRequest) -> dict:
    recent = recent_generations(http_request)
    return {
        "recent": recent,
        "recent_url": chooser_url("chooser_recent", http_request),
        "polling": any(generation.active for generation in recent),
        "summary": recent[0].summary if recent else "",
        "poll_interval": POLL_INTERVAL_MS,
    }


def tab_context(
    http_request: HttpRequest, form: ChooserGenerationForm | None = None, notice: str = ""
) -> dict:
    return {
        **recent_context(http_request),
        "form": form or ChooserGenerationForm(user=http_request.user),
        "generate_url": chooser_url("chooser_generate", http_request),
        # What w-swap shows when the form's answer is an error page, not the tab.
        "error_messages": json.dumps(
            {
                "403": _("You may no longer start generations here."),
                "500": _("Generation could not start: the server failed. Try again."),
            },
            ensure_ascii=False,
        ),
        "notice": notice,
    }


class ChooserTabView(View):
    def dispatch(self, request: HttpRequest, *args: Any, **kwargs: Any) -> HttpResponse:
        if not can_generate_in_chooser(request.user):
            raise PermissionDenied
        return super().dispatch(request, *args, **kwargs)


class ChooserGenerateView(ChooserTabView):
    """Start a request from the tab's form; answer with the tab's content, the form's errors
    in place or the new request among the recent ones. Always 200, which w-swap writes."""

    http_method_names = ["post"]

    def post(self, request: HttpRequest) -> HttpResponse:
        form = ChooserGenerationForm(request.POST, user=request.user)
        notice = ""
        if form.is_valid():
            generation = form.save(commit=False)
            generation.llm = default_llm()
            generation.created_by = request.user
            generation.from_chooser = True
            with costs.budget_lock():
                # Checked again here: another request may have started since the form's check.
                error = costs.budget_error(generation.count, generation.image_model)
                if error:
                    form.add_error(None, error)
                else:
                    generation.save()
                    notice = actions.generate(generation)
        if notice:
            form = None  # a fresh form for the next one
            notice += " " + _(
                "The images appear here as they are filed; you may close this window."
            )
        return render(
            request,
            "generation/chooser/generate_body.html",
            {"tab": tab_context(request, form, notice)},
        )


class ChooserRecentView(ChooserTabView):
    """The tab's "Your recent generations", refreshed while a candidate is on its way."""

    http_method_names = ["get"]

    def get(self, request: HttpRequest) -> HttpResponse:
        return render(request, "generation/chooser/recent.html", {"tab": recent_context(request)})
