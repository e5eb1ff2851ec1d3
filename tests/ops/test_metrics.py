"""GET /metrics: off without KARASU_METRICS_TOKEN, only with the bearer token, and figures that
follow real work (a real consumer running demo requests, the queue storage, the ledger)."""

import datetime
import time
from decimal import Decimal

import pymongo
import pytest
from django.core.management import call_command
from django.db import connection
from django.test import Client
from django.utils import timezone
from huey.contrib.djhuey import HUEY
from pymongo import MongoClient

from generation.models import GenerationJob, GenerationRequest, Spend, internal_error
from huey_tasks.models import TaskRun, WorkerHeartbeat
from ops.models import HeartbeatCrashCount
from tests.support.consumers import wait_for
from tests.support.factories import make_request
from tests.support.heartbeat import failing_heartbeat
from tests.support.metrics import TOKEN, Samples, parse
from tests.support.tasks import record_run

pytestmark = pytest.mark.django_db


def configure_demo(settings, **knobs):
    from generation.limits import limiter_for
    from generation.providers import reset_cache

    settings.KARASU["IMAGE_MODELS"]["demo"] = {
        **settings.KARASU["IMAGE_MODELS"]["demo"],
        "LATENCY": 0,
        "FAILURE_RATE": 0,
        "REJECT_RATE": 0,
        "CONCURRENCY": 8,
        **{key.upper(): value for key, value in knobs.items()},
    }
    reset_cache()
    limiter_for.cache_clear()


# Access --------------------------------------------------------------------------------
def test_metrics_are_not_served_when_no_token_is_configured(client, settings):
    settings.KARASU_METRICS_TOKEN = ""
    for headers in ({}, {"Authorization": "Bearer "}, {"Authorization": "Bearer anything"}):
        response = client.get("/metrics", headers=headers)
        assert response.status_code == 404
        assert b"karasu_" not in response.content


@pytest.mark.parametrize(
    "authorization",
    [
        None,
        "",
        "Bearer",
        "Bearer wrong-token",
        f"Bearer {TOKEN}x",
        f"Bearer {TOKEN[:-1]}",
        f"Basic {TOKEN}",
        TOKEN,
        "Bearer kärasu",  # not ASCII: refused, not a server error
    ],
)
def test_metrics_refuse_a_missing_or_wrong_token(client, metrics_token, authorization):
    headers = {} if authorization is None else {"Authorization": authorization}
    response = client.get("/metrics", headers=headers)
    assert response.status_code == 401
    assert response["WWW-Authenticate"].startswith("Bearer")
    assert b"karasu_" not in response.content


def test_metrics_with_the_token_are_the_prometheus_text_format(client, metrics_token):
    for scheme in ("Bearer", "bearer"):
        response = client.get("/metrics", headers={"Authorization": f"{scheme} {TOKEN}"})
        assert response.status_code == 200
        assert response["Content-Type"] == "text/plain; version=0.0.4; charset=utf-8"
        assert "no-store" in response["Cache-Control"]
        samples = Samples(parse(response.content.decode()))
        assert all(name.startswith("karasu_") for name in samples.names())
        assert samples.value("karasu_metrics_source_up", source="database") == 1
        assert samples.value("karasu_metrics_source_up", source="queue") == 1


def test_metrics_answer_get_only(client, metrics_token):
    headers = {"Authorization": f"Bearer {TOKEN}"}
    assert client.post("/metrics", headers=headers).status_code == 405
    assert client.put("/metrics", headers=headers).status_code == 405
    # Without the token, no method tells that metrics are there.
    for method in (client.post, client.put, client.options, client.delete):
        assert method("/metrics").status_code == 401


def test_prometheus_gets_openmetrics_with_the_durations_as_a_gauge_histogram(client, metrics_token):
    from prometheus_client.openmetrics.parser import text_string_to_metric_families

    TaskRun.objects.create(
        task_name="generation.tasks.generate_image",
        task_id="run-1",
        status=TaskRun.Status.SUCCEEDED,
        duration=1.5,
        finished_at=timezone.now(),
    )
    accept = (
        "application/openmetrics-text;version=1.0.0,application/openmetrics-text;"
        "version=0.0.1;q=0.75,text/plain;version=0.0.4;q=0.5,*/*;q=0.1"
    )
    response = client.get(
        "/metrics", headers={"Authorization": f"Bearer {TOKEN}", "Accept": accept}
    )
    assert response["Content-Type"].startswith("application/openmetrics-text; version=1.0.0")
    families = {
        family.name: family for family in text_string_to_metric_families(response.content.decode())
    }
    durations = families["karasu_task_duration_seconds"]
    assert durations.type == "gaugehistogram"
    assert families["karasu_images_generated"].type == "gauge"
    assert families["karasu_provider_errors"].type == "counter"


# Queue storage -------------------------------------------------------------------------
def test_queue_messages_by_state(queue_backend, scrape):
    storage = HUEY.storage
    samples = scrape()
    for state in ("queued", "scheduled", "leased", "dead"):
        assert samples.value("karasu_queue_messages", state=state) == 0

    # One message whose leases keep running out ends in the dead letters.
    storage.enqueue(b"doomed", priority=100)
    deadline = time.monotonic() + 10
    while storage.dead_letter_count() == 0 and time.monotonic() < deadline:
        storage.claim(lease_seconds=0.001)
        time.sleep(0.002)
    storage.enqueue_many([b"work"] * 5)
    assert storage.claim() and storage.claim()  # two running
    for _ in range(3):
        storage.add_to_schedule(b"retry", timezone.now() + datetime.timedelta(hours=1))

    samples = scrape()
    assert samples.value("karasu_queue_messages", state="queued") == 3
    assert samples.value("karasu_queue_messages", state="leased") == 2
    assert samples.value("karasu_queue_messages", state="scheduled") == 3
    assert samples.value("karasu_queue_messages", state="dead") == 1


def test_provider_slots_in_use_and_limit(settings, scrape):
    from generation.limits import limiter_for

    configure_demo(settings, concurrency=3)
    HUEY.storage.flush_slots()
    samples = scrape()
    assert samples.value("karasu_provider_slots_limit", model="demo") == 3
    assert samples.value("karasu_provider_slots_in_use", model="demo") == 0
    limiter = limiter_for("demo")
    with limiter.slot(), limiter.slot():
        samples = scrape()
        assert samples.value("karasu_provider_slots_in_use", model="demo") == 2
        assert samples.value("karasu_provider_slots_limit", model="demo") == 3
    assert scrape().value("karasu_provider_slots_in_use", model="demo") == 0


def test_an_unreachable_queue_storage_leaves_the_database_metrics_and_says_so(scrape, monkeypatch):
    # A MongoDB that does not answer: the scrape must not wait the client's 30 s for it.
    unreachable = MongoClient("mongodb://127.0.0.1:9/karasu", connect=False)

    def ping(timeout):  # MongoStorage.health_check, on a server that is not there
        with pymongo.timeout(timeout):
            unreachable.karasu.command("ping")

    monkeypatch.setattr(HUEY.storage, "health_check", ping)
    monkeypatch.setattr("ops.metrics.QUEUE_TIMEOUT", 0.5)
    GenerationRequest.objects.create(theme="Crows", count=2, jobs_succeeded=2)
    started = time.monotonic()
    samples = scrape()
    assert time.monotonic() - started < 5
    assert samples.value("karasu_metrics_source_up", source="queue") == 0
    assert samples.value("karasu_metrics_source_up", source="database") == 1
    assert samples.get_value("karasu_queue_messages", state="queued") is None
    assert samples.value("karasu_images_generated", model="demo") == 2


@pytest.mark.django_db(transaction=True)
def test_an_unreachable_database_leaves_the_queue_metrics_and_says_so(
    metrics_token, monkeypatch, tmp_path
):
    HUEY.storage.flush_all()
    HUEY.storage.enqueue_many([b"work"] * 2)
    connection.close()
    if connection.vendor == "sqlite":
        monkeypatch.setitem(connection.settings_dict, "NAME", str(tmp_path / "gone" / "db"))
    else:
        monkeypatch.setitem(connection.settings_dict, "PORT", "9")
    try:
        response = Client().get("/metrics", headers={"Authorization": f"Bearer {TOKEN}"})
    finally:
        connection.close()
        monkeypatch.undo()
        HUEY.storage.flush_all()
    assert response.status_code == 200
    samples = Samples(parse(response.content.decode()))
    assert samples.value("karasu_metrics_source_up", source="database") == 0
    assert samples.value("karasu_metrics_source_up", source="queue") == 1
    assert samples.value("karasu_queue_messages", state="queued") == 2
    assert samples.get_value("karasu_workers_live") is None


# Database ------------------------------------------------------------------------------
def test_live_workers_are_those_with_a_recent_heartbeat(scrape):
    now = timezone.now()
    WorkerHeartbeat.objects.create(host="a", pid=1, workers=20, last_seen=now)
    WorkerHeartbeat.objects.create(
        host="b", pid=2, workers=4, last_seen=now - datetime.timedelta(seconds=5)
    )
    WorkerHeartbeat.objects.create(
        host="c",
        pid=3,
        workers=8,  # silent for 2 minutes
        last_seen=now - datetime.timedelta(minutes=2),
    )
    WorkerHeartbeat.objects.create(
        host="d", pid=4, workers=8, last_seen=now, stopped_at=now
    )  # stopped
    samples = scrape()
    assert samples.value("karasu_workers_live") == 2
    assert samples.value("karasu_worker_threads_live") == 24


def test_spend_total_today_and_this_month(scrape):
    now = timezone.now()
    Spend.objects.create(amount=Decimal("0.0125"), spent_at=now)
    Spend.objects.create(amount=Decimal("0.5"), spent_at=now - datetime.timedelta(days=400))
    samples = scrape()
    assert samples.value("karasu_spend_usd_total") == pytest.approx(0.5125)
    assert samples.value("karasu_spend_today_usd") == pytest.approx(0.0125)
    assert samples.value("karasu_spend_month_usd") == pytest.approx(0.0125)


def test_jobs_failed_by_a_bug_of_karasus_are_counted_apart(scrape, collections):
    request = make_request(5, job_status=GenerationJob.Status.FAILED)
    jobs = list(request.jobs.order_by("index"))
    for job, error in zip(
        jobs,
        [
            internal_error(UnicodeEncodeError("latin-1", "烏", 0, 1, "no")),
            internal_error(KeyError("x")),
            "demo: rejected",
            "timed out after 300 s",
            "Content policy: «烏» was refused",
        ],
        strict=True,
    ):
        job.error = error
        job.save(update_fields=["error"])
    samples = scrape()
    assert samples.value("karasu_failed_jobs", cause="karasu") == 2
    assert samples.value("karasu_failed_jobs", cause="other") == 3
    assert jobs[0].error.startswith("internal error: UnicodeEncodeError (a bug in Karasu")


def test_task_runs_and_durations_by_task_and_status(scrape):
    now = timezone.now()
    recent, old = now - datetime.timedelta(minutes=5), now - datetime.timedelta(hours=3)

    def run(i, name, status, duration=None, finished_at=None, args=None):
        return TaskRun(
            task_name=name,
            task_id=f"t{i}",
            status=status,
            duration=duration,
            finished_at=finished_at,
            args=args or [i],
        )

    generate = "generation.tasks.generate_image"
    shim = "huey.contrib.djhuey.djtasks.run"
    TaskRun.objects.bulk_create(
        [
            run(1, generate, "succeeded", 0.3, recent),
            run(2, generate, "succeeded", 4.0, recent),
            run(3, generate, "succeeded", 400.0, recent),
            run(4, generate, "succeeded", 1.0, old),  # finished before the last hour
            run(5, generate, "failed", 0.05, recent),
            run(6, generate, "running"),
            run(7, generate, "retrying", 2.0),
            run(8, "generation.tasks.expand_prompt", "queued"),
            run(
                9,
                shim,
                "succeeded",
                0.2,
                recent,
                args=["wagtail.search.tasks.insert_or_update_object_task", "cms.karasuimage", 1],
            ),
        ]
    )
    samples = scrape()
    task_runs = "karasu_task_runs"
    assert samples.value(task_runs, task="generate_image", status="succeeded") == 4
    assert samples.value(task_runs, task="generate_image", status="failed") == 1
    assert samples.value(task_runs, task="generate_image", status="running") == 1
    assert samples.value(task_runs, task="generate_image", status="retrying") == 1
    assert samples.value(task_runs, task="generate_image", status="dead") == 0
    assert samples.value(task_runs, task="expand_prompt", status="queued") == 1
    # Wagtail's tasks by their own name, not Huey's shim.
    assert samples.value(task_runs, task="insert_or_update_object_task", status="succeeded") == 1
    assert samples.get_value(task_runs, task="run", status="succeeded") is None

    bucket = "karasu_task_duration_seconds_bucket"
    labels = {"task": "generate_image", "status": "succeeded"}
    assert samples.value(bucket, le="0.25", **labels) == 0
    assert samples.value(bucket, le="0.5", **labels) == 1
    assert samples.value(bucket, le="5.0", **labels) == 2
    assert samples.value(bucket, le="300.0", **labels) == 2
    assert samples.value(bucket, le="+Inf", **labels) == 3
    assert samples.value("karasu_task_duration_seconds_gcount", **labels) == 3
    assert samples.value("karasu_task_duration_seconds_gsum", **labels) == pytest.approx(404.3)
    failed = {"task": "generate_image", "status": "failed"}
    assert samples.value(bucket, le="0.1", **failed) == 1
    assert (
        samples.value(
            "karasu_task_duration_seconds_gcount",
            task="insert_or_update_object_task",
            status="succeeded",
        )
        == 1
    )


@pytest.mark.django_db(transaction=True)
@pytest.mark.usefixtures("collections")
def test_metrics_follow_a_real_request_through_a_real_worker(settings, thread_consumer, scrape):
    # Every prompt fails twice (transient), then succeeds; images cost $0.01.
    configure_demo(settings, failure_rate=1.0, max_failure_streak=2, price="0.01")
    before = scrape()
    assert before.value("karasu_images_generated", model="demo") == 0
    errors = "karasu_provider_errors_total"
    assert before.value(errors, type="image", provider="demo", kind="transient") == 0

    call_command("generate", "Crows at dusk", "--count", "3", "--wait", "--timeout", "60")

    # --wait returns when the jobs are done; their tasks' ledger rows and acks follow.
    def settled():
        samples = scrape()
        done = samples.get_value("karasu_task_runs", task="generate_image", status="succeeded")
        return (
            samples
            if done == 3 and samples.value("karasu_queue_messages", state="leased") == 0
            else None
        )

    samples = wait_for(settled, 10, message="the last task to be recorded and acked")
    assert samples.value("karasu_images_generated", model="demo") == 3
    assert samples.value(errors, type="image", provider="demo", kind="transient") == 6
    assert samples.value(errors, type="image", provider="demo", kind="permanent") == 0
    assert samples.value(errors, type="image", provider="demo", kind="rate_limited") == 0
    assert samples.value(errors, type="llm", provider="demo", kind="transient") == 0
    assert samples.value("karasu_task_runs", task="generate_image", status="succeeded") == 3
    assert samples.value("karasu_task_runs", task="expand_prompt", status="succeeded") == 1
    assert (
        samples.value(
            "karasu_task_duration_seconds_gcount", task="generate_image", status="succeeded"
        )
        == 3
    )
    assert samples.value("karasu_spend_usd_total") == pytest.approx(0.03)
    assert samples.value("karasu_spend_today_usd") == pytest.approx(0.03)
    # The consumer running in this test (8 threads) is the one live worker.
    assert samples.value("karasu_workers_live") == 1
    assert samples.value("karasu_worker_threads_live") == 8
    assert samples.value("karasu_provider_slots_in_use", model="demo") == 0
    assert samples.value("karasu_provider_slots_limit", model="demo") == 8
    assert samples.value("karasu_queue_messages", state="leased") == 0
    assert samples.value("karasu_queue_messages", state="dead") == 0


@pytest.mark.django_db(transaction=True)
def test_heartbeat_crashes_are_counted_from_a_real_worker(tmp_path, thread_consumer, scrape):
    crashes = "karasu_heartbeat_crashes_total"
    before = scrape()
    assert before.value(crashes, heartbeat="lease") == 0
    assert before.value(crashes, heartbeat="claims") == 0
    # A first task: the worker's heartbeats are running.
    assert record_run(str(tmp_path / "runs.log"), "k").get(blocking=True, timeout=10) == "k"
    counted = HeartbeatCrashCount.objects.filter(heartbeat="lease", count__gte=2)
    with failing_heartbeat("lease"):
        wait_for(counted.exists, 15, message="two crashes counted")

    def agreed():  # the metric says what the workers counted (a last count may be landing)
        samples = scrape()
        count = HeartbeatCrashCount.objects.get(heartbeat="lease").count
        return samples if samples.value(crashes, heartbeat="lease") == count else None

    samples = wait_for(agreed, 10, message="the metric to agree with the count")
    assert samples.value(crashes, heartbeat="lease") >= 2
    assert samples.value(crashes, heartbeat="claims") == 0


def test_a_fresh_client_sees_no_session_cookie(metrics_token):
    response = Client().get("/metrics", headers={"Authorization": f"Bearer {TOKEN}"})
    assert response.status_code == 200
    assert not response.cookies
