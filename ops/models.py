from __future__ import annotations

from django.db import models
from django.utils import timezone


class ProviderErrorCount(models.Model):
    """How many calls to a provider failed, by kind, in one row per (type, provider, kind)
    counted up atomically (see ``ops.counters``). The metrics read it at scrape time, so the
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


class HeartbeatCrashCount(models.Model):
    """How many times a worker's heartbeat crashed, in one row per heartbeat counted up
    atomically (see ``ops.counters``) from ``huey_tasks.signals.heartbeat_crashed``.
    A crashed heartbeat is logged where it happened and stops that worker claiming until it
    beats again; this count makes it visible to alerts on the metrics."""

    class Heartbeat(models.TextChoices):
        LEASE = "lease", "Message leases and provider slots"
        CLAIMS = "claims", "Job claims"

    heartbeat = models.CharField(max_length=20, choices=Heartbeat.choices, unique=True)
    count = models.PositiveBigIntegerField(default=0)
    last_at = models.DateTimeField(default=timezone.now, help_text="The last one counted.")

    class Meta:
        ordering = ["heartbeat"]

    def __str__(self) -> str:
        return f"{self.heartbeat} heartbeat crashes: {self.count}"
