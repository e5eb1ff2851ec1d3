from __future__ import annotations

from decimal import Decimal

from django.conf import settings
from django.core.validators import MaxValueValidator, MinValueValidator
from django.db import models
from django.db.models import Q
from django.urls import reverse
from django.utils.translation import gettext_lazy as _
from modelcluster.contrib.taggit import ClusterTaggableManager
from modelcluster.fields import ParentalKey
from modelcluster.models import (
    ClusterableModel,
    get_all_child_m2m_relations,
    get_all_child_relations,
)
from taggit.models import TaggedItemBase
from wagtail.models import Collection
from wagtail.search import index

from cms.cjk import CJK_FIELD, cjk_index_text
from cms.models import GENERATED_IMAGES_COLLECTION
from generation.providers import ASPECT_RATIOS

MAX_COUNT = 500

# A job or request failed by a bug in Karasu's own code, not by its provider: its reason
# starts so, and the metrics count such failures apart (ops/metrics.py).
INTERNAL_ERROR = "internal error: "


def internal_error(exc: BaseException) -> str:
    """The stored reason of a failure from a bug of Karasu's (never the exception's text,
    which may hold a secret; the traceback is in the job monitor)."""
    return (
        f"{INTERNAL_ERROR}{exc.__class__.__name__} (a bug in Karasu, not the provider's; "
        "the traceback is in the job monitor)"
    )


def default_collection() -> int | None:
    collection = Collection.objects.filter(name=GENERATED_IMAGES_COLLECTION).first()
    return collection.pk if collection else None


def default_llm() -> str:
    return settings.KARASU["DEFAULT_LLM"]


def default_image_model() -> str:
    return settings.KARASU["DEFAULT_IMAGE_MODEL"]


class TaggedGenerationRequest(TaggedItemBase):
    content_object = ParentalKey(
        "generation.GenerationRequest", on_delete=models.CASCADE, related_name="tagged_items"
    )


class GenerationRequest(index.Indexed, ClusterableModel):
    class Status(models.TextChoices):
        DRAFT = "draft", _("Draft")
        QUEUED = "queued", _("Queued")
        EXPANDING = "expanding", _("Expanding prompts")
        GENERATING = "generating", _("Generating")
        COMPLETED = "completed", _("Completed")
        COMPLETED_WITH_ERRORS = "completed_with_errors", _("Completed with errors")
        FAILED = "failed", _("Failed")
        CANCELLED = "cancelled", _("Cancelled")

    TERMINAL = {Status.COMPLETED, Status.COMPLETED_WITH_ERRORS, Status.FAILED, Status.CANCELLED}
    ACTIVE = {Status.QUEUED, Status.EXPANDING, Status.GENERATING}

    theme = models.CharField(_("theme"), max_length=500)
    brief = models.TextField(_("brief"), blank=True, help_text=_("Optional context for the LLM."))
    style = models.CharField(
        _("style"),
        max_length=200,
        blank=True,
        help_text=_("Optional visual style applied to every prompt."),
    )
    count = models.PositiveSmallIntegerField(
        _("Number of images"),
        default=10,
        validators=[MinValueValidator(1), MaxValueValidator(MAX_COUNT)],
    )
    llm = models.CharField(_("LLM"), max_length=50, default=default_llm)
    image_model = models.CharField(_("image model"), max_length=50, default=default_image_model)
    aspect_ratio = models.CharField(
        _("aspect ratio"), max_length=5, choices=[(r, r) for r in ASPECT_RATIOS], default="1:1"
    )
    collection = models.ForeignKey(
        Collection,
        verbose_name=_("collection"),
        on_delete=models.PROTECT,
        related_name="+",
        default=default_collection,
        help_text=_("Where the generated images are filed in the image library."),
    )
    tags = ClusterTaggableManager(
        verbose_name=_("tags"), through=TaggedGenerationRequest, blank=True
    )
    # For variations, each job edits this library image with an image-editing model. A source
    # deleted later leaves the request and its images as they are.
    source_image = models.ForeignKey(
        settings.WAGTAILIMAGES_IMAGE_MODEL,
        null=True,
        blank=True,
        on_delete=models.SET_NULL,
        related_name="variation_requests",
        verbose_name=_("source image"),
        help_text=_("Make variations of this image (an image-editing model is required)."),
    )
    # Set with the source and kept when it is deleted (SET_NULL clears only the link), so a
    # variation request never turns into a plain one.
    is_variation = models.BooleanField(default=False, editable=False)
    # Started from the Generate tab of the image chooser, where the editor's recent
    # generations are listed again.
    from_chooser = models.BooleanField(
        _("Started from the image chooser"), default=False, editable=False
    )
    auto_generate = models.BooleanField(
        _("auto-generate"),
        default=True,
        help_text=_("Generate images as soon as the prompts are written. Off: review them first."),
    )

    status = models.CharField(
        _("status"), max_length=25, choices=Status.choices, default=Status.DRAFT, db_index=True
    )
    error = models.TextField(blank=True)
    jobs_total = models.PositiveIntegerField(default=0)
    jobs_succeeded = models.PositiveIntegerField(default=0)
    jobs_failed = models.PositiveIntegerField(default=0)
    jobs_cancelled = models.PositiveIntegerField(default=0)
    recoveries = models.PositiveSmallIntegerField(
        default=0, help_text=_("Times maintenance restarted a lost expansion.")
    )
    # Costs in USD. The estimate (count × the image model's price) is set when the request
    # is saved; the spend (succeeded images × price) grows as its jobs succeed.
    cost_estimate = models.DecimalField(
        max_digits=12, decimal_places=4, default=Decimal("0"), editable=False
    )
    cost_spent = models.DecimalField(
        max_digits=12, decimal_places=4, default=Decimal("0"), editable=False
    )
    llm_input_tokens = models.PositiveIntegerField(default=0, editable=False)
    llm_output_tokens = models.PositiveIntegerField(default=0, editable=False)
    expansion_started_at = models.DateTimeField(null=True, blank=True, editable=False)
    expansion_finished_at = models.DateTimeField(null=True, blank=True, editable=False)
    created_by = models.ForeignKey(
        settings.AUTH_USER_MODEL, null=True, blank=True, on_delete=models.SET_NULL, related_name="+"
    )
    created_at = models.DateTimeField(auto_now_add=True)
    updated_at = models.DateTimeField(auto_now=True)
    finished_at = models.DateTimeField(null=True, blank=True)

    search_fields = [
        index.SearchField("theme"),
        index.SearchField("brief"),
        index.AutocompleteField("theme"),
        index.AutocompleteField("brief"),
        # The words inside Chinese and Japanese themes, as for the image library (cms/cjk.py).
        index.SearchField(CJK_FIELD),
        index.AutocompleteField(CJK_FIELD),
        index.FilterField("status"),
        index.FilterField("image_model"),
        index.FilterField("llm"),
    ]

    class Meta:
        verbose_name = _("generation request")
        verbose_name_plural = _("generation requests")
        ordering = ["-created_at"]
        indexes = [
            models.Index(fields=["status", "-created_at"]),
            models.Index(fields=["created_by", "from_chooser", "-created_at"]),
        ]
        constraints = [
            models.CheckConstraint(
                condition=Q(count__gte=1) & Q(count__lte=MAX_COUNT), name="request_count_range"
            )
        ]

    # Workers move these with conditional and F() updates. A full save of a copy read earlier
    # (the edit form, while jobs finish) would write back the values it read, so a finished
    # job's count and spend would be lost and the request would never settle.
    WORKER_FIELDS = frozenset(
        {
            "status",
            "error",
            "jobs_total",
            "jobs_succeeded",
            "jobs_failed",
            "jobs_cancelled",
            "recoveries",
            "cost_spent",
            "llm_input_tokens",
            "llm_output_tokens",
            "expansion_started_at",
            "expansion_finished_at",
            "finished_at",
        }
    )

    def __str__(self) -> str:
        return self.theme if len(self.theme) <= 80 else self.theme[:79] + "…"

    def save(self, **kwargs) -> None:
        if self.source_image_id:
            self.is_variation = True
        if kwargs.get("update_fields") is None and not self._state.adding:
            kwargs["update_fields"] = (
                [
                    field.name
                    for field in self._meta.concrete_fields
                    if not field.primary_key and field.name not in self.WORKER_FIELDS
                ]
                + [rel.get_accessor_name() for rel in get_all_child_relations(self)]
                + [field.name for field in get_all_child_m2m_relations(self)]
            )
        super().save(**kwargs)

    def cjk_search_terms(self) -> str:
        """The CJK pieces of the theme and brief, which the listing's search looks at."""
        return cjk_index_text(self.theme, self.brief)

    @property
    def jobs_done(self) -> int:
        return self.jobs_succeeded + self.jobs_failed + self.jobs_cancelled

    @property
    def is_terminal(self) -> bool:
        return self.status in self.TERMINAL

    @property
    def source_deleted(self) -> bool:
        """A variation request whose source image is gone: nothing left to derive from."""
        return self.is_variation and not self.source_image_id

    def get_admin_url(self) -> str:
        return reverse("wagtailsnippets_generation_generationrequest:inspect", args=[self.pk])


class GenerationJob(models.Model):
    class Status(models.TextChoices):
        PENDING = "pending", _("Pending")
        QUEUED = "queued", _("Queued")
        RUNNING = "running", _("Running")
        RETRYING = "retrying", _("Retrying")
        SUCCEEDED = "succeeded", _("Succeeded")
        FAILED = "failed", _("Failed")
        CANCELLED = "cancelled", _("Cancelled")

    TERMINAL = {Status.SUCCEEDED, Status.FAILED, Status.CANCELLED}
    OPEN = {Status.PENDING, Status.QUEUED, Status.RUNNING, Status.RETRYING}

    request = models.ForeignKey(GenerationRequest, on_delete=models.CASCADE, related_name="jobs")
    index = models.PositiveIntegerField()
    prompt = models.TextField()
    alt_text = models.CharField(
        max_length=250, blank=True, help_text=_("Written with the prompt; the image's description.")
    )
    status = models.CharField(
        max_length=10, choices=Status.choices, default=Status.PENDING, db_index=True
    )
    attempts = models.PositiveSmallIntegerField(default=0)
    seed = models.BigIntegerField(null=True, blank=True)
    image = models.OneToOneField(
        settings.WAGTAILIMAGES_IMAGE_MODEL,
        null=True,
        blank=True,
        on_delete=models.SET_NULL,
        related_name="generation_job",
    )
    error = models.TextField(blank=True)
    task_id = models.CharField(max_length=64, blank=True, db_index=True)
    # The exclusive claim of the worker making this job's provider call: a fencing token
    # and an expiry the worker's heartbeat pushes forward (see services.claim_job).
    claim_token = models.CharField(max_length=32, blank=True, editable=False)
    claim_expires_at = models.DateTimeField(null=True, blank=True, editable=False)
    claim_message = models.CharField(max_length=64, blank=True, editable=False)
    # The provider request this job paid for, stored (by the claim holder) before its
    # result is awaited, so whoever runs the job next resumes it instead of paying again.
    provider_request_id = models.CharField(max_length=200, blank=True, editable=False)
    provider_endpoint = models.CharField(max_length=200, blank=True, editable=False)
    provider_submitted_at = models.DateTimeField(null=True, blank=True, editable=False)
    infra_retries = models.PositiveSmallIntegerField(
        default=0, help_text=_("Retries after database, queue or media errors (not attempts).")
    )
    recoveries = models.PositiveSmallIntegerField(
        default=0, help_text=_("Times maintenance re-queued this job after its message was lost.")
    )
    created_at = models.DateTimeField(auto_now_add=True)
    updated_at = models.DateTimeField(auto_now=True)
    started_at = models.DateTimeField(null=True, blank=True)
    finished_at = models.DateTimeField(null=True, blank=True)

    class Meta:
        ordering = ["request", "index"]
        constraints = [
            models.UniqueConstraint(fields=["request", "index"], name="job_unique_index"),
        ]

    def __str__(self) -> str:
        return f"#{self.index + 1}: {self.prompt[:60]}"

    @property
    def is_editable(self) -> bool:
        return self.status == self.Status.PENDING


class ExpansionCall(models.Model):
    """One LLM call of a request's expansion: how many prompts it asks for, on which angle,
    and what it wrote. Calls run in parallel as their own tasks; a call that wrote its
    prompts is ``done`` in the same transaction, so a redelivery neither pays nor counts
    its tokens again."""

    class Status(models.TextChoices):
        PENDING = "pending", _("Pending")
        QUEUED = "queued", _("Queued")  # its task is enqueued
        RUNNING = "running", _("Running")
        DONE = "done", _("Done")
        FAILED = "failed", _("Failed")
        CANCELLED = "cancelled", _("Cancelled")

    OPEN = {Status.PENDING, Status.QUEUED, Status.RUNNING}

    request = models.ForeignKey(
        GenerationRequest, on_delete=models.CASCADE, related_name="expansion_calls"
    )
    number = models.PositiveSmallIntegerField()
    size = models.PositiveSmallIntegerField(help_text=_("Prompts this call asks for."))
    # Round 0 is planned with the request; rounds 1, 2, ... replace prompts dropped as
    # duplicates.
    round = models.PositiveSmallIntegerField(default=0)
    status = models.CharField(max_length=10, choices=Status.choices, default=Status.PENDING)
    attempts = models.PositiveSmallIntegerField(default=0)
    # The token of the attempt under way. Only that attempt may write the call's prompts; a
    # late answer from an attempt that timed out is counted but writes nothing.
    token = models.CharField(max_length=32, blank=True)
    # The queue message running it, for the record.
    claim_message = models.CharField(max_length=64, blank=True)
    # While the call runs, its worker's heartbeat pushes this forward. Only once it has
    # passed (the worker died, or froze past it) may another attempt take the call over,
    # because the stream under way is paid for and must not be paid a second time.
    claim_expires_at = models.DateTimeField(null=True, blank=True, editable=False)
    prompts_written = models.PositiveSmallIntegerField(default=0)
    input_tokens = models.PositiveIntegerField(default=0)
    output_tokens = models.PositiveIntegerField(default=0)
    error = models.TextField(blank=True)
    created_at = models.DateTimeField(auto_now_add=True)
    updated_at = models.DateTimeField(auto_now=True)

    class Meta:
        ordering = ["request", "number"]
        constraints = [
            models.UniqueConstraint(fields=["request", "number"], name="expansion_call_unique"),
        ]

    def __str__(self) -> str:
        return f"call {self.number} of request {self.request_id} ({self.status})"


class Spend(models.Model):
    """One paid image, booked when its job succeeded.

    These rows give the figures of "spend today", "this month" and the monthly budget. A row
    is kept when its request is deleted, because the money was spent."""

    request = models.ForeignKey(
        GenerationRequest, null=True, on_delete=models.SET_NULL, related_name="spends"
    )
    job_id = models.PositiveBigIntegerField(null=True)
    amount = models.DecimalField(max_digits=12, decimal_places=4)
    spent_at = models.DateTimeField(db_index=True)

    def __str__(self) -> str:
        return f"{self.amount} USD at {self.spent_at:%Y-%m-%d %H:%M}"
