"""Admin views: request actions (confirm on GET, act on POST), per-prompt edits, inspect.

Also the add form's "Save and generate" and the request page's live part.
"""

from __future__ import annotations

from collections.abc import Sequence
from concurrent.futures import ThreadPoolExecutor
from functools import partial
from io import BytesIO
from typing import Any

from django.contrib import messages
from django.core.exceptions import PermissionDenied
from django.core.paginator import Page
from django.db.models import Count, Exists, Max, Min, OuterRef, Prefetch, Q, QuerySet
from django.http import HttpRequest, HttpResponseNotAllowed
from django.shortcuts import get_object_or_404, redirect
from django.urls import reverse
from django.utils.functional import cached_property
from django.views.generic import TemplateView
from wagtail.admin.paginator import WagtailPaginator
from wagtail.admin.ui.tables import Column
from wagtail.admin.views.generic import WagtailAdminTemplateMixin
from wagtail.admin.views.generic.permissions import PermissionCheckedMixin
from wagtail.admin.widgets.button import Button
from wagtail.images import get_image_model
from wagtail.images.models import AbstractImage, AbstractRendition, Filter
from wagtail.permission_policies.base import BasePermissionPolicy
from wagtail.snippets.action_menu import ActionMenuItem
from wagtail.snippets.views.snippets import CreateView, EditView, IndexView, InspectView

from generation import costs
from generation.actions import (
    ACTIONS,
    cannot_spend,
    generate_job,
    one_more_image_error,
    run,
)
from generation.forms import PromptForm, default_image_model, image_pk, source_images_for
from generation.models import GenerationJob, GenerationRequest
from generation.services import update_prompt

# The request page shows this many prompts, and their images, per page: a bounded amount of
# work whatever the request's size, including thumbnails rendered on a first view.
JOBS_PER_PAGE = 50
# The thumbnail rendition of the request page; inspect.html's {% image %} tag uses the same
# spec, so the renditions prefetched here are the ones it looks for.
THUMBNAIL_SPEC = "fill-240x240"
# Threads making a first view's missing thumbnails; Pillow decodes and resizes without the GIL.
THUMBNAIL_THREADS = 4
# What the page shows of a job; the rest (claims, timings) stays in the database.
JOB_FIELDS = ["id", "request_id", "index", "prompt", "status", "attempts", "error", "image"]
# How often an active request's page refreshes its live part (the monitor's rate too).
LIVE_INTERVAL_MS = 3000


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
    def get_base_queryset(self):
        pending = GenerationJob.objects.filter(
            request=OuterRef("pk"), status=GenerationJob.Status.PENDING
        )
        return super().get_base_queryset().annotate(pending_jobs_exist=Exists(pending))

    def get_list_more_buttons(self, instance):
        return super().get_list_more_buttons(instance) + self.action_buttons(instance)


class RequestEditView(ActionButtonsMixin, EditView):
    @cached_property
    def header_more_buttons(self):
        return self.action_buttons(self.object, priority=5) + super().header_more_buttons


def can_generate(user: Any, permission_policy: BasePermissionPolicy) -> bool:
    """Starting a request needs the change permission, as RequestActionView does."""
    return permission_policy.user_has_permission(user, "change")


class SaveAndGenerateMenuItem(ActionMenuItem):
    """The add form's "Save and generate", sent as ``action-generate`` (RequestCreateView).

    Registered through Wagtail's register_snippet_action_menu_item hook with an order before
    Save's, so it is the form's primary button and Save (a draft) moves to the drop-up.
    """

    name = "action-generate"
    label = "Save and generate"
    icon_name = "resubmit"
    template_name = "generation/action_menu/save_and_generate.html"

    def is_shown(self, context: dict) -> bool:
        # The add form only (copies post there too): an existing request has its own actions.
        return context["view"] == "create" and can_generate(
            context["request"].user, context["model"].snippet_viewset.permission_policy
        )


class RequestCreateView(CreateView):
    """Save, or save and start the request in one step ("Save and generate").

    Wagtail's create view picks ``self.action`` from the ``action-<name>`` button that was
    pressed, among get_available_actions(), and runs ``<name>_action()`` once the form is
    saved; invalid input never gets there, so nothing is started.
    """

    # Set by the viewset (its common view kwargs), where "Save and generate" lands.
    inspect_url_name = None
    generate_message = ""

    def get_initial(self) -> dict[str, Any]:
        """``?source_image=<id>`` ("Generate variations" on an image's edit page): a request
        for variations of that image, with an image-editing model, if the user may use it."""
        initial = super().get_initial()
        source_id = self.request.GET.get("source_image", "")
        if self.request.method != "GET" or not source_id:
            return initial
        image = None
        if (pk := image_pk(source_id)) is not None:
            image = source_images_for(self.request.user).filter(pk=pk).first()
        if image is None:
            messages.warning(
                self.request, "That image does not exist or you may not use it as a source."
            )
            return initial
        theme = f"Variations of “{image.title}”"
        initial.update(
            source_image=image.pk,
            image_model=default_image_model(editing=True),
            theme=theme if len(theme) <= 500 else theme[:499] + "…",
        )
        return initial

    def get_available_actions(self) -> list[str]:
        actions = [*super().get_available_actions()]
        if self.request.method == "POST" and can_generate(
            self.request.user, self.permission_policy
        ):
            actions.append("generate")
        return actions

    def post(self, request: HttpRequest, *args: Any, **kwargs: Any):
        # Wagtail would quietly fall back to a plain save; refuse instead, before saving.
        if request.POST.get("action-generate") and self.action != "generate":
            raise PermissionDenied
        return super().post(request, *args, **kwargs)

    def generate_action(self) -> None:
        # The request page's "Generate", with its rule: a new request is a draft without jobs.
        action = ACTIONS["generate"]
        error = None
        if action.allowed(self.object):
            # Checked again with the start, under the budget lock: the form's check ran
            # before this save, and another request may have started since.
            self.generate_message, error = run(action, self.object)
        if error:
            messages.warning(self.request, f"Saved as a draft: {error}")
        elif not self.generate_message:
            messages.warning(
                self.request, "Saved as a draft: generation could not start. Try “Generate”."
            )
        return None  # Wagtail then answers as for a save (message, get_success_url())

    def get_success_message(self, instance=None) -> str:
        message = super().get_success_message(instance)
        if self.action == "generate" and self.generate_message:
            return f"{message} {self.generate_message}"
        return message

    def get_success_url(self) -> str:
        if self.action == "generate":
            # The request's page, which follows the work as it happens.
            return reverse(self.inspect_url_name, args=[self.object.pk])
        return super().get_success_url()


class JobPaginator(WagtailPaginator):
    """Wagtail's admin paginator, counting prompts rather than "generation jobs"."""

    verbose_name = "prompt"
    verbose_name_plural = "prompts"


def request_jobs(request_id: int) -> QuerySet[GenerationJob]:
    """The page's jobs in order, with their images and the images' thumbnail renditions.

    Paginated, this is three queries (count, page, renditions) for any page size. Filtering
    by id rather than through ``request.jobs`` leaves each job's ``request`` unset: the
    {% image %} tag caches every rendition, pickled with its image and the image's job, and
    the request would come along (on main, with all its prefetched jobs and images).
    """
    Rendition = get_image_model().get_rendition_model()
    return (
        GenerationJob.objects.filter(request_id=request_id)
        .order_by("index")  # not Meta.ordering, which joins the request to sort by its date
        .only(*JOB_FIELDS)
        .select_related("image")
        .prefetch_related(
            Prefetch(
                "image__renditions",
                queryset=Rendition.objects.filter(filter_spec=THUMBNAIL_SPEC),
                # Where Image.get_rendition() looks for prefetched renditions.
                to_attr="prefetched_renditions",
            )
        )
    )


def render_thumbnail(thumbnail: Filter, image: AbstractImage) -> AbstractRendition | None:
    """An unsaved thumbnail rendition of ``image``; None if its file cannot be rendered."""
    try:
        with image.open_file() as file:
            return image.generate_rendition_instance(thumbnail, BytesIO(file.read()))
    except Exception:
        # The {% image %} tag tries again and handles it as it always has: a missing file
        # becomes a broken image, anything else an error.
        return None


def create_missing_thumbnails(images: Sequence[AbstractImage]) -> None:
    """Create the thumbnails of ``images`` that do not exist yet, the pixel work in parallel.

    Left to the {% image %} tag, the first view after generation resizes a page of images one
    after the other, with four queries each. As Wagtail's Image.create_renditions() does for
    several filters of one image, threads render the files (no database access there) and
    this thread inserts the rows, in one query. ``images`` carry their prefetched renditions
    (request_jobs()); the new ones join them, so the tag then finds every thumbnail there.
    """
    thumbnail = Filter(spec=THUMBNAIL_SPEC)
    # With prefetched renditions, find_existing_renditions() makes no query.
    missing = [image for image in images if not image.find_existing_renditions(thumbnail)]
    if not missing:
        return
    with ThreadPoolExecutor(max_workers=min(len(missing), THUMBNAIL_THREADS)) as pool:
        renditions = [r for r in pool.map(partial(render_thumbnail, thumbnail), missing) if r]
    if not renditions:
        return
    Rendition = get_image_model().get_rendition_model()
    # Another view of the page may have created some meanwhile: use those, as Wagtail does.
    # Our files are written only with their rows, so the ones dropped here leave nothing.
    existing = {
        (rendition.image_id, rendition.focal_point_key): rendition
        for rendition in Rendition.objects.filter(
            image__in=[r.image for r in renditions], filter_spec=thumbnail.spec
        )
    }
    new = [r for r in renditions if (r.image_id, r.focal_point_key) not in existing]
    # ignore_conflicts: a row inserted since the look-up above wins; ours still shows (its
    # file is left over, as with Wagtail's create_renditions()).
    Rendition.objects.bulk_create(new, ignore_conflicts=True)
    for rendition in renditions:
        found = existing.get((rendition.image_id, rendition.focal_point_key), rendition)
        found.image = rendition.image  # already loaded: the tag reads it for the alt text
        rendition.image.prefetched_renditions.append(found)


def job_page_number(job: GenerationJob) -> int:
    """The request page's page that lists ``job``."""
    before = GenerationJob.objects.filter(request_id=job.request_id, index__lt=job.index).count()
    return before // JOBS_PER_PAGE + 1


def request_timeline(request: GenerationRequest) -> list[dict[str, Any]]:
    """What happened to ``request`` and when, oldest first: the page's timeline.

    One aggregate query over the request's jobs (none before it has any), whatever its size.
    """
    entries = [
        ("expansion_started", "Expansion started", request.expansion_started_at, ""),
        (
            "expansion_finished",
            "Expansion finished",
            request.expansion_finished_at,
            f"{request.jobs_total} prompts" if request.jobs_total else "",
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
            ("first_image", "First image", jobs["first_image"], ""),
            ("last_image", "Last image", jobs["last_image"], f"{request.jobs_succeeded} in all"),
            (
                "last_failure",
                "Last failure",
                jobs["last_failure"],
                f"{jobs['failures']} failed in all",
            ),
        ]
    if request.is_terminal:
        entries.append(
            ("finished", f"Finished: {request.get_status_display()}", request.finished_at, "")
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


class RequestInspectView(ActionButtonsMixin, InspectView):
    """The request's own page: progress, actions, and its prompts with their images, paginated.

    While the request is active, the page's live part (inspect_live.html, served alone by
    RequestLiveView) refreshes itself through Wagtail's w-swap controller, as the job
    monitor does.
    """

    template_name = "generation/inspect.html"
    page_kwarg = "p"  # as in Wagtail's listings and its pagination_nav.html

    def get_object(self, queryset=None):
        return get_object_or_404(GenerationRequest.objects.select_related("collection"), pk=self.pk)

    @cached_property
    def header_more_buttons(self):
        return self.action_buttons(self.object, priority=5) + super().header_more_buttons

    def get_fields_context(self) -> list[dict]:
        # inspect.html lays the request out itself; the generic field list would only cost
        # queries (tags, creator) for values the page does not show.
        return []

    def get_jobs_page(self) -> Page:
        paginator = JobPaginator(request_jobs(self.object.pk), JOBS_PER_PAGE)
        # get_page() answers a missing or bad number with the first page, and one past the
        # end with the last, as Wagtail's listings do.
        return paginator.get_page(self.request.GET.get(self.page_kwarg))

    def get_live_url(self, page_number: int) -> str:
        """The live part of this page: the same query (filters, page) for the page shown."""
        namespace = self.index_url_name.rsplit(":", 1)[0]
        query = self.request.GET.copy()
        query[self.page_kwarg] = page_number
        return f"{reverse(f'{namespace}:live', args=[self.object.pk])}?{query.urlencode()}"

    def get_live_context(self) -> dict[str, Any]:
        """What inspect_live.html shows: the request, the timeline and one page of prompts."""
        namespace = self.index_url_name.rsplit(":", 1)[0]
        jobs = self.get_jobs_page()
        create_missing_thumbnails([job.image for job in jobs if job.image])
        return {
            "object": self.object,
            "can_change": self.permission_policy.user_has_permission(self.request.user, "change"),
            "jobs": jobs,
            # A list, not Wagtail's generator: the page shows the navigation twice.
            "elided_page_range": list(jobs.paginator.get_elided_page_range(jobs.number)),
            "job_prompt_url_name": f"{namespace}:job_prompt",
            "job_generate_url_name": f"{namespace}:job_generate",
            "jobs_open": self.object.jobs_total - self.object.jobs_done,
            "timeline": request_timeline(self.object),
            # Only an active request polls; a final one's fragment comes without the
            # controllers, so the swap that shows it final also ends the polling.
            "live": self.object.status in GenerationRequest.ACTIVE,
            "live_url": self.get_live_url(jobs.number),
            "live_interval": LIVE_INTERVAL_MS,
        }

    def get_context_data(self, **kwargs):
        context = super().get_context_data(**kwargs)
        context.update(self.get_live_context())
        return context


class RequestLiveView(RequestInspectView):
    """The self-refreshing part of the request page, for w-swap; the page's permissions."""

    template_name = "generation/inspect_live.html"

    def get_context_data(self, **kwargs):
        # The fragment alone: no header, breadcrumbs or action buttons to build.
        return {"view": self, **self.get_live_context()}


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
        message, error = run(self.action, self.object)
        if error:
            messages.error(request, error)
        elif message:
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
                f"Prompt #{self.job.index + 1} not saved: " + " ".join(form.errors["prompt"]),
            )
        elif update_prompt(self.job, form.cleaned_data["prompt"]):
            messages.success(request, f"Prompt #{self.job.index + 1} saved.")
        else:
            messages.error(request, "Only a pending prompt can be edited.")
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
            messages.error(request, "This prompt is being generated already.")
        return self.back()
