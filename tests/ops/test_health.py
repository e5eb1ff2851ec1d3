"""GET /healthz: 200 when the database and the queue storage answer, 503 naming the one that
does not (within a few seconds, even for a MongoDB that is not there), nothing else."""

import json
import os
import subprocess
import sys
import time

import pymongo
import pytest
from django.conf import settings as django_settings
from django.db import connection
from django.test import Client
from huey.contrib.djhuey import HUEY
from pymongo import MongoClient

from huey_tasks.storage import LeasingSqliteStorage, MongoStorage

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


def test_unreachable_mongodb_queue_fails_within_seconds(monkeypatch):
    # MongoStorage's own health check on a server that is not there (the client's default
    # would wait 30 s to select a server).
    storage = MongoStorage.__new__(MongoStorage)
    storage.messages = MongoClient("mongodb://127.0.0.1:9/karasu", connect=False).karasu.m
    monkeypatch.setattr(HUEY, "storage", storage)
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


def test_queue_health_check_on_each_backend(queue_backend):
    HUEY.storage.health_check(2.0)  # mongodb tier: a real ping; sqlite: the file


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


def test_mongo_health_check_answers_on_mongomock():
    import mongomock

    MongoStorage("karasu", client=mongomock.MongoClient()).health_check(1.0)
