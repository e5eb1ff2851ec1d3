"""MongoStorage keeps its own read preference and write concern, whatever the URI says, and
its claim index serves the claim query."""

import os
import time
import uuid

import mongomock
import pytest
from pymongo import MongoClient, ReadPreference

from huey_tasks.storage import mongo
from huey_tasks.storage.mongo import MongoStorage

LAX = "readPreference=secondaryPreferred&w=0"


def test_a_lax_uri_still_reads_primary_and_writes_majority(monkeypatch):
    """A URI saying ``readPreference=secondary&w=0`` would let a claim read a lagging
    secondary and a lease be lost in a failover: the storage's collections ignore it."""
    monkeypatch.setattr(mongo, "STARTUP_TIMEOUT", 0.2)
    url = "mongodb://127.0.0.1:1/karasu-options?readPreference=secondary&w=0"
    client = MongoClient(url, connect=False, serverSelectionTimeoutMS=200)
    assert client.read_preference == ReadPreference.SECONDARY  # what the URI asked for
    assert client.write_concern.document == {"w": 0}
    storage = MongoStorage("options", client=client)
    collections = [
        storage.messages,
        storage.kv,
        storage.counters,
        storage.dead,
        storage.slots,
        storage.legacy_schedule,
    ]
    for collection in collections:
        assert collection.read_preference == ReadPreference.PRIMARY, collection.name
        assert collection.write_concern.document == {"w": "majority"}, collection.name
    client.close()


def test_the_claim_index_of_older_releases_is_replaced():
    storage = MongoStorage("index", client=mongomock.MongoClient(), database="index-upgrade")
    storage.messages.drop_indexes()
    storage.messages.create_index(mongo.CLAIM_SORT, name="claim_order")  # the old claim index
    storage.create_indexes()
    indexes = storage.messages.index_information()
    assert "claim_order" not in indexes
    assert indexes[mongo.CLAIM_INDEX]["key"] == mongo.CLAIM_KEYS


def test_the_claim_index_is_the_claim_sort_then_the_claim_querys_range():
    """Equality-Sort-Range: no equality in the claim query, so the sort's keys first (no
    in-memory sort), then the lease expiry the query ranges over (checked on the index's
    keys). A server's explain checks the plan where there is one (the conformance suite);
    mongomock and the mongoeco emulator have no query planner, so this checks the shape."""
    keys = [field for field, _ in mongo.CLAIM_KEYS]
    sort = [field for field, _ in mongo.CLAIM_SORT]
    assert mongo.CLAIM_KEYS[: len(sort)] == mongo.CLAIM_SORT
    storage = MongoStorage("index", client=mongomock.MongoClient(), database="index-shape")
    assert set(storage.claim_query(time.time())) == set(keys[len(sort) :])


@pytest.mark.skipif(
    not os.environ.get("TEST_MONGODB_URI"),
    reason="TEST_MONGODB_URI is not set: no server to write through",
)
def test_a_lax_uri_on_a_server_still_claims_with_acknowledged_writes():
    base, _, query = os.environ["TEST_MONGODB_URI"].partition("?")
    url = f"{base.rstrip('/')}/karasu_test_{uuid.uuid4().hex[:8]}?{LAX}"
    storage = MongoStorage("options", url=url)
    try:
        storage.enqueue("ジョブ 任务 🐦".encode())
        delivery = storage.claim()
        assert delivery is not None and delivery.data.decode() == "ジョブ 任务 🐦"
        # Acknowledged (w=0 would return an unacknowledged result with no count).
        assert storage.ack(delivery.message_id, delivery.token) is True
    finally:
        storage.client.drop_database(storage.messages.database.name)
