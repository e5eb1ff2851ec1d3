"""Outages do not burn the backlog: a task that cannot reach the database hands its message
back uncounted, and a stalled queue storage cannot let a job claim run out under a call."""

import os
import threading
import time
import uuid
from urllib.parse import urlsplit

import pytest
from django.db import OperationalError, close_old_connections
from huey.contrib.djhuey import HUEY
from wagtail.images import get_image_model

from generation import services
from generation.models import GenerationJob, GenerationRequest
from generation.tasks import expand_prompt, queue_jobs
from huey_tasks.queue import SIGNAL_DEADLINE, LeasingHuey
from huey_tasks.storage import MongoStorage
from tests.support.consumers import wait_for
from tests.support.factories import make_request, settled
from tests.support.faults import FaultyDatabase
from tests.support.provider_calls import (
    calls_paid_twice,
    calls_per_key,
    paid_submissions,
    read_calls,
)
from tests.support.tasks import add
from tests.support.tcp_proxy import StallingProxy

pytestmark = [pytest.mark.django_db(transaction=True), pytest.mark.usefixtures("collections")]
Job = GenerationJob.Status
Req = GenerationRequest.Status
Image = get_image_model()


class UnreachableDatabase(FaultyDatabase):
    """Every statement fails as a database that does not answer (reads too)."""

    def __call__(self, execute, sql, params, many, context):
        if self.active:
            with self.lock:
                self.injected += 1
            raise OperationalError("injected: could not connect to server: Connection refused")
        return execute(sql, params, many, context)


def test_a_delivery_that_cannot_reach_the_database_is_handed_back_uncounted(
    queue_backend, demo, call_log, monkeypatch, thread_consumer_factory
):
    """With one delivery allowed, an unreachable database used to bury every message at
    its second delivery and fail its job "stopped once" with no provider call. Now each is
    handed back, many times over, and runs once the database answers."""
    demo(latency=0.05, concurrency=4)
    monkeypatch.setattr(HUEY.storage, "max_deliveries", 1)
    monkeypatch.setattr(HUEY, "outage_backoff_max", 0.3)  # scaled: the default is 30 s
    request = make_request(4, theme="鴉と烏 «crows» 🐦‍⬛")
    job_ids = queue_jobs(list(request.jobs.values_list("pk", flat=True)))
    outage = UnreachableDatabase(seed=1, rate=1.0)
    handed_back = []
    hand_back_later = HUEY.hand_back_later

    def counted(task):
        handed_back.append(task.args[0])
        return hand_back_later(task)

    monkeypatch.setattr(HUEY, "hand_back_later", counted)
    # The outage starts before the consumer and ends after it stopped, so no task is in
    # flight as the database comes back: a write failed just before and a probe answered
    # just after would count the delivery, as an error of a database that answers does.
    with outage.installed(), thread_consumer_factory(workers=4):
        # Every job handed back more often than its messages may be delivered.
        wait_for(
            lambda: all(handed_back.count(job_id) >= 3 for job_id in job_ids),
            30,
            message="every job handed back three times",
        )
    assert HUEY.storage.dead_letter_count() == 0
    assert not call_log.exists()  # no provider call without the database
    close_old_connections()
    with thread_consumer_factory(workers=4):
        wait_for(lambda: settled(request), 30, message="request settled")
    assert request.status == Req.COMPLETED
    assert set(request.jobs.values_list("status", "attempts")) == {(Job.SUCCEEDED, 1)}
    assert HUEY.storage.dead_letter_count() == 0
    assert sorted(calls_per_key(call_log).values()) == [1, 1, 1, 1]  # each paid once
    assert Image.objects.filter(generation_request_id=request.pk).count() == 4


def test_an_expansion_that_cannot_reach_the_database_waits_out_the_outage(
    queue_backend, demo, settings, monkeypatch, thread_consumer_factory
):
    """Its infrastructure retries are for errors of a working database; an unreachable
    one hands the expansion back uncounted, however long it lasts."""
    settings.KARASU["RETRY"] = {**settings.KARASU["RETRY"], "MAX_INFRASTRUCTURE_RETRIES": 1}
    monkeypatch.setattr(HUEY.storage, "max_deliveries", 1)
    monkeypatch.setattr(HUEY, "outage_backoff_max", 0.3)
    request = GenerationRequest.objects.create(
        theme="夜の蛾 «moths» 🌙", count=3, llm="demo", image_model="demo", status=Req.QUEUED
    )
    expand_prompt(request.pk)
    handed_back = []
    hand_back_later = HUEY.hand_back_later

    def counted(task):
        handed_back.append(task.name)
        return hand_back_later(task)

    monkeypatch.setattr(HUEY, "hand_back_later", counted)
    # As above: the outage spans the first consumer's whole life.
    with UnreachableDatabase(seed=2, rate=1.0).installed(), thread_consumer_factory(workers=2):
        wait_for(lambda: len(handed_back) >= 4, 30, message="handed back 4 times")
    close_old_connections()
    with thread_consumer_factory(workers=2):
        wait_for(lambda: settled(request), 30, message="request settled")
    assert request.status == Req.COMPLETED and request.jobs_succeeded == 3
    assert HUEY.storage.dead_letter_count() == 0


def test_the_outage_back_off_grows_to_its_bound_and_resets_after_a_task_completes(monkeypatch):
    huey = LeasingHuey("backoff", immediate=True, outage_backoff_max=30)

    class Task:
        pass

    delays = [huey.hand_back_later(Task()) for _ in range(10)]
    # Doubling from 1 s with jitter (0.5 to 1 times), then held at the 30 s bound.
    for n, delay in enumerate(delays):
        ceiling = min(30, 2**n)
        assert ceiling / 2 <= delay <= ceiling
    huey._on_complete(None, Task())  # a task ran to its end: the outage is over
    assert huey.hand_back_later(Task()) <= 1


def test_a_stalled_queue_storage_does_not_let_a_job_claim_run_out_under_a_call(
    queue_backend, demo, call_log, monkeypatch
):
    """The heartbeat's call to the queue storage hangs for longer than a job claim lives
    (a MongoDB stall), while the job's provider call is in flight. The claim is still kept,
    by its own thread: another worker meets a busy job and makes no second call."""
    lease = 0.3
    monkeypatch.setattr(HUEY.storage, "lease_seconds", lease)  # job claims: 0.6 s
    monkeypatch.setattr(HUEY, "beat", lambda: None)  # this test beats by hand
    demo(latency=2.0, concurrency=1)
    request = make_request(1)
    [job_id] = queue_jobs(list(request.jobs.values_list("pk", flat=True)))
    stall = threading.Event()
    extend_leases = HUEY.storage.extend_leases

    def stalled(*args, **kwargs):
        if stall.is_set():
            time.sleep(1.6)  # well past the claim's 0.6 s life
        return extend_leases(*args, **kwargs)

    monkeypatch.setattr(HUEY.storage, "extend_leases", stalled)
    task = HUEY.dequeue()
    runner = threading.Thread(target=HUEY.execute, args=(task,), daemon=True)
    runner.start()
    stop = threading.Event()

    def heartbeat():
        while not stop.wait(lease / 3):
            LeasingHuey.beat(HUEY)

    beater = threading.Thread(target=heartbeat, daemon=True)
    beater.start()
    try:
        wait_for(lambda: call_log.exists() and read_calls(call_log), 5, message="call started")
        stall.set()
        time.sleep(1.2)  # two claim lives into the stall
        with pytest.raises(services.JobBusy):  # what another worker's delivery meets
            services.claim_job(GenerationJob.objects.get(pk=job_id), "other-worker", 30)
        runner.join(10)
    finally:
        stop.set()
        stall.clear()
        beater.join(5)
    assert [call.outcome for call in read_calls(call_log)] == ["ok"]
    job = GenerationJob.objects.get(pk=job_id)
    assert job.status == Job.SUCCEEDED and job.image_id and job.attempts == 1
    HUEY.storage.flush_all()


def test_a_heartbeat_against_a_stalled_mongodb_returns_within_a_third_of_a_lease(
    monkeypatch,
):
    """MongoDB stops answering (a TCP proxy in front of it stops passing bytes): the
    heartbeat's calls give up within a third of a lease, pymongo's own timeout, instead
    of waiting for the server, so the next beat (and the job claims' kicks) keep coming."""
    url = os.environ.get("TEST_MONGODB_URI")
    if not url:
        pytest.skip("TEST_MONGODB_URI is not set: no MongoDB server to stall")
    host, port = urlsplit(url).hostname, urlsplit(url).port or 27017
    proxy = StallingProxy(host, port)
    lease = 0.9
    storage = MongoStorage(
        "stall",
        url=f"mongodb://127.0.0.1:{proxy.port}/karasu_test_{uuid.uuid4().hex[:8]}",
        lease_seconds=lease,
    )
    monkeypatch.setattr(HUEY, "storage", storage)
    monkeypatch.setattr(HUEY, "beat", lambda: None)  # this test beats by hand
    try:
        storage.enqueue(HUEY.serialize_task(add.s(1, 2)))
        task = HUEY.dequeue()
        assert task is not None
        proxy.pause()
        beat = threading.Thread(target=LeasingHuey.beat, args=(HUEY,), daemon=True)
        started = time.monotonic()
        beat.start()
        beat.join(lease / 3 + 2)
        took = time.monotonic() - started
        assert not beat.is_alive(), "the heartbeat waits on a MongoDB that does not answer"
        assert took < lease / 3 + 1.5
        proxy.resume()
        LeasingHuey.beat(HUEY)  # the server answers again: the lease is still ours
        HUEY.execute(task)
        assert storage.leased_count() == 0 and storage.queue_size() == 0
    finally:
        proxy.resume()
        with HUEY._lock:
            HUEY._running.clear()
        storage.client.drop_database(storage.messages.database.name)
        proxy.close()


def test_a_paid_image_spooled_to_disk_waits_out_an_outage_longer_than_ingest_retries(
    demo, call_log, monkeypatch, thread_consumer
):
    """The body of a large result lives in a temporary file: it stays open while the
    worker waits for the database, and is filed once it answers, paid for once."""
    import generation.ingest
    import generation.providers.images

    monkeypatch.setattr(generation.providers.images, "SPOOL_BYTES", 1000)  # on disk
    demo(concurrency=1)
    real_ingest, failures = generation.ingest._ingest, []

    def down_for_a_while(*args, **kwargs):
        if len(failures) < 7:  # more than ingest's own 5 tries
            failures.append(1)
            raise OperationalError("server closed the connection unexpectedly")
        return real_ingest(*args, **kwargs)

    monkeypatch.setattr(generation.ingest, "_ingest", down_for_a_while)
    request = make_request(1)
    queue_jobs(list(request.jobs.values_list("pk", flat=True)))
    wait_for(lambda: settled(request), 60, message="the request to finish")
    job = request.jobs.get()
    assert (job.status, job.error) == (GenerationJob.Status.SUCCEEDED, "")
    assert len(failures) == 7
    assert calls_paid_twice(call_log) == 0 and sorted(paid_submissions(call_log).values()) == [1]


def test_a_bug_of_ours_after_the_call_keeps_the_paid_request_for_retry_failed(
    demo, call_log, monkeypatch, thread_consumer
):
    """Not the provider's failure: the job fails with a plain reason, and its stored
    request is neither cancelled nor forgotten, so "Retry failed" collects it."""
    import generation.ingest

    demo(concurrency=1)
    real_ingest, broken = generation.ingest._ingest, [True]

    def bug(*args, **kwargs):
        if broken[0]:
            raise KeyError("a bug in filing")
        return real_ingest(*args, **kwargs)

    monkeypatch.setattr(generation.ingest, "_ingest", bug)
    request = make_request(1)
    queue_jobs(list(request.jobs.values_list("pk", flat=True)))
    wait_for(lambda: settled(request), 30, message="the request to fail")
    job = request.jobs.get()
    assert job.status == GenerationJob.Status.FAILED
    assert job.error.startswith("internal error: KeyError (a bug in Karasu, not the provider")
    assert job.provider_request_id  # kept for the retry

    broken[0] = False
    request.refresh_from_db()
    queue_jobs(services.reset_failed_jobs(request))
    wait_for(lambda: settled(request), 30, message="the retried request to finish")
    job.refresh_from_db()
    assert job.status == GenerationJob.Status.SUCCEEDED
    assert sorted(paid_submissions(call_log).values()) == [1]  # collected, not paid again
    assert [call.resumed_by != () for call in read_calls(call_log)] == [True]


def test_a_hanging_deadline_handler_does_not_stop_the_heartbeat(queue_backend, monkeypatch):
    """The deadline's handlers write to the database; one that hangs must not keep the
    heartbeat from renewing the other tasks' leases."""
    storage = HUEY.storage
    monkeypatch.setattr(storage, "lease_seconds", 0.3)
    monkeypatch.setattr(HUEY, "beat", lambda: None)  # the background heartbeat paused
    released = threading.Event()

    def hanging(signal, task, *args):
        released.wait(10)

    HUEY.signal(SIGNAL_DEADLINE)(hanging)
    try:
        add(1, 2)
        add(3, 4)
        late, _live = HUEY.dequeue(), HUEY.dequeue()
        HUEY._running[id(late)].deadline = time.monotonic() - 1
        started = time.monotonic()
        LeasingHuey.beat(HUEY)
        assert time.monotonic() - started < 0.2  # not waiting for the handler
        for _ in range(4):  # past the lease several times over, renewed each time
            time.sleep(0.1)
            LeasingHuey.beat(HUEY)
        assert storage.leased_count() == 1  # the live task's lease was kept
        assert HUEY.dequeue() is None
    finally:
        released.set()
        HUEY.disconnect_signal(hanging, SIGNAL_DEADLINE)
