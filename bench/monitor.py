"""Job monitor render time at 1k, 10k and 100k TaskRun rows (with 1,000 requests).

Builds a scratch SQLite database (or uses TEST_DATABASE_URL's server with a scratch
database), fills the ledger, and times the monitor's main view through Django's test client:
median of 5 renders after a warm-up, plus the number of SQL queries. Target: < 200 ms at 100k.

    python bench/monitor.py
"""

from __future__ import annotations

import datetime
import os
import statistics
import sys
import tempfile
import time
from pathlib import Path

sys.path[0] = str(Path(__file__).resolve().parent.parent)
os.environ.setdefault("KARASU_TEST_DATA_DIR", tempfile.mkdtemp(prefix="karasu-bench-"))
os.environ["DJANGO_SETTINGS_MODULE"] = "cms.settings.test"

import django  # noqa: E402

django.setup()

from django.db import connection  # noqa: E402
from django.test import Client  # noqa: E402
from django.test.utils import CaptureQueriesContext, setup_test_environment  # noqa: E402
from django.utils import timezone  # noqa: E402

SIZES = [1_000, 10_000, 100_000]
REQUESTS = 1_000


def populate(total: int, start: int) -> None:
    from generation.models import GenerationRequest
    from huey_tasks.models import TaskRun

    request_ids = list(GenerationRequest.objects.values_list("pk", flat=True))
    statuses = ["succeeded"] * 8 + ["failed", "retrying", "queued", "running"]
    now = timezone.now()
    TaskRun.objects.bulk_create(
        (
            TaskRun(
                task_name="generate_image" if i % 50 else "expand_prompt",
                task_id=f"bench-{i}",
                status=statuses[i % len(statuses)],
                attempts=1 + i % 3,
                deliveries=1,
                args=[i],
                enqueued_at=now - datetime.timedelta(seconds=i),
                started_at=now - datetime.timedelta(seconds=i),
                finished_at=now - datetime.timedelta(seconds=i - 1),
                duration=0.2 + (i % 100) / 100,
                error_message="demo: simulated transient failure" if i % 12 == 8 else "",
                generation_request_id=request_ids[i % len(request_ids)],
            )
            for i in range(start, total)
        ),
        batch_size=5000,
    )


def main() -> None:
    from django.contrib.auth import get_user_model

    from generation.models import GenerationRequest

    setup_test_environment()
    db = connection.creation.create_test_db(verbosity=0, autoclobber=True)
    try:
        GenerationRequest.objects.bulk_create(
            GenerationRequest(
                theme=f"Theme {i}",
                count=50,
                jobs_total=50,
                jobs_succeeded=i % 50,
                status="generating" if i % 10 == 0 else "completed",
                finished_at=timezone.now(),
            )
            for i in range(REQUESTS)
        )
        user = get_user_model().objects.create_superuser("bench", "b@example.com", "pw")
        client = Client()
        client.force_login(user)
        print(f"database: {connection.vendor} ({db})")
        print(f"{'runs':>8} {'median ms':>10} {'min ms':>8} {'queries':>8}")
        done = 0
        for size in SIZES:
            populate(size, done)
            done = size
            client.get("/admin/job-monitor/")  # warm-up
            timings = []
            for _ in range(5):
                start = time.perf_counter()
                with CaptureQueriesContext(connection) as queries:
                    response = client.get("/admin/job-monitor/")
                timings.append((time.perf_counter() - start) * 1000)
                assert response.status_code == 200
            print(
                f"{size:>8} {statistics.median(timings):10.1f} {min(timings):8.1f} {len(queries):8}"
            )
    finally:
        connection.creation.destroy_test_db(db, verbosity=0)


if __name__ == "__main__":
    main()
