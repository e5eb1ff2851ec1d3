"""Liveness probe of a worker host: exit 0 when a worker process on this host has sent a
heartbeat within --max-age seconds, non-zero otherwise (one line, no traceback).

Workers write a heartbeat every 10 s (huey_tasks.queue.LeasingConsumer.beat_interval) into
the WorkerHeartbeat table, under the host name ``socket.gethostname()``.
"""

from __future__ import annotations

import datetime

from django.conf import settings
from django.core.management.base import BaseCommand, CommandError
from django.db import DatabaseError
from django.utils import timezone

from cms.redaction import redact
from huey_tasks.ledger import HOST
from huey_tasks.models import WorkerHeartbeat

DEFAULT_MAX_AGE = 60.0
EXIT_STALE = 1  # no live worker on this host
EXIT_UNKNOWN = 2  # the database could not be asked


class Command(BaseCommand):
    help = (
        "Exit 0 when a worker (run_huey) on this host has sent a heartbeat within --max-age "
        "seconds; exit 1 otherwise, 2 when the database cannot be read. For liveness probes."
    )
    requires_system_checks: list = []  # a probe does as little work as possible

    def add_arguments(self, parser):
        parser.add_argument(
            "--max-age",
            type=float,
            default=DEFAULT_MAX_AGE,
            help=f"Seconds since the last heartbeat (default {DEFAULT_MAX_AGE:.0f}; workers "
            "beat every 10 s).",
        )

    def handle(self, *args, max_age: float, **options):
        if max_age <= 0:
            raise CommandError("--max-age must be positive", returncode=EXIT_UNKNOWN)
        now = timezone.now()
        try:
            worker = (
                WorkerHeartbeat.objects.filter(
                    host=HOST,
                    stopped_at=None,
                    last_seen__gte=now - datetime.timedelta(seconds=max_age),
                )
                .order_by("-last_seen")
                .first()
            )
        except DatabaseError as exc:
            raise CommandError(
                f"cannot read worker heartbeats: {redact(f'{exc.__class__.__name__}: {exc}')}",
                returncode=EXIT_UNKNOWN,
            ) from None
        if worker is None:
            hint = ""
            if not settings.KARASU.get("LEDGER", True):
                hint = " (KARASU_LEDGER is off: workers record no heartbeats)"
            raise CommandError(
                f"no running worker on {HOST} has sent a heartbeat in the last {max_age:g} s{hint}",
                returncode=EXIT_STALE,
            )
        age = (now - worker.last_seen).total_seconds()
        self.stdout.write(
            f"ok: worker {worker.host}:{worker.pid} ({worker.workers} threads), "
            f"last heartbeat {max(age, 0):.0f} s ago"
        )
