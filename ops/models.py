from __future__ import annotations

from django.db import models
from django.utils import timezone


class ProviderErrorCount(models.Model):
    """How many calls to a provider failed, by kind: one row per (type, provider, kind),
    counted up atomically (see ``ops.counters``). Read by the metrics at scrape time, so the
    count is the whole fleet's, whichever worker made the call."""

    class Type(models.TextChoices):
        IMAGE = "image", "Image model"
        LLM = "llm", "LLM"

    class Kind(models.TextChoices):
        TRANSIENT = "transient", "Transient"
        PERMANENT = "permanent", "Permanent"
        RATE_LIMITED = "rate_limited", "Rate-limited"

    type = models.CharField(max_length=5, choices=Type.choices)
    provider = models.CharField(max_length=100, help_text="Image model or LLM name.")
    kind = models.CharField(max_length=12, choices=Kind.choices)
    count = models.PositiveBigIntegerField(default=0)
    last_at = models.DateTimeField(default=timezone.now, help_text="The last one counted.")

    class Meta:
        constraints = [
            models.UniqueConstraint(
                fields=["type", "provider", "kind"], name="provider_error_unique"
            )
        ]
        ordering = ["type", "provider", "kind"]

    def __str__(self) -> str:
        return f"{self.type} {self.provider} {self.kind}: {self.count}"
