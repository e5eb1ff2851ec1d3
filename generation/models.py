from __future__ import annotations

from decimal import Decimal

from django.conf import settings
from django.core.validators import MaxValueValidator, MinValueValidator
from django.db import models
from django.db.models import Q
from django.urls import reverse
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

from cms.models import GENERATED_IMAGES_COLLECTION
from generation.providers import ASPECT_RATIOS

MAX_COUNT = 500


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
        DRAFT = "draft", "Draft"
        QUEUED = "queued", "Queued"
        EXPANDING = "expanding", "Expanding prompts"
        GENERATING = "generating", "Generating"
        COMPLETED = "completed", "Completed"
        COMPLETED_WITH_ERRORS = "completed_with_errors", "Completed with errors"
        FAILED = "failed", "Failed"
        CANCELLED = "cancelled", "Cancelled"

    TERMINAL = {Status.COMPLETED, Status.COMPLETED_WITH_ERRORS, Status.FAILED, Status.CANCELLED}
    ACTIVE = {Status.QUEUED, Status.EXPANDING, Status.GENERATING}

    theme = models.CharField(max_length=500)
    brief = models.TextField(blank=True, help_text="Optional context for the LLM.")
    style = models.CharField(
        max_length=200, blank=True, help_text="Optional visual style applied to every prompt."
    )
    count = models.PositiveSmallIntegerField(
        "Number of images",
        default=10,
        validators=[MinValueValidator(1), MaxValueValidator(MAX_COUNT)],
    )
    llm = models.CharField("LLM", max_length=50, default=default_llm)
    image_model = models.CharField(max_length=50, default=default_image_model)
    aspect_ratio = models.CharField(
        max_length=5, choices=[(r, r) for r in ASPECT_RATIOS], default="1:1"
    )
    collection = models.ForeignKey(
        Collection,
        on_delete=models.PROTECT,
        related_name="+",
        default=default_collection,
        help_text="Where the generated images are filed in the image library.",
    )
    tags = ClusterTaggableManager(through=TaggedGenerationRequest, blank=True)
    # Variations: each job edits this library image with an image-editing model. A source
    # deleted later leaves the request and its images as they are.
    source_image = models.ForeignKey(
        settings.WAGTAILIMAGES_IMAGE_MODEL,
        null=True,
        blank=True,
        on_delete=models.SET_NULL,
        related_name="variation_requests",
        help_text="Make variations of this image (an image-editing model is required).",
    )
    # Set with the source and kept when it is deleted (SET_NULL clears only the link), so a
    # variation request never turns into a plain one.
    is_variation = models.BooleanField(default=False, editable=False)
    auto_generate = models.BooleanField(
        default=True,
        help_text="Generate images as soon as the prompts are written. Off: review them first.",
    )

    status = models.CharField(
        max_length=25, choices=Status.choices, default=Status.DRAFT, db_index=True
    )
    error = models.TextField(blank=True)
    jobs_total = models.PositiveIntegerField(default=0)
    jobs_succeeded = models.PositiveIntegerField(default=0)
    jobs_failed = models.PositiveIntegerField(default=0)
    jobs_cancelled = models.PositiveIntegerField(default=0)
    recoveries = models.PositiveSmallIntegerField(
        default=0, help_text="Times maintenance restarted a lost expansion."
    )
    # Cost in USD: the estimate (count × the image model's price) when the request is saved,
    # the spend (succeeded images × price) as its jobs succeed.
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
        index.FilterField("status"),
        index.FilterField("image_model"),
        index.FilterField("llm"),
    ]

    class Meta:
        ordering = ["-created_at"]
        indexes = [models.Index(fields=["status", "-created_at"])]
        constraints = [
            models.CheckConstraint(
                condition=Q(count__gte=1) & Q(count__lte=MAX_COUNT), name="request_count_range"
            )
        ]

    # Moved by workers with conditional and F() updates. A full save of a copy read earlier
    # (the edit form, while jobs finish) would write back the values it read: a finished
    # job's count and spend would be lost and the request never settle.
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
        PENDING = "pending", "Pending"
        QUEUED = "queued", "Queued"
        RUNNING = "running", "Running"
        RETRYING = "retrying", "Retrying"
        SUCCEEDED = "succeeded", "Succeeded"
        FAILED = "failed", "Failed"
        CANCELLED = "cancelled", "Cancelled"

    TERMINAL = {Status.SUCCEEDED, Status.FAILED, Status.CANCELLED}
    OPEN = {Status.PENDING, Status.QUEUED, Status.RUNNING, Status.RETRYING}

    request = models.ForeignKey(GenerationRequest, on_delete=models.CASCADE, related_name="jobs")
    index = models.PositiveIntegerField()
    prompt = models.TextField()
    alt_text = models.CharField(
        max_length=250, blank=True, help_text="Written with the prompt; the image's description."
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
    infra_retries = models.PositiveSmallIntegerField(
        default=0, help_text="Retries after database, queue or media errors (not attempts)."
    )
    recoveries = models.PositiveSmallIntegerField(
        default=0, help_text="Times maintenance re-queued this job after its message was lost."
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


class Spend(models.Model):
    """One paid image, booked when its job succeeded: the figures of "spend today" and "this
    month" and of the monthly budget. Kept when its request is deleted (the money was spent)."""

    request = models.ForeignKey(
        GenerationRequest, null=True, on_delete=models.SET_NULL, related_name="spends"
    )
    job_id = models.PositiveBigIntegerField(null=True)
    amount = models.DecimalField(max_digits=12, decimal_places=4)
    spent_at = models.DateTimeField(db_index=True)

    def __str__(self) -> str:
        return f"{self.amount} USD at {self.spent_at:%Y-%m-%d %H:%M}"
