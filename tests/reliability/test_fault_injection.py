"""Randomised fault schedules over 50-job batches: the queue storage and the database fail
chosen calls while a real consumer runs the pipeline. Whatever fails, every job and request
ends final, with one image per succeeded job, a reason for every failure, the queue empty
and never two provider calls in flight for one job."""

import threading

import pytest
from django.db import InterfaceError, OperationalError, connection
from huey.contrib.djhuey import HUEY
from wagtail.images import get_image_model

from generation import reconcile
from generation.models import GenerationJob, GenerationRequest
from generation.tasks import expand_prompt, queue_jobs
from tests.support.consumers import wait_for
from tests.support.factories import make_request
from tests.support.faults import FaultyDatabase, FaultyStorage
from tests.support.provider_calls import overlapping_calls

pytestmark = [
    pytest.mark.django_db(transaction=True),
    pytest.mark.usefixtures("collections"),
    pytest.mark.slow,
]
Job = GenerationJob.Status
Image = get_image_model()
JOBS = 50


def quiet() -> bool:
    storage = HUEY.storage
    return storage.queue_size() + storage.schedule_size() + storage.leased_count() == 0


def nothing_buried() -> bool:
    return HUEY.storage.dead_letter_count() == 0


def all_final(request) -> bool:
    request.refresh_from_db()
    return (
        request.status in GenerationRequest.TERMINAL
        and not request.jobs.filter(status__in=GenerationJob.OPEN).exists()
    )


@pytest.mark.parametrize("faults, seed", [("storage", 1), ("database", 2), ("both", 3)])
def test_random_faults_leave_nothing_open(
    faults,
    seed,
    queue_backend,
    demo,
    call_log,
    settings,
    thread_consumer_factory,
    reliability_report,
):
    demo(latency=0.05, failure_rate=0.1, concurrency=8)
    settings.KARASU["RECONCILE"] = {"GRACE_SECONDS": 0}
    original = HUEY.storage
    requests = [make_request(JOBS)]
    faulty_storage = FaultyStorage(
        original, seed=seed, rate=0.05 if faults in ("storage", "both") else 0
    )
    faulty_db = FaultyDatabase(seed=seed, rate=0.03 if faults in ("database", "both") else 0)
    HUEY.storage = faulty_storage
    try:
        with faulty_db.installed(), thread_consumer_factory(workers=8):
            job_ids = list(requests[0].jobs.values_list("pk", flat=True))
            for _ in range(10):  # the fan-out itself may fail: retried, as expand_prompt is
                try:
                    queue_jobs(job_ids)
                    break
                except Exception:
                    continue
            try:
                wait_for(lambda: all_final(requests[0]), 60, interval=0.5, message="final")
            except AssertionError:
                pass  # what is left open is for redelivery and maintenance, below
    finally:
        faulty_storage.active = False
        faulty_db.active = False
        HUEY.storage = original
    # What the faults left behind is delivered again or repaired by maintenance: let both
    # run to the end, as they would in production.
    with thread_consumer_factory(workers=4):
        for _ in range(10):
            reconcile.reconcile(HUEY, queue_jobs, expand_prompt, grace=0)
            if quiet() and all(all_final(r) for r in requests):
                break
            wait_for(quiet, 30, interval=0.2, message="queue drained")
    if faults != "database":
        assert sum(faulty_storage.injected.values()) > 0
    if faults != "storage":
        assert faulty_db.injected > 0
    scenario = {
        "storage": "queue storage errors, 5% of calls",
        "database": "database errors, 3% of writes",
        "both": "storage and database errors",
    }[faults]
    figures = reliability_report(f"{scenario} ({queue_backend})", requests, call_log)
    assert figures["lost"] == figures["stuck"] == figures["duplicate images"] == 0
    for request in requests:
        assert all_final(request)
        jobs = list(request.jobs.all())
        assert {job.status for job in jobs} <= GenerationJob.TERMINAL
        succeeded = [job for job in jobs if job.status == Job.SUCCEEDED]
        images = Image.objects.filter(generation_request_id=request.pk)
        assert sorted(images.values_list("generation_job_id", flat=True)) == sorted(
            job.pk for job in succeeded
        )  # one image per succeeded job, none for the others
        assert all(job.image_id for job in succeeded)
        assert all(job.error for job in jobs if job.status == Job.FAILED)
        assert request.jobs_succeeded == len(succeeded)
        assert request.jobs_succeeded + request.jobs_failed + request.jobs_cancelled == JOBS
        # Infrastructure errors never fail a job, and the demo's transient failures stop
        # short of its retries: every job ends with its image.
        assert request.jobs_succeeded == JOBS, [job.error for job in jobs if job.error]
    assert quiet() and nothing_buried()
    assert overlapping_calls(call_log) == []
    # A database error after a paid call is retried in place: no image is paid for twice.
    assert figures["paid twice"] == 0


class BackendKiller:
    """Terminates the test database's other server connections at random moments, as a
    failover or an administrator's ``pg_terminate_backend`` does: transactions are cut
    mid-way by the real server, not by a Python exception raised before the SQL ran."""

    def __init__(self, seed: int, interval: float = 0.15):
        import random

        self.random = random.Random(seed)
        self.interval = interval
        self.killed = 0
        self.mid_transaction = 0
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def __enter__(self):
        self._thread.start()
        return self

    def __exit__(self, *exc):
        self._stop.set()
        self._thread.join(10)

    def _run(self) -> None:
        import psycopg

        params = connection.get_connection_params()
        with psycopg.connect(**params, autocommit=True) as killer:
            while not self._stop.wait(self.random.uniform(0.5, 1.5) * self.interval):
                rows = killer.execute(
                    "SELECT pid, state FROM pg_stat_activity WHERE datname = current_database()"
                    " AND pid <> pg_backend_pid() AND backend_type = 'client backend'"
                    " AND state IN ('active', 'idle in transaction')"
                ).fetchall()
                if not rows:
                    continue
                pid, state = self.random.choice(rows)
                if killer.execute("SELECT pg_terminate_backend(%s)", [pid]).fetchone()[0]:
                    self.killed += 1
                    self.mid_transaction += state == "idle in transaction"


def settled_despite_kills(request) -> bool:
    """``all_final``, on a fresh connection when the killer cut this thread's own."""
    try:
        return all_final(request)
    except (OperationalError, InterfaceError):
        connection.close()
        return False


def test_connections_killed_by_postgresql_mid_batch_lose_and_pay_twice_nothing(
    demo, call_log, thread_consumer_factory, reliability_report
):
    if connection.vendor != "postgresql":
        pytest.skip("kills real server connections: runs in the PostgreSQL pass")
    demo(latency=0.05, concurrency=8)
    request = make_request(JOBS)
    job_ids = list(request.jobs.values_list("pk", flat=True))
    with thread_consumer_factory(workers=8), BackendKiller(seed=4) as killer:
        queue_jobs(job_ids)
        wait_for(lambda: settled_despite_kills(request), 120, interval=0.5, message="final")
    connection.close()  # the killer may have cut this thread's connection too
    figures = reliability_report(
        "PostgreSQL connections terminated by the server", [request], call_log
    )
    assert killer.killed >= 5, "the batch ran without the server cutting anything"
    request.refresh_from_db()
    assert request.jobs_succeeded == JOBS, list(request.jobs.exclude(error="").values("error"))
    images = Image.objects.filter(generation_request_id=request.pk)
    assert sorted(images.values_list("generation_job_id", flat=True)) == sorted(job_ids)
    assert figures["lost"] == figures["stuck"] == figures["duplicate images"] == 0
    assert figures["paid twice"] == 0
    assert overlapping_calls(call_log) == []
