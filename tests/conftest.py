import copy
import sys
import threading

import pytest
from django.conf import settings
from django.db import connection

# queue_backend: run a queue test on SQLite and, with TEST_MONGODB_URI, on MongoDB.
pytest_plugins = ["tests.support.queue_backends"]


def pytest_report_header(config):
    url = (
        "TEST_DATABASE_URL (PostgreSQL)"
        if settings.DATABASES["default"]["ENGINE"].endswith("postgresql")
        else "SQLite file"
    )
    return f"karasu: database tests run on {url}"


def pytest_collection_modifyitems(config, items):
    on_postgres = connection.vendor == "postgresql"
    skip_sqlite = pytest.mark.skip(reason="SQLite-specific; this run is on PostgreSQL")
    for item in items:
        if on_postgres and "sqlite_only" in item.keywords:
            item.add_marker(skip_sqlite)


@pytest.fixture(autouse=True)
def media_writes_work():
    """Each test starts with this process's media writes known to work (generation/media.py
    keeps, per process, whether the last one failed)."""
    from generation.media import MEDIA

    MEDIA.failure = ""
    yield
    MEDIA.failure = ""


@pytest.fixture(autouse=True)
def restore_karasu_settings():
    """Put ``settings.KARASU`` back as it was, nested dicts included, after every test.

    pytest-django's ``settings`` fixture restores top-level attributes only, and tests tune
    providers in place (``settings.KARASU["IMAGE_MODELS"]["demo"] = ...``).
    """
    karasu = settings.KARASU
    saved = copy.deepcopy(karasu)
    yield
    # In place: the same dict object stays the setting, whoever holds a reference to it.
    karasu.clear()
    karasu.update(saved)
    from generation.providers import reset_cache

    reset_cache()  # clients are cached by name with the options they were built with
    # The per-model limiters are cached with their CONCURRENCY too; only clear them if the
    # tasks module is loaded already (importing it here would register its tasks early).
    tasks = sys.modules.get("huey_tasks.tasks")
    if tasks is not None and hasattr(getattr(tasks, "limiter_for", None), "cache_clear"):
        tasks.limiter_for.cache_clear()


@pytest.fixture
def admin_client_logged_in(client, django_user_model):
    user = django_user_model.objects.create_superuser("root", "root@example.com", "pw")
    client.force_login(user)
    return client


@pytest.fixture
def thread_consumer():
    """A real Huey consumer (thread workers + scheduler) running in this process."""
    from huey.contrib.djhuey import HUEY

    HUEY.storage.flush_all()
    consumer = HUEY.create_consumer(workers=8, periodic=False)
    # run() installs signal handlers, which only the main thread may do.
    consumer._set_signal_handlers = lambda: None
    runner = threading.Thread(target=consumer.run, daemon=True)
    runner.start()
    yield consumer
    consumer.stop(graceful=True)
    runner.join(30)
    HUEY.storage.flush_all()


@pytest.fixture
def collections(db):
    """The collections the data migrations create (a transactional test flushes them)."""
    from wagtail.models import Collection

    from cms.models import GENERATED_IMAGES_COLLECTION

    root = Collection.get_first_root_node() or Collection.add_root(name="Root")
    existing = root.get_children().filter(name=GENERATED_IMAGES_COLLECTION).first()
    return existing or root.add_child(name=GENERATED_IMAGES_COLLECTION)
