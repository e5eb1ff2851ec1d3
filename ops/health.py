"""What ``/healthz`` checks: the database and the queue storage each answer, in bounded time.

A failure is logged (through the redacting log filter) and reported only as "failed": no
exception text, host names or other internals reach the response.
"""

from __future__ import annotations

import logging
from concurrent.futures import ThreadPoolExecutor

from django.db import connection
from huey.contrib.djhuey import HUEY

from generation.providers.errors import redact

logger = logging.getLogger(__name__)

# Seconds the queue storage has to answer, so that a probe gets its answer within its own
# timeout (give it a few seconds) even when MongoDB is unreachable.
QUEUE_TIMEOUT = 2.0


# Seconds the database has to answer. The query runs in one thread of its own on a fresh
# connection: a persistent connection to a server that froze (no RST, no answer) would hold
# the probe for the TCP timeout, and connect_timeout does not apply to it. A check still
# stuck there makes the next ones fail in time too, without piling up threads.
DATABASE_TIMEOUT = 3.0
_database_probe = ThreadPoolExecutor(max_workers=1, thread_name_prefix="healthz-db")


def _query_database() -> None:
    try:
        with connection.cursor() as cursor:
            cursor.execute("SELECT 1")
            cursor.fetchone()
    finally:
        connection.close()  # this thread's own connection: a fresh one next time


def check_database(timeout: float | None = None) -> None:
    """One trivial query on the default database, bounded by ``timeout``; raises if it
    cannot be made in time."""
    future = _database_probe.submit(_query_database)
    try:
        future.result(DATABASE_TIMEOUT if timeout is None else timeout)
    except TimeoutError:
        future.cancel()  # still queued behind a stuck one: never run it
        raise


def check_queue(timeout: float | None = None) -> None:
    """A trivial call to the queue storage, bounded by ``timeout`` (QUEUE_TIMEOUT); raises
    on failure."""
    storage = HUEY.storage
    if hasattr(storage, "health_check"):
        storage.health_check(QUEUE_TIMEOUT if timeout is None else timeout)
    else:  # Huey's own storages (immediate mode): a cheap read
        storage.queue_size()


CHECKS = {"database": check_database, "queue": check_queue}


def run_checks() -> dict[str, str]:
    """{"database": "ok" | "failed", "queue": "ok" | "failed"}"""
    results = {}
    for name, check in CHECKS.items():
        try:
            check()
        except Exception as exc:
            # One line per failed probe (probes come every few seconds), secrets redacted.
            logger.warning(
                "Health check: the %s does not answer: %s",
                name,
                redact(f"{exc.__class__.__name__}: {exc}"),
            )
            results[name] = "failed"
        else:
            results[name] = "ok"
    return results
