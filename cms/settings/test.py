import os
import tempfile
from pathlib import Path

from .base import *  # noqa: F403
from .base import HUEY, database_config, env, number

DEBUG = False
SECRET_KEY = "karasu-test-secret-key"
PASSWORD_HASHERS = ["django.contrib.auth.hashers.MD5PasswordHasher"]

# Every test run gets its own scratch folder for media and the queue file, so runs never
# see each other's state.
# Worker subprocesses started by the tests inherit the variable, so they share the folder.
TEST_DATA_DIR = Path(
    os.environ.setdefault("KARASU_TEST_DATA_DIR", tempfile.mkdtemp(prefix="karasu-test-"))
)
# Under pytest-xdist each worker process gets a folder of its own inside the run's (its
# queue file, SQLite database and media); its subprocesses inherit the worker's folder.
if (xdist_worker := os.environ.get("PYTEST_XDIST_WORKER")) and TEST_DATA_DIR.name != xdist_worker:
    TEST_DATA_DIR = TEST_DATA_DIR / xdist_worker
    TEST_DATA_DIR.mkdir(exist_ok=True)
    os.environ["KARASU_TEST_DATA_DIR"] = str(TEST_DATA_DIR)
MEDIA_ROOT = TEST_DATA_DIR / "media"
# Test media stays in the scratch folder even when MEDIA_S3_* is set (or in `.env`) for
# the site: the suite must never write to a real bucket. tests/media opts in for its local
# S3 endpoint (KARASU_TEST_MEDIA_S3, in the worker processes it starts).
if not os.environ.get("KARASU_TEST_MEDIA_S3"):
    STORAGES = {**STORAGES, "default": media_storage()}  # noqa: F405
# No test signs with a certificate from the environment (or `.env`); tests that sign
# configure a throwaway one (tests/support/c2pa.py).
KARASU = {**KARASU, "C2PA": {}}  # noqa: F405
HUEY_QUEUE_FILE = TEST_DATA_DIR / "queue.sqlite3"
# Tests always use the embedded queue (MongoStorage has its own suite), with short leases so
# crash tests do not wait long.
HUEY = {
    **{key: value for key, value in HUEY.items() if key != "url"},
    "huey_class": "huey_tasks.queue.SqliteLeasingHuey",
    "filename": str(HUEY_QUEUE_FILE),
    "lease_seconds": 3.0,
    # Scaled like the leases, so a task that cannot reach the database returns within 2 s.
    # Read with the range base.py declares for it, so a bad value is refused here too.
    "outage_backoff_max": number("KARASU_OUTAGE_BACKOFF_MAX", 2.0),
    # Short by default; a test of a deploy's grace sets its own (KARASU_SHUTDOWN_TIMEOUT).
    "consumer": {
        **HUEY["consumer"],
        "shutdown_timeout": number("KARASU_SHUTDOWN_TIMEOUT", 2.0),
    },
}

# A worker subprocess of a MongoDB-tier test uses that test's database as its queue.
if os.environ.get("KARASU_TEST_QUEUE_MONGODB"):
    HUEY = {
        **{key: value for key, value in HUEY.items() if key != "filename"},
        "huey_class": "huey_tasks.queue.MongoLeasingHuey",
        "url": os.environ["KARASU_TEST_QUEUE_MONGODB"],
    }

# A worker subprocess of the suite is pointed at the suite's test database.
if os.environ.get("KARASU_SUITE_DATABASE_URL"):
    DATABASES = {"default": database_config(os.environ["KARASU_SUITE_DATABASE_URL"])}
# TEST_DATABASE_URL runs the database-dependent tests against PostgreSQL.
elif os.environ.get("TEST_DATABASE_URL"):
    DATABASES = {"default": database_config(env.str("TEST_DATABASE_URL"))}
else:
    DATABASES = {"default": database_config(f"sqlite:///{TEST_DATA_DIR / 'karasu.sqlite3'}")}
    # A file, not :memory:, so that worker threads and subprocesses share it.
    DATABASES["default"]["TEST"] = {"NAME": str(TEST_DATA_DIR / "test-karasu.sqlite3")}

# Fast retries in tests; the policy (3 retries, exponential backoff, jitter) is the same.
KARASU = {**KARASU, "RETRY": {"BACKOFF_BASE": 0.05, "BACKOFF_MAX": 0.2}}  # noqa: F405

# Worker threads in the suite must not keep connections open past their tasks, or the
# PostgreSQL test database cannot be dropped at the end of the run.
DATABASES["default"]["CONN_MAX_AGE"] = 0
