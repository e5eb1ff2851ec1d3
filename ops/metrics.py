"""The Prometheus metrics, computed at scrape time from the queue storage and the database.

Nothing is counted in the web process: every figure is read from where all workers on all
hosts write, so one scrape of any web process sees the whole fleet. A scrape is 9 SQL
queries and a few queue-storage calls (one per image model for its slots); the ledger's
counts are read from an index, and ``bench/metrics.py`` times a scrape with 100,000 runs.

If the queue storage or the database does not answer, the metrics of the other are still
served and ``karasu_metrics_source_up{source=...}`` says which part is missing.
"""

from __future__ import annotations

import datetime
import logging
from collections import defaultdict

from django.db.models import Case, Count, JSONField, Q, Sum, Value, When
from django.db.models.fields.json import KeyTransform
from django.utils import timezone
from huey.contrib.djhuey import HUEY
from prometheus_client import CollectorRegistry
from prometheus_client.core import (
    CounterMetricFamily,
    GaugeHistogramMetricFamily,
    GaugeMetricFamily,
)
from prometheus_client.exposition import choose_encoder

from cms.redaction import redact
from generation import costs
from generation.models import INTERNAL_ERROR, GenerationJob, GenerationRequest, Spend
from generation.providers import available_image_models, available_llms
from huey_tasks.models import TaskRun, WorkerHeartbeat
from huey_tasks.monitor import LIVE_WORKER_SECONDS
from ops.health import QUEUE_TIMEOUT
from ops.models import HeartbeatCrashCount, ProviderErrorCount

logger = logging.getLogger(__name__)

# Seconds, fitted to provider calls: a demo image in well under a second, FLUX schnell in
# one or two, Nano Banana Pro and the LLM's expansion in tens, up to the 300 s deadline.
DURATION_BUCKETS = (0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 20.0, 30.0, 60.0, 120.0, 300.0)
DURATION_WINDOW = datetime.timedelta(hours=1)
SHIM_SUFFIX = "djtasks.run"  # Wagtail's tasks run through this one Huey task

# Statuses whose runs have a finished_at (the duration window is on it).
DURATION_STATUSES = sorted(TaskRun.FINISHED | {TaskRun.Status.LOCKED})
QUEUE_STATES = ("queued", "scheduled", "leased", "dead")


def render(accept: str = "") -> tuple[bytes, str]:
    """The metrics, and their content type: OpenMetrics when the scraper's Accept header
    asks for it (Prometheus does), else the classic text format 0.0.4.

    The task durations are a gauge histogram, a type only OpenMetrics can name; in the
    classic format they read as a histogram's buckets plus two gauges.
    """
    registry = CollectorRegistry(auto_describe=False)
    registry.register(KarasuCollector())
    encoder, content_type = choose_encoder(accept)
    return encoder(registry), content_type


def task_label(task_name: str, first_arg) -> str:
    """The task's short name, as the job monitor shows it (Wagtail's task, not the shim)."""
    return TaskRun(task_name=task_name, args=[first_arg]).short_name


def _bucket_key(index: int) -> str:
    return f"le_{index}"


class KarasuCollector:
    """A prometheus_client collector: ``collect()`` reads everything afresh."""

    def __init__(self, huey=None, now: datetime.datetime | None = None):
        self.huey = huey or HUEY
        self.now = now

    def collect(self):
        now = self.now or timezone.now()
        up = {}
        families = []
        for source, parts in (
            ("queue", [self.queue_messages, self.provider_slots]),
            (
                "database",
                [
                    self.task_runs,
                    self.provider_errors,
                    self.heartbeat_crashes,
                    self.workers,
                    self.images_generated,
                    self.failed_jobs,
                    self.spend,
                ],
            ),
        ):
            up[source] = 1
            for part in parts:
                try:
                    families.extend(part(now))
                except Exception as exc:
                    up[source] = 0
                    logger.warning(
                        "Metrics: %s failed: %s",
                        part.__name__,
                        redact(f"{exc.__class__.__name__}: {exc}"),
                    )
                    break  # the source does not answer, so do not wait on it again
        source_up = GaugeMetricFamily(
            "karasu_metrics_source_up",
            "1 if this scrape could read the source (queue storage, database), else 0.",
            labels=["source"],
        )
        for source, value in up.items():
            source_up.add_metric([source], value)
        yield source_up
        yield from families

    # Queue storage -----------------------------------------------------------------------
    def queue_messages(self, now) -> list:
        storage = self.huey.storage
        if hasattr(storage, "health_check"):
            # Bounded, so an unreachable MongoDB fails this in seconds, not the client's 30 s.
            storage.health_check(QUEUE_TIMEOUT)
        family = GaugeMetricFamily(
            "karasu_queue_messages",
            "Messages in the queue storage by state: queued (ready to run, including "
            "expired leases), scheduled (retries, slot waits and delayed tasks not yet "
            "due or not yet promoted), leased (claimed by a worker, running) and dead "
            "(dead letters). Each message is in one state.",
            labels=["state"],
        )
        leasing = hasattr(storage, "leased_count")
        counts = {
            "queued": storage.queue_size(),
            "scheduled": storage.schedule_size(),
            "leased": storage.leased_count() if leasing else 0,
            "dead": storage.dead_letter_count() if leasing else 0,
        }
        for state in QUEUE_STATES:
            family.add_metric([state], counts[state])
        return [family]

    def provider_slots(self, now) -> list:
        from generation.limits import limiter_for

        in_use = GaugeMetricFamily(
            "karasu_provider_slots_in_use",
            "Concurrency slots of the image model held by a provider call right now, "
            "across all workers.",
            labels=["model"],
        )
        limit = GaugeMetricFamily(
            "karasu_provider_slots_limit",
            "Concurrency limit of the image model (its CONCURRENCY setting).",
            labels=["model"],
        )
        storage = self.huey.storage
        for name, _label in available_image_models():
            try:
                limiter = limiter_for(name)
            except Exception as exc:  # a broken model configuration skips only this model
                logger.warning(
                    "Metrics: image model %s: %s", name, redact(f"{exc.__class__.__name__}: {exc}")
                )
                continue
            in_use.add_metric([name], storage.slots_in_use(limiter.name))
            limit.add_metric([name], limiter.limit)
        return [in_use, limit]

    # Database ------------------------------------------------------------------------------
    def task_runs(self, now) -> list:
        """Runs by task and status, and the durations of the last hour's: three queries,
        each served by an index (see ``bench/metrics.py``)."""
        labels: dict[tuple, str] = {}

        def label(task_name: str, first_arg) -> str:
            key = (task_name, first_arg if isinstance(first_arg, str) else None)
            if key not in labels:
                labels[key] = task_label(*key)
            return labels[key]

        # 1. Every run, by task and status: an index-only scan of taskrun_task_status.
        runs: dict[tuple[str, str], int] = defaultdict(int)
        shims = set()
        for task_name, status, count in (
            TaskRun.objects.order_by().values_list("task_name", "status").annotate(runs=Count("*"))
        ):
            if task_name.endswith(SHIM_SUFFIX):
                shims.add(task_name)
            else:
                runs[label(task_name, None), status] += count
        # 2. Wagtail's tasks all run through Huey's one shim, named by their first argument.
        if shims:
            for task_name, first_arg, status, count in (
                TaskRun.objects.order_by()
                .filter(task_name__in=shims)
                .values_list("task_name", KeyTransform("0", "args"), "status")
                .annotate(runs=Count("*"))
            ):
                runs[label(task_name, first_arg), status] += count
        # 3. Durations of the runs finished in the last hour, bucketed in SQL. The
        # taskrun_finished index serves them with one range of finished_at per status.
        buckets = {
            _bucket_key(i): Count("pk", filter=Q(duration__lte=bound))
            for i, bound in enumerate(DURATION_BUCKETS)
        }
        durations: dict[tuple[str, str], list[float]] = {}
        for row in (
            TaskRun.objects.order_by()
            .filter(
                status__in=DURATION_STATUSES,
                finished_at__gte=now - DURATION_WINDOW,
                duration__isnull=False,
            )
            .annotate(
                first_arg=Case(
                    When(task_name__endswith=SHIM_SUFFIX, then=KeyTransform("0", "args")),
                    default=Value(None),
                    output_field=JSONField(),
                )
            )
            .values("task_name", "first_arg", "status")
            .annotate(count=Count("pk"), total=Sum("duration"), **buckets)
        ):
            totals = durations.setdefault(
                (label(row["task_name"], row["first_arg"]), row["status"]),
                [0.0] * (len(DURATION_BUCKETS) + 2),
            )
            for i in range(len(DURATION_BUCKETS)):
                totals[i] += row[_bucket_key(i)]
            totals[-2] += row["count"]
            totals[-1] += row["total"] or 0.0

        ledger = GaugeMetricFamily(
            "karasu_task_runs",
            "Task runs in the TaskRun ledger by task and status (queued, running, "
            "retrying, succeeded, failed, ...). A gauge: maintenance deletes finished runs "
            "after the retention period (7 days by default), so finished counts also go "
            "down.",
            labels=["task", "status"],
        )
        for task in sorted({task for task, _ in runs}):
            for status in TaskRun.Status.values:  # every status, zeros too, per task seen
                ledger.add_metric([task, status], runs.get((task, status), 0))

        histogram = GaugeHistogramMetricFamily(
            "karasu_task_duration_seconds",
            "Duration of the last attempt of task runs that finished in the last hour, by "
            "task and outcome (a gauge histogram: the distribution now, not a running "
            "total).",
            labels=["task", "status"],
        )
        for (task, status), totals in sorted(durations.items()):
            histogram.add_metric(
                [task, status],
                [(str(bound), totals[i]) for i, bound in enumerate(DURATION_BUCKETS)]
                + [("+Inf", totals[-2])],
                gsum_value=totals[-1],
            )
        return [ledger, histogram]

    def provider_errors(self, now) -> list:
        family = CounterMetricFamily(
            "karasu_provider_errors",
            "Failed provider calls by type (image, llm), provider (the image model's or "
            "LLM's name) and kind: transient (retried), permanent (not retried) and "
            "rate_limited (HTTP 429, retried; not also counted as transient).",
            labels=["type", "provider", "kind"],
        )
        counts = {
            (type_, provider, kind): count
            for type_, provider, kind, count in ProviderErrorCount.objects.values_list(
                "type", "provider", "kind", "count"
            )
        }
        # Zeros for every provider in use, so the first error is an increase, not a new series.
        Type = ProviderErrorCount.Type
        for type_, available in ((Type.IMAGE, available_image_models), (Type.LLM, available_llms)):
            for name, _label in available():
                for kind in ProviderErrorCount.Kind.values:
                    counts.setdefault((str(type_), name, kind), 0)
        for labels, count in sorted(counts.items()):
            family.add_metric(list(labels), count)
        return [family]

    def heartbeat_crashes(self, now) -> list:
        family = CounterMetricFamily(
            "karasu_heartbeat_crashes",
            "Crashes of a worker's heartbeat on all hosts, by heartbeat: lease (message "
            "leases and provider slots) and claims (job claims). A worker whose heartbeat "
            "crashed claims no new task until it beats again; its log has the traceback.",
            labels=["heartbeat"],
        )
        counts = dict.fromkeys(HeartbeatCrashCount.Heartbeat.values, 0)
        counts.update(HeartbeatCrashCount.objects.values_list("heartbeat", "count"))
        for heartbeat, count in sorted(counts.items()):
            family.add_metric([heartbeat], count)
        return [family]

    def workers(self, now) -> list:
        live = WorkerHeartbeat.objects.filter(
            stopped_at=None,
            last_seen__gte=now - datetime.timedelta(seconds=LIVE_WORKER_SECONDS),
        ).aggregate(processes=Count("pk"), threads=Sum("workers"))
        processes = GaugeMetricFamily(
            "karasu_workers_live",
            f"Worker processes (run_huey) on all hosts with a heartbeat in the last "
            f"{LIVE_WORKER_SECONDS} s.",
            value=live["processes"],
        )
        threads = GaugeMetricFamily(
            "karasu_worker_threads_live",
            "Worker threads of those processes.",
            value=live["threads"] or 0,
        )
        return [processes, threads]

    def images_generated(self, now) -> list:
        family = GaugeMetricFamily(
            "karasu_images_generated",
            "Generation jobs that have succeeded (an image filed), by image model. A gauge: "
            "it goes down when a request is deleted or a job regenerated.",
            labels=["model"],
        )
        # The requests' own succeeded-job counters: one row per request, not per job.
        counts = {
            name: total or 0
            for name, total in GenerationRequest.objects.order_by()
            .values_list("image_model")
            .annotate(Sum("jobs_succeeded"))
        }
        for name, _label in available_image_models():
            counts.setdefault(name, 0)
        for name, count in sorted(counts.items()):
            family.add_metric([name], count)
        return [family]

    def failed_jobs(self, now) -> list:
        family = GaugeMetricFamily(
            "karasu_failed_jobs",
            "Generation jobs that have failed, by cause: karasu (a bug in Karasu's own code, "
            "whose traceback is in the job monitor) or other (the provider, a deadline, a "
            "lost worker). A gauge: it goes down when failed jobs are retried.",
            labels=["cause"],
        )
        failed = GenerationJob.objects.filter(status=GenerationJob.Status.FAILED)
        ours = failed.filter(error__startswith=INTERNAL_ERROR).count()
        family.add_metric(["karasu"], ours)
        family.add_metric(["other"], failed.count() - ours)
        return [family]

    def spend(self, now) -> list:
        total = Spend.objects.aggregate(total=Sum("amount"))["total"] or 0
        summary = costs.spend_summary(now)
        return [
            CounterMetricFamily(
                "karasu_spend_usd",
                "Money spent on images, in USD (each paid image is booked when its job succeeds).",
                value=float(total),
            ),
            GaugeMetricFamily(
                "karasu_spend_today_usd",
                "Spent today (the site's TIME_ZONE), in USD.",
                value=float(summary["today"]),
            ),
            GaugeMetricFamily(
                "karasu_spend_month_usd",
                "Spent this calendar month (the site's TIME_ZONE), in USD.",
                value=float(summary["month"]),
            ),
        ]
