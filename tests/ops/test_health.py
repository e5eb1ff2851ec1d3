"""GET /healthz: 200 when the database and the queue storage answer, 503 naming the one that
does not (within a few seconds, even for a MongoDB that is not there), nothing else, and at
most one real check a second per process however often it is hit."""

import contextlib
import itertools
import json
import os
import sqlite3
import subprocess
import sys
import threading
import time
from concurrent.futures import ThreadPoolExecutor

import pymongo
import pytest
from django.conf import settings as django_settings
from django.db import connection
from django.db.backends.signals import connection_created
from django.test import Client
from huey.contrib.djhuey import HUEY
from huey.storage import SqliteStorage
from pymongo import MongoClient

from huey_tasks.storage import LeasingSqliteStorage, MongoStorage
from ops.health import CHECK_INTERVAL

pytestmark = pytest.mark.django_db


def healthz(**extra):
    # A fresh client: middleware settings (the SSL redirect) are read when it starts.
    return Client(**extra).get("/healthz")


def test_healthy(queue_backend):
    response = healthz()
    assert response.status_code == 200
    assert json.loads(response.content) == {"status": "ok", "database": "ok", "queue": "ok"}
    assert response["Content-Type"] == "application/json"
    assert "no-store" in response["Cache-Control"]
    assert not response.cookies


def test_needs_no_authentication_and_answers_get_only(settings):
    settings.KARASU_METRICS_TOKEN = "secret-metrics-token"
    assert Client().get("/healthz").status_code == 200
    assert Client().head("/healthz").status_code == 200
    assert Client().post("/healthz").status_code == 405


@pytest.mark.django_db(transaction=True)
def test_database_down(monkeypatch, tmp_path):
    # The database really cannot be opened: a SQLite file in a folder that does not exist,
    # or (on PostgreSQL) a port nothing listens on.
    connection.close()
    if connection.vendor == "sqlite":
        monkeypatch.setitem(connection.settings_dict, "NAME", str(tmp_path / "gone" / "db"))
    else:
        monkeypatch.setitem(connection.settings_dict, "PORT", "9")
    try:
        response = healthz()
    finally:
        connection.close()
        monkeypatch.undo()
    assert response.status_code == 503
    assert json.loads(response.content) == {"status": "failed", "database": "failed", "queue": "ok"}


def test_a_database_that_froze_fails_the_check_in_seconds(monkeypatch):
    """A server that neither answers nor resets (a frozen VM, a dropped route) must not hold
    the probe; nor may the checks that come while one is stuck pile up."""
    import threading

    from ops import health

    released = threading.Event()
    real_query = health._query_database

    def frozen():
        released.wait(30)
        real_query()

    monkeypatch.setattr(health, "DATABASE_TIMEOUT", 0.5)
    monkeypatch.setattr(health, "_query_database", frozen)
    try:
        for _ in range(3):
            started = time.monotonic()
            response = healthz()
            assert time.monotonic() - started < 2
            assert response.status_code == 503
            assert json.loads(response.content)["database"] == "failed"
        probes = [t for t in threading.enumerate() if t.name.startswith("healthz-db")]
        assert len(probes) == 1
    finally:
        released.set()
    monkeypatch.setattr(health, "_query_database", real_query)
    deadline = time.monotonic() + 10
    while healthz().status_code != 200:  # the stuck ones drained, it answers again
        assert time.monotonic() < deadline
        time.sleep(0.2)


def test_rapid_hits_open_at_most_one_database_connection_a_second():
    """Hits from anyone (it needs no authentication), many at once: the database sees one
    new connection, one check, a second at most, whatever their number."""
    opened = []

    def count_probe_connections(sender, connection, **kwargs):
        if threading.current_thread().name.startswith("healthz-db"):
            opened.append(time.monotonic())

    connection_created.connect(count_probe_connections)
    try:
        started = time.monotonic()
        with ThreadPoolExecutor(max_workers=8) as hitters:
            responses = list(hitters.map(lambda _: healthz(), range(300)))
        elapsed = time.monotonic() - started
    finally:
        connection_created.disconnect(count_probe_connections)
    assert {response.status_code for response in responses} == {200}
    assert all(json.loads(r.content)["database"] == "ok" for r in responses)
    # A connection per started second at most (the first hit's, then one per second), and
    # never two within a second of each other.
    assert 1 <= len(opened) <= int(elapsed) + 1, (len(opened), elapsed)
    assert all(b - a >= 0.99 for a, b in itertools.pairwise(opened))


def test_the_answer_follows_a_change_within_a_second(monkeypatch, tmp_path):
    storage = LeasingSqliteStorage("karasu", filename=str(tmp_path / "queue.db"))
    storage.close()
    (tmp_path / "queue.db").unlink()
    first_started = time.monotonic()
    assert healthz().status_code == 200
    checked = time.monotonic()
    # The queue file goes away: a hit within the second gets the answer of the check that
    # just ran, the first one after it sees the failure.
    monkeypatch.setattr(HUEY, "storage", storage)
    second = healthz()
    if time.monotonic() - first_started < CHECK_INTERVAL:  # not when the machine stalled
        assert second.status_code == 200
    time.sleep(max(0.0, checked + CHECK_INTERVAL + 0.05 - time.monotonic()))
    response = healthz()
    assert response.status_code == 503
    assert json.loads(response.content) == {"status": "failed", "database": "ok", "queue": "failed"}


@contextlib.contextmanager
def queue_that_hangs_its_check(monkeypatch, tmp_path):
    """The queue is Huey's own SQLite storage, whose check (a read) has no timeout of ours,
    and its file is locked by another connection until the block ends: a check of it is
    stuck for its busy timeout (20 s), past QUEUE_TIMEOUT."""
    storage = SqliteStorage(
        "karasu", filename=str(tmp_path / "queue.db"), journal_mode="delete", timeout=20
    )
    storage.queue_size()  # the file and its tables
    monkeypatch.setattr(HUEY, "storage", storage)
    holder = sqlite3.connect(tmp_path / "queue.db", isolation_level=None)
    holder.execute("begin exclusive")
    try:
        yield
    finally:
        holder.execute("rollback")
        holder.close()


def test_while_a_check_is_stuck_the_last_ok_stands_only_as_long_as_a_check_may_take(
    monkeypatch, tmp_path
):
    """Hits that come while another hit's check is stuck get the last answer as long as it is
    at most CHECK_INTERVAL plus the checks' timeouts old (so a flood of hits is never held),
    then "failed" for the check that does not answer: never an "ok" older than that."""
    from ops import health

    monkeypatch.setattr(health, "DATABASE_TIMEOUT", 0.5)
    monkeypatch.setattr(health, "QUEUE_TIMEOUT", 0.5)
    bound = CHECK_INTERVAL + 1.0
    assert healthz().status_code == 200
    checked = time.monotonic()
    with ThreadPoolExecutor(1) as hitter, queue_that_hangs_its_check(monkeypatch, tmp_path):
        time.sleep(max(0.0, checked + CHECK_INTERVAL + 0.05 - time.monotonic()))
        stuck = hitter.submit(healthz)  # due: it checks, and waits on the queue
        time.sleep(0.2)
        in_between = healthz()
        if time.monotonic() - checked < bound:  # not when the machine stalled
            assert in_between.status_code == 200
        time.sleep(max(0.0, checked + bound + 0.1 - time.monotonic()))
        started = time.monotonic()
        response = healthz()
        assert time.monotonic() - started < 1  # answered, not held by the stuck check
        assert response.status_code == 503
        body = json.loads(response.content)
        assert body == {"status": "failed", "database": "ok", "queue": "failed"}
        assert not stuck.done()
    # The lock is gone: the stuck check ends, and the next ones answer "ok" again.
    assert stuck.result(timeout=10).status_code == 200
    time.sleep(CHECK_INTERVAL)
    assert healthz().status_code == 200


def test_after_a_quiet_spell_a_hit_does_not_get_the_old_answer(monkeypatch, tmp_path):
    """An answer older than CHECK_INTERVAL plus the checks' timeouts (no hits for a while)
    is not given to a hit that comes while another checks: it waits for that check, as long
    as the check may take, and gets "failed" for the one that did not answer by then."""
    from ops import health

    monkeypatch.setattr(health, "DATABASE_TIMEOUT", 0.5)
    monkeypatch.setattr(health, "QUEUE_TIMEOUT", 0.5)
    assert healthz().status_code == 200
    time.sleep(CHECK_INTERVAL + 1.0 + 0.1)  # the answer is older than a check may take
    with ThreadPoolExecutor(1) as hitter, queue_that_hangs_its_check(monkeypatch, tmp_path):
        stuck = hitter.submit(healthz)
        time.sleep(0.4)  # its check is under way
        started = time.monotonic()
        response = healthz()
        waited = time.monotonic() - started
        assert response.status_code == 503
        body = json.loads(response.content)
        assert body == {"status": "failed", "database": "ok", "queue": "failed"}
        assert waited < 3  # at most the rest of the stuck check's 1 s, not its 20 s
        assert not stuck.done()
    assert stuck.result(timeout=10).status_code == 200


def test_unreachable_mongodb_queue_fails_within_seconds(monkeypatch):
    # MongoStorage's own health check on a server that is not there (the client's default
    # would wait 30 s to select a server).
    monkeypatch.setattr(HUEY, "storage", unreachable_mongo_storage())
    monkeypatch.setattr("ops.health.QUEUE_TIMEOUT", 1.0)
    started = time.monotonic()
    response = healthz()
    assert time.monotonic() - started < 3  # 1 s for the queue, not the client's 30 s
    assert response.status_code == 503
    body = json.loads(response.content)
    assert body == {"status": "failed", "database": "ok", "queue": "failed"}
    assert b"127.0.0.1" not in response.content and b"Timeout" not in response.content


def test_missing_sqlite_queue_file_fails(monkeypatch, tmp_path):
    storage = LeasingSqliteStorage("karasu", filename=str(tmp_path / "queue.db"))
    storage.close()
    (tmp_path / "queue.db").unlink()
    monkeypatch.setattr(HUEY, "storage", storage)
    response = healthz()
    assert response.status_code == 503
    assert json.loads(response.content)["queue"] == "failed"
    assert not (tmp_path / "queue.db").exists()  # the check does not create an empty queue


def test_sqlite_queue_health_check_is_bounded_by_a_lock(tmp_path):
    storage = LeasingSqliteStorage("karasu", filename=str(tmp_path / "queue.db"))
    storage.health_check(0.5)  # answers
    # An exclusive lock held elsewhere: the check gives up after its own timeout, not 30 s.
    import sqlite3

    holder = sqlite3.connect(tmp_path / "queue.db", isolation_level=None)
    holder.execute("pragma journal_mode=delete")
    holder.execute("begin exclusive")
    try:
        started = time.monotonic()
        with pytest.raises(sqlite3.OperationalError):
            storage.health_check(0.5)
        assert time.monotonic() - started < 3
    finally:
        holder.execute("rollback")
        holder.close()


def unreachable_mongo_storage() -> MongoStorage:
    """A MongoStorage whose client reaches no server (nothing listens on port 9)."""
    storage = MongoStorage.__new__(MongoStorage)
    storage.messages = MongoClient("mongodb://127.0.0.1:9/karasu", connect=False).karasu.m
    return storage


def test_queue_health_check_on_each_backend(queue_backend, tmp_path):
    """The check answers for the suite's queue (mongodb tier: a real ping; sqlite: the
    file), and the same kind of storage that cannot answer fails it, in bounded time."""
    started = time.monotonic()
    HUEY.storage.health_check(2.0)
    assert time.monotonic() - started < 2
    if queue_backend == "sqlite":
        broken = LeasingSqliteStorage("karasu", filename=str(tmp_path / "queue.db"))
        broken.close()
        (tmp_path / "queue.db").write_bytes("これはキューではない".encode() * 200)
        for leftover in tmp_path.glob("queue.db-*"):
            leftover.unlink()
    else:
        broken = unreachable_mongo_storage()
    started = time.monotonic()
    with pytest.raises(Exception):  # noqa: B017 (sqlite3 or pymongo, whichever it is)
        broken.health_check(1.0)
    assert time.monotonic() - started < 3


def production_setting(name: str, tmp_path):
    """A setting of cms.settings.production, read in a process of its own."""
    code = f"import json, cms.settings.production as p; print(json.dumps(p.{name}))"
    result = subprocess.run(
        [sys.executable, "-c", code],
        cwd=django_settings.BASE_DIR,
        capture_output=True,
        text=True,
        env={**os.environ, "SECRET_KEY": "x" * 50, "KARASU_DATA_DIR": str(tmp_path)},
        timeout=60,
        check=True,
    )
    return json.loads(result.stdout)


def test_production_answers_probes_over_plain_http(settings, tmp_path):
    assert production_setting("SECURE_SSL_REDIRECT", tmp_path) is True
    settings.SECURE_SSL_REDIRECT = True
    settings.SECURE_REDIRECT_EXEMPT = production_setting("SECURE_REDIRECT_EXEMPT", tmp_path)
    settings.KARASU_METRICS_TOKEN = "probe-token"
    assert healthz().status_code == 200
    metrics = Client().get("/metrics", headers={"Authorization": "Bearer probe-token"})
    assert metrics.status_code == 200
    # Everything else is still sent to HTTPS.
    admin = Client().get("/admin/")
    assert admin.status_code == 301 and admin["Location"].startswith("https://")


def test_mongo_timeout_helper_really_bounds_selection():
    # The mechanism MongoStorage.health_check relies on.
    client = MongoClient("mongodb://127.0.0.1:9/", connect=False)
    started = time.monotonic()
    with pytest.raises(pymongo.errors.PyMongoError), pymongo.timeout(0.5):
        client.admin.command("ping")
    assert time.monotonic() - started < 3


def test_mongo_health_check_answers_on_mongomock_and_not_without_a_server(monkeypatch):
    import mongomock

    from ops import health

    monkeypatch.setattr(HUEY, "storage", MongoStorage("karasu", client=mongomock.MongoClient()))
    health.check_queue(1.0)  # answers
    monkeypatch.setattr(HUEY, "storage", unreachable_mongo_storage())
    with pytest.raises(pymongo.errors.PyMongoError):
        health.check_queue(1.0)
