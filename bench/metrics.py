"""Scrape time of GET /metrics at 1k, 10k and 100k TaskRun rows.

Builds a scratch SQLite database (or uses TEST_DATABASE_URL's server with a scratch
database) and a scratch queue file, fills the ledger (with as many generation jobs, a paid
image per succeeded job, a few workers and provider errors, and messages in every queue
state), and times GET /metrics through Django's test client with the bearer token: median
of 7 scrapes after a warm-up, plus the number of SQL queries. Target: <= 100 ms at 100k.

    python bench/metrics.py
"""

from __future__ import annotations

import datetime
import os
import statistics
import sys
import tempfile
import time
from decimal import Decimal
from pathlib import Path

sys.path[0] = str(Path(__file__).resolve().parent.parent)
os.environ.setdefault("KARASU_TEST_DATA_DIR", tempfile.mkdtemp(prefix="karasu-bench-"))
os.environ["DJANGO_SETTINGS_MODULE"] = "cms.settings.test"

import django  # noqa: E402

django.setup()

from django.db import connection  # noqa: E402
from django.test import Client, override_settings  # noqa: E402
from django.test.utils import CaptureQueriesContext, setup_test_environment  # noqa: E402
from django.utils import timezone  # noqa: E402

SIZES = [1_000, 10_000, 100_000]
JOBS_PER_REQUEST = 100
TOKEN = "bench-metrics-token"
SHIM = "huey.contrib.djhuey.djtasks.run"
WAGTAIL_TASK = "wagtail.search.tasks.insert_or_update_object_task"


def populate(total: int, start: int) -> None:
    """Runs start..total, and as many jobs (a request per JOBS_PER_REQUEST), spend rows."""
    from generation.models import GenerationJob, GenerationRequest, Spend
    from huey_tasks.models import TaskRun

    statuses = ["succeeded"] * 8 + ["failed", "retrying", "queued", "running"]
    now = timezone.now()
    requests = GenerationRequest.objects.bulk_create(
        GenerationRequest(
            theme=f"Theme {i}",
            count=JOBS_PER_REQUEST,
            status="completed",
            image_model="demo" if i % 2 else "flux-schnell",
        )
        for i in range(start // JOBS_PER_REQUEST, total // JOBS_PER_REQUEST)
    )
    jobs = GenerationJob.objects.bulk_create(
        (
            GenerationJob(
                request=request,
                index=i,
                prompt=f"prompt {i}",
                status="succeeded" if i % 5 else "failed",
            )
            for request in requests
            for i in range(JOBS_PER_REQUEST)
        ),
        batch_size=5000,
    )
    Spend.objects.bulk_create(
        (
            Spend(
                request_id=job.request_id,
                job_id=job.pk,
                amount=Decimal("0.003"),
                spent_at=now - datetime.timedelta(minutes=job.pk % 50_000),
            )
            for job in jobs
            if job.status == "succeeded"
        ),
        batch_size=5000,
    )

    def name_and_args(i):
        if i % 10 == 3:  # Wagtail's own tasks, through the shim
            return SHIM, [WAGTAIL_TASK, "cms.karasuimage", i]
        return (
            "generation.tasks.generate_image" if i % 50 else "generation.tasks.expand_prompt"
        ), [i]

    TaskRun.objects.bulk_create(
        (
            TaskRun(
                task_name=name_and_args(i)[0],
                task_id=f"bench-{i}",
                status=statuses[i % len(statuses)],
                attempts=1 + i % 3,
                deliveries=1,
                args=name_and_args(i)[1],
                enqueued_at=now - datetime.timedelta(seconds=i),
                started_at=now - datetime.timedelta(seconds=i),
                finished_at=now - datetime.timedelta(seconds=i - 1),
                duration=0.2 + (i % 100) / 10,
            )
            for i in range(start, total)
        ),
        batch_size=5000,
    )


def fill_queue() -> None:
    from huey.contrib.djhuey import HUEY

    storage = HUEY.storage
    storage.flush_all()
    storage.enqueue_many([b"queued"] * 500)
    for _ in range(20):
        storage.claim()
    for _ in range(50):
        storage.add_to_schedule(b"later", timezone.now() + datetime.timedelta(hours=1))


def main() -> None:
    from huey_tasks.models import WorkerHeartbeat
    from ops.counters import increment

    setup_test_environment()
    db = connection.creation.create_test_db(verbosity=0, autoclobber=True)
    try:
        now = timezone.now()
        WorkerHeartbeat.objects.bulk_create(
            WorkerHeartbeat(host=f"host-{i}", pid=i, workers=20, started_at=now, last_seen=now)
            for i in range(20)
        )
        for _ in range(3):
            increment("image", "demo", "transient")
            increment("image", "flux-schnell", "rate_limited")
        fill_queue()
        client = Client()
        print(f"database: {connection.vendor} ({db})")
        print(f"{'runs':>8} {'median ms':>10} {'min ms':>8} {'queries':>8}")
        done = 0
        with override_settings(KARASU_METRICS_TOKEN=TOKEN):
            for size in SIZES:
                populate(size, done)
                done = size
                headers = {"Authorization": f"Bearer {TOKEN}"}
                response = client.get("/metrics", headers=headers)  # warm-up
                assert response.status_code == 200, response.status_code
                assert b'karasu_metrics_source_up{source="database"} 1.0' in response.content
                timings = []
                for _ in range(7):
                    start = time.perf_counter()
                    with CaptureQueriesContext(connection) as queries:
                        response = client.get("/metrics", headers=headers)
                    timings.append((time.perf_counter() - start) * 1000)
                    assert response.status_code == 200
                print(
                    f"{size:>8} {statistics.median(timings):10.1f} {min(timings):8.1f}"
                    f" {len(queries):8}"
                )
    finally:
        connection.creation.destroy_test_db(db, verbosity=0)


if __name__ == "__main__":
    main()
