"""A process that starts while MongoDB is unreachable (the web process, worker_health) starts
in seconds; the queue's indexes are then set up at its first claim."""

import time

import mongomock
from pymongo.errors import ServerSelectionTimeoutError

from huey_tasks.storage import mongo
from huey_tasks.storage.mongo import CLAIM_INDEX, MongoStorage


def test_an_unreachable_server_delays_start_by_the_startup_timeout_only(monkeypatch):
    monkeypatch.setattr(mongo, "STARTUP_TIMEOUT", 0.5)
    started = time.monotonic()
    storage = MongoStorage(url="mongodb://127.0.0.1:1/karasu-startup-test")
    assert time.monotonic() - started < 5  # not the client's 30 s per call
    assert not storage._set_up


def test_indexes_are_set_up_at_the_first_claim_once_the_server_answers(monkeypatch):
    client = mongomock.MongoClient()
    real_check = MongoStorage.health_check

    def unreachable(self, timeout):
        raise ServerSelectionTimeoutError("no server")

    monkeypatch.setattr(MongoStorage, "health_check", unreachable)
    storage = MongoStorage(client=client, database="startup")
    assert CLAIM_INDEX not in storage.messages.index_information()
    monkeypatch.setattr(MongoStorage, "health_check", real_check)
    storage.enqueue(b"a message")  # enqueueing needs no index
    delivery = storage.claim()
    assert delivery is not None and delivery.data == b"a message"
    assert CLAIM_INDEX in storage.messages.index_information()


def test_a_reachable_server_is_set_up_at_once():
    storage = MongoStorage(client=mongomock.MongoClient(), database="startup-ok")
    assert storage._set_up and CLAIM_INDEX in storage.messages.index_information()
