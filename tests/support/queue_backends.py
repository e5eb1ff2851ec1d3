"""Run queue tests on the embedded SQLite queue and, with TEST_MONGODB_URI, on MongoDB.

``queue_backend`` swaps the storage of the project's Huey instance for the test (tasks are
bound to that instance) and tells worker subprocesses, through the environment, to use the
same MongoDB database (see cms/settings/test.py).
"""

from __future__ import annotations

import os
import uuid

import pytest
from huey.contrib.djhuey import HUEY
from pymongo import MongoClient

from huey_tasks.storage import MongoStorage

MONGO_ENV = "KARASU_TEST_QUEUE_MONGODB"


def _mongo_url() -> str:
    url = os.environ.get("TEST_MONGODB_URI")
    if not url:
        pytest.skip("TEST_MONGODB_URI is not set: the MongoDB queue tier is not tested")
    base, _, query = url.partition("?")
    database = f"karasu_test_{uuid.uuid4().hex[:8]}"
    return f"{base.rstrip('/')}/{database}" + (f"?{query}" if query else "")


@pytest.fixture(params=["sqlite", "mongodb"])
def queue_backend(request, monkeypatch):
    """The queue storage the test runs on; both start empty and are emptied afterwards."""
    original = HUEY.storage
    if request.param == "mongodb":
        url = _mongo_url()
        storage = MongoStorage(
            original.name,
            # A client of its own, closed after the test (the storage's shared one by URL
            # would stay cached).
            client=MongoClient(url, connect=False),
            lease_seconds=original.lease_seconds,
            max_deliveries=original.max_deliveries,
        )
        storage.on_dead_letter = original.on_dead_letter
        monkeypatch.setenv(MONGO_ENV, url)
        HUEY.storage = storage
    HUEY.storage.flush_all()
    try:
        yield request.param
        HUEY.storage.flush_all()
    finally:
        # Whatever happened, the next test runs on the SQLite queue again.
        if HUEY.storage is not original:
            storage, HUEY.storage = HUEY.storage, original
            try:
                storage.client.drop_database(storage.messages.database.name)
            finally:
                storage.client.close()
