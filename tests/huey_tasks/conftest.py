import functools
import os
import threading
import uuid

import mongomock
import pytest
from huey.contrib.djhuey import HUEY

from huey_tasks.storage import LeasingSqliteStorage, MongoStorage


def _sqlite(tmp_path, **options):
    return LeasingSqliteStorage("conformance", filename=str(tmp_path / "queue.db"), **options)


# mongomock is not thread-safe; a real server runs each command atomically. Serialising
# mongomock's commands gives the same guarantee, so the race tests mean the same on both.
_MONGOMOCK_LOCK = threading.RLock()
_ATOMIC_COMMANDS = [
    "insert_one",
    "insert_many",
    "find_one",
    "find_one_and_update",
    "find_one_and_delete",
    "find_one_and_replace",
    "update_one",
    "update_many",
    "replace_one",
    "delete_one",
    "delete_many",
    "count_documents",
    "create_index",
]


def _serialised(method):
    @functools.wraps(method)
    def call(*args, **kwargs):
        with _MONGOMOCK_LOCK:
            return method(*args, **kwargs)

    return call


@pytest.fixture(scope="session", autouse=True)
def serialise_mongomock():
    originals = {name: getattr(mongomock.Collection, name) for name in _ATOMIC_COMMANDS}
    for name, method in originals.items():
        setattr(mongomock.Collection, name, _serialised(method))
    # A find's results are computed on first iteration: one read under the lock, as a
    # server answers one batch.
    compute = mongomock.collection.Cursor._compute_results
    mongomock.collection.Cursor._compute_results = _serialised(compute)
    yield
    mongomock.collection.Cursor._compute_results = compute
    for name, method in originals.items():
        setattr(mongomock.Collection, name, method)


def _mongomock(tmp_path, **options):
    return MongoStorage("conformance", client=mongomock.MongoClient(), **options)


def _real_mongo(tmp_path, **options):
    url = os.environ.get("TEST_MONGODB_URI")
    if not url:
        pytest.skip("TEST_MONGODB_URI is not set: MongoStorage on a real server not tested")
    storage = MongoStorage(
        "conformance", url=url, database=f"karasu_test_{uuid.uuid4().hex[:8]}", **options
    )
    return storage


STORAGE_FACTORIES = {
    "sqlite": _sqlite,
    "mongomock": _mongomock,
    "mongodb": _real_mongo,
}


@pytest.fixture(params=list(STORAGE_FACTORIES))
def make_storage(request, tmp_path):
    created = []

    def make(**options):
        storage = STORAGE_FACTORIES[request.param](tmp_path, **options)
        created.append(storage)
        return storage

    make.backend = request.param
    yield make
    for storage in created:
        if isinstance(storage, MongoStorage) and request.param == "mongodb":
            storage.client.drop_database(storage.messages.database.name)
        storage.close()


@pytest.fixture
def backend(make_storage) -> str:
    """Which storage this parametrised test runs on: sqlite, mongomock or mongodb."""
    return make_storage.backend


@pytest.fixture
def storage(make_storage):
    return make_storage(lease_seconds=30, max_deliveries=3)


@pytest.fixture
def empty_queue():
    """The site's queue (HUEY), emptied before and after the test."""
    HUEY.storage.flush_all()
    yield
    HUEY.storage.flush_all()
