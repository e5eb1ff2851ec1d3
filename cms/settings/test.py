import os
import tempfile
from pathlib import Path

from .base import *  # noqa: F403
from .base import HUEY, database_config, env

DEBUG = False
SECRET_KEY = "karasu-test-secret-key"
PASSWORD_HASHERS = ["django.contrib.auth.hashers.MD5PasswordHasher"]

# Every test run gets its own scratch folder for media and the queue file, so runs never
# see each other's state.
TEST_DATA_DIR = Path(tempfile.mkdtemp(prefix="karasu-test-"))
MEDIA_ROOT = TEST_DATA_DIR / "media"
HUEY_QUEUE_FILE = TEST_DATA_DIR / "queue.sqlite3"
HUEY = {**HUEY, "filename": str(HUEY_QUEUE_FILE)}

# TEST_DATABASE_URL runs the database-dependent tests against PostgreSQL.
if os.environ.get("TEST_DATABASE_URL"):
    DATABASES = {"default": database_config(env.str("TEST_DATABASE_URL"))}
else:
    DATABASES = {
        "default": database_config(f"sqlite:///{TEST_DATA_DIR / 'karasu.sqlite3'}")
    }
    # A file, not :memory:, so that worker threads and subprocesses share it.
    DATABASES["default"]["TEST"] = {"NAME": str(TEST_DATA_DIR / "test-karasu.sqlite3")}
