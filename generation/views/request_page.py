"""The request's page (inspect) and its live part, which refreshes while the request is
active."""

from __future__ import annotations

from typing import Any

from django.core.paginator import Page
from django.db.models import Prefetch, QuerySet
from django.shortcuts import get_object_or_404
from django.urls import reverse
from django.utils.functional import cached_property
from django.utils.translation import gettext_lazy
from wagtail.admin.paginator import WagtailPaginator
from wagtail.images import get_image_model
from wagtail.snippets.views.snippets import InspectView

from generation.models import GenerationJob, GenerationRequest
from generation.thumbnails import THUMBNAIL_SPEC, create_missing_thumbnails
from generation.timeline import request_timeline
from generation.views.requests import ActionButtonsMixin

# The request page shows this many prompts, and their images, per page. This bounds the
# work whatever the request's size, including thumbnails rendered on a first view.
JOBS_PER_PAGE = 50
# What the page shows of a job; the rest (claims, timings) stays in the database.
JOB_FIELDS = ["id", "request_id", "index", "prompt", "status", "attempts", "error", "image"]
# How often an active request's page refreshes its live part (the monitor's rate too).
LIVE_INTERVAL_MS = 3000


class JobPaginator(WagtailPaginator):
    """Wagtail's admin paginator, counting prompts rather than "generation jobs"."""

    verbose_name = gettext_lazy("prompt")
    verbose_name_plural = gettext_lazy("prompts")


def request_jobs(request_id: int) -> QuerySet[GenerationJob]:
    """The page's jobs in order, with their images and the images' thumbnail renditions.

    Paginated, this is three queries (count, page, renditions) for any page size. Filtering
    by id rather than through ``request.jobs`` leaves each job's ``request`` unset. The
    {% image %} tag caches every rendition, pickled with its image and the image's job, and
    a set request would be pickled with them, along with all its prefetched jobs and images.
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


def job_page_number(job: GenerationJob) -> int:
    """The request page's page that lists ``job``."""
    before = GenerationJob.objects.filter(request_id=job.request_id, index__lt=job.index).count()
    return before // JOBS_PER_PAGE + 1


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
        """The URL of this page's live part, with the query (filters, page) of the page
        shown."""
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
    """The self-refreshing part of the request page, for w-swap, with the page's
    permissions."""

    template_name = "generation/inspect_live.html"

    def get_context_data(self, **kwargs):
        # The fragment alone: no header, breadcrumbs or action buttons to build.
        return {"view": self, **self.get_live_context()}
