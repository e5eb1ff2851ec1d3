import itertools
import os

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


# Fixtures that give a test the database (pytest-django's, and those built on them).
DATABASE_FIXTURES = {"db", "transactional_db", "django_db_reset_sequences", "live_server"}


def uses_database(item) -> bool:
    return item.get_closest_marker("django_db") is not None or bool(
        DATABASE_FIXTURES & set(getattr(item, "fixturenames", ()))
    )


# Tests whose figures or timeouts hold only on an otherwise quiet machine: `make test` runs
# them one at a time, after the rest has run in parallel (pytest-xdist).
SERIAL_FOLDERS = ("tests/reliability/", "tests/chaos/", "tests/e2e/", "tests/media/")
SERIAL_MODULES = {
    "tests/generation/test_expansion_speed.py",  # first image and flow figures
    "tests/generation/test_expansion_endings.py",  # call deadlines, Retry-After waits
    "tests/generation/test_pipeline.py",  # a cancel read before it commits
    "tests/generation/test_costs.py",  # the budget lock's control timing
    "tests/huey_tasks/test_storage_conformance.py",  # leases and TTLs on the emulator
    "tests/ops/test_health.py",
    "tests/ops/test_metrics.py",
}


def is_serial(item) -> bool:
    path = item.nodeid.split("::", 1)[0]
    return (
        path.startswith(SERIAL_FOLDERS)
        or path in SERIAL_MODULES
        or any(mark in item.keywords for mark in ("slow", "browser"))
    )


def pytest_collection_modifyitems(config, items):
    on_postgres = connection.vendor == "postgresql"
    skip_sqlite = pytest.mark.skip(reason="SQLite-specific; this run is on PostgreSQL")
    for item in items:
        if on_postgres and "sqlite_only" in item.keywords:
            item.add_marker(skip_sqlite)
        if is_serial(item):
            item.add_marker(pytest.mark.serial)
    # The PostgreSQL pass of `make test` runs only what touches the database: the rest
    # already ran in the first pass, and running it twice would only make CI longer.
    if os.environ.get("KARASU_DATABASE_TESTS_ONLY"):
        keep = [item for item in items if uses_database(item)]
        config.hook.pytest_deselected(items=[item for item in items if not uses_database(item)])
        items[:] = keep


@pytest.fixture(autouse=True)
def media_writes_work():
    """Each test starts with this process's media writes known to work (generation/media.py
    keeps, per process, whether the last one failed)."""
    from generation.media import MEDIA

    MEDIA.failure = ""
    yield
    MEDIA.failure = ""


@pytest.hookimpl(wrapper=True)
def pytest_runtest_makereport(item, call):
    report = yield
    if report.when == "call":
        item.karasu_call_failed = report.failed
    return report


@pytest.fixture(autouse=True)
def consumer_logs(request):
    """A failed test's report ends with what the worker processes it started logged."""
    yield
    from tests.support import consumers

    # A test whose setup failed has no call report: its logs are shown too.
    if getattr(request.node, "karasu_call_failed", True):
        consumers.print_started_logs()
    else:
        consumers.started_logs.clear()


@pytest.fixture(autouse=True)
def restore_karasu_settings():
    """Put ``settings.KARASU`` back as it was, nested dicts included, after every test
    (see tests/support/karasu_settings.py)."""
    from tests.support.karasu_settings import karasu_settings_restored

    with karasu_settings_restored():
        yield


@pytest.fixture
def editor(client, django_user_model):
    """The test client, logged in to the admin as the superuser "editor"."""
    user = django_user_model.objects.create_superuser("editor", "e@example.com", "pw")
    client.force_login(user)
    return client


@pytest.fixture
def limited_editor(django_user_model):
    """``limited_editor(*codenames, collection_permissions=None)``: a test client of its own,
    logged in to the admin as a new user whose only permissions are ``access_admin`` and
    ``codenames`` (such as "view_taskrun"), and, if given, the Wagtail image permissions
    ``collection_permissions`` names for each collection (``{collection: ["add_image"]}``).
    Each call logs in a new user on a new client, so a test can compare permissions side
    by side."""
    from django.contrib.auth.models import Group, Permission
    from django.test import Client
    from wagtail.models import GroupCollectionPermission

    made = itertools.count(1)

    def login(*codenames: str, collection_permissions: dict | None = None) -> Client:
        number = next(made)
        wanted = {"access_admin", *codenames}
        permissions = list(Permission.objects.filter(codename__in=wanted))
        assert {p.codename for p in permissions} == wanted, "an unknown permission codename"
        group = Group.objects.create(name=f"limited-{number}")
        group.permissions.add(*permissions)
        for collection, image_codenames in (collection_permissions or {}).items():
            for codename in image_codenames:
                GroupCollectionPermission.objects.create(
                    group=group,
                    collection=collection,
                    permission=Permission.objects.get(
                        content_type__app_label="wagtailimages", codename=codename
                    ),
                )
        user = django_user_model.objects.create_user(f"limited-{number}", password="pw")
        user.groups.add(group)
        client = Client()
        client.force_login(user)
        return client

    return login


@pytest.fixture
def demo(settings):
    """The offline demo image model, never failing and without latency; ``demo(**knobs)``
    tunes its settings for one test (``demo(reject_rate=1.0)``)."""
    # Imported here, not when the suite starts (see restore_karasu_settings).
    from generation.limits import limiter_for
    from generation.providers import reset_cache

    def configure(**knobs):
        settings.KARASU["IMAGE_MODELS"]["demo"] = {
            **settings.KARASU["IMAGE_MODELS"]["demo"],
            **{k.upper(): v for k, v in knobs.items()},
        }
        reset_cache()
        limiter_for.cache_clear()

    configure(latency=0, failure_rate=0, reject_rate=0, concurrency=8)
    yield configure
    reset_cache()
    limiter_for.cache_clear()


@pytest.fixture
def thread_consumer():
    """A real Huey consumer (thread workers + scheduler) running in this process."""
    from tests.support.consumers import thread_consumer_running

    with thread_consumer_running() as consumer:
        yield consumer


@pytest.fixture
def collections(db):
    """The collections the data migrations create (a transactional test flushes them)."""
    from wagtail.models import Collection

    from cms.models import GENERATED_IMAGES_COLLECTION

    root = Collection.get_first_root_node() or Collection.add_root(name="Root")
    existing = root.get_children().filter(name=GENERATED_IMAGES_COLLECTION).first()
    return existing or root.add_child(name=GENERATED_IMAGES_COLLECTION)
