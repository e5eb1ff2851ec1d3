from __future__ import annotations

from django.db import models
from django.utils import timezone
from django.utils.translation import gettext_lazy as _


class TaskRun(models.Model):
    """One row per Huey task id: what happened to it, written from Huey's signals."""

    class Status(models.TextChoices):
        QUEUED = "queued", _("Queued")
        RUNNING = "running", _("Running")
        RETRYING = "retrying", _("Retrying")
        SUCCEEDED = "succeeded", _("Succeeded")
        FAILED = "failed", _("Failed")
        CANCELLED = "cancelled", _("Cancelled")
        REVOKED = "revoked", _("Revoked")
        EXPIRED = "expired", _("Expired")
        RATE_LIMITED = "rate_limited", _("Waiting for a slot")
        LOCKED = "locked", _("Locked")
        DEAD = "dead", _("Dead letter")

    FINISHED = {
        Status.SUCCEEDED,
        Status.FAILED,
        Status.CANCELLED,
        Status.REVOKED,
        Status.EXPIRED,
        Status.DEAD,
    }

    task_name = models.CharField(_("task name"), max_length=200, db_index=True)
    task_id = models.CharField(_("task id"), max_length=64, unique=True)
    status = models.CharField(
        _("status"), max_length=12, choices=Status.choices, default=Status.QUEUED
    )
    attempts = models.PositiveIntegerField(_("attempts"), default=0)
    deliveries = models.PositiveIntegerField(_("deliveries"), default=0)
    args = models.JSONField(
        _("arguments"), default=list, blank=True, help_text=_("Arguments, secrets redacted.")
    )
    enqueued_at = models.DateTimeField(_("enqueued"), default=timezone.now)
    started_at = models.DateTimeField(_("started"), null=True, blank=True)
    finished_at = models.DateTimeField(_("finished"), null=True, blank=True)
    duration = models.FloatField(
        _("duration"), null=True, blank=True, help_text=_("Seconds, last attempt.")
    )
    worker_host = models.CharField(_("worker host"), max_length=255, blank=True)
    worker_pid = models.PositiveIntegerField(_("worker PID"), null=True, blank=True)
    worker_thread = models.CharField(_("worker thread"), max_length=100, blank=True)
    error_class = models.CharField(_("error class"), max_length=200, blank=True)
    error_message = models.CharField(_("error message"), max_length=500, blank=True)
    traceback = models.TextField(_("traceback"), blank=True)
    log = models.TextField(_("log"), blank=True)
    generation_request = models.ForeignKey(
        "generation.GenerationRequest",
        verbose_name=_("generation request"),
        null=True,
        blank=True,
        on_delete=models.SET_NULL,
        related_name="task_runs",
        db_constraint=False,
    )
    generation_job = models.ForeignKey(
        "generation.GenerationJob",
        verbose_name=_("generation job"),
        null=True,
        blank=True,
        on_delete=models.SET_NULL,
        related_name="task_runs",
        db_constraint=False,
    )

    class Meta:
        verbose_name = _("task run")
        verbose_name_plural = _("task runs")
        ordering = ["-enqueued_at", "-pk"]
        indexes = [
            models.Index(fields=["-enqueued_at", "-id"], name="taskrun_recent"),
            models.Index(fields=["status", "-enqueued_at"], name="taskrun_status"),
            models.Index(fields=["task_name", "-enqueued_at"], name="taskrun_task"),
            models.Index(fields=["status", "finished_at"], name="taskrun_finished"),
            models.Index(fields=["generation_request", "status"], name="taskrun_request"),
            # Lets the metrics count runs by task and status (ops.metrics) with an
            # index-only scan.
            models.Index(fields=["task_name", "status"], name="taskrun_task_status"),
        ]

    def __str__(self) -> str:
        return f"{self.short_name} {self.task_id}"

    @property
    def short_name(self) -> str:
        """The task's function name; for Wagtail's own tasks, Wagtail's task, not the shim."""
        # Wagtail's django-tasks all run through Huey's one "djtasks.run" shim, whose first
        # argument is the real task's dotted path.
        if self.task_name.endswith("djtasks.run") and self.args and isinstance(self.args[0], str):
            return self.args[0].rsplit(".", 1)[-1]
        return self.task_name.rsplit(".", 1)[-1]


class WorkerHeartbeat(models.Model):
    """A live consumer process: written when it starts, refreshed while it runs."""

    host = models.CharField(max_length=255)
    pid = models.PositiveIntegerField()
    workers = models.PositiveIntegerField()
    worker_type = models.CharField(max_length=20, default="thread")
    started_at = models.DateTimeField(default=timezone.now)
    last_seen = models.DateTimeField(default=timezone.now, db_index=True)
    stopped_at = models.DateTimeField(null=True, blank=True)

    class Meta:
        constraints = [
            models.UniqueConstraint(fields=["host", "pid", "started_at"], name="worker_unique")
        ]
        ordering = ["-last_seen"]

    def __str__(self) -> str:
        return f"{self.host}:{self.pid}"
