"""What ``/healthz`` checks: the database and the queue storage each answer, in bounded time.

A failure is logged (through the redacting log filter) and reported only as "failed": no
exception text, host names or other internals reach the response. The checks run at most
once a second per process (``latest_results``); the probes in between get that answer while
it is at most CHECK_INTERVAL plus the checks' timeouts old, and "failed" for a check stuck
past its timeout after that (see LatestResults).
"""

from __future__ import annotations

import logging
import threading
import time
from concurrent.futures import ThreadPoolExecutor

from django.db import connection
from huey.contrib.djhuey import HUEY

from cms.redaction import redact

logger = logging.getLogger(__name__)

# Seconds the queue storage has to answer, so that a probe gets its answer within its own
# timeout (give it a few seconds) even when MongoDB is unreachable.
QUEUE_TIMEOUT = 2.0


# Seconds the database has to answer. The query runs in one thread of its own on a fresh
# connection, because a persistent connection to a server that froze (no RST, no answer)
# would hold the probe for the TCP timeout, and connect_timeout does not apply to it. A
# check still stuck there makes the next ones fail in time too, without piling up threads.
DATABASE_TIMEOUT = 3.0
_database_probe = ThreadPoolExecutor(max_workers=1, thread_name_prefix="healthz-db")


def _query_database() -> None:
    try:
        with connection.cursor() as cursor:
            cursor.execute("SELECT 1")
            cursor.fetchone()
    finally:
        connection.close()  # this thread's own, so the next check opens a fresh one


def check_database(timeout: float | None = None) -> None:
    """One trivial query on the default database, bounded by ``timeout``; raises if it
    cannot be made in time."""
    future = _database_probe.submit(_query_database)
    try:
        future.result(DATABASE_TIMEOUT if timeout is None else timeout)
    except TimeoutError:
        future.cancel()  # if still queued behind a stuck one, it never runs
        raise


def check_queue(timeout: float | None = None) -> None:
    """A trivial call to the queue storage, bounded by ``timeout`` (QUEUE_TIMEOUT); raises
    on failure."""
    storage = HUEY.storage
    if hasattr(storage, "health_check"):
        storage.health_check(QUEUE_TIMEOUT if timeout is None else timeout)
    else:  # Huey's own storages (immediate mode) get a cheap read
        storage.queue_size()


CHECKS = {"database": check_database, "queue": check_queue}


def run_check(name: str) -> str:
    """The check ``name`` of CHECKS: "ok" when it answers, else "failed" (and a log line)."""
    try:
        CHECKS[name]()
    except Exception as exc:
        # One line per failed probe (probes come every few seconds), secrets redacted.
        logger.warning(
            "Health check: the %s does not answer: %s",
            name,
            redact(f"{exc.__class__.__name__}: {exc}"),
        )
        return "failed"
    return "ok"


# /healthz needs no authentication, and each check opens a database connection of its own
# and calls the queue storage. Answers are reused for this long, so any number of hits make
# at most one check a second per process and cannot exhaust the database's connections. No
# 200 comes from a run that ended more than CHECK_INTERVAL + longest_check() (6 s) before. A
# change shows within about a second when the database and queue answer or refuse at once,
# and one that stops answering is reported failed once its timeout has passed.
CHECK_INTERVAL = 1.0


def longest_check() -> float:
    """Seconds a run of all the checks may take: each is bounded by its own timeout. A run
    under way for longer is stuck on the check it is waiting for."""
    return DATABASE_TIMEOUT + QUEUE_TIMEOUT


class LatestResults:
    """The last results of the checks, run again once they are CHECK_INTERVAL old.

    One hit at a time runs them (``_lock``). A hit that comes meanwhile is not held while
    there is a recent answer: it gets that answer, with what the run under way has found so
    far. An answer is recent while it is at most CHECK_INTERVAL plus longest_check() old,
    as it is whenever hits keep coming and every check keeps to its timeout. Otherwise (the
    first hits of a process, hits after a quiet spell, a check stuck past its timeout) the
    hit waits for the run under way until that run has taken longest_check(), and past
    that the check it is still waiting for counts as "failed". So no hit is ever answered
    "ok" from an answer older than that bound, nor held longer than one run may take.
    """

    def __init__(self) -> None:
        self._lock = threading.Lock()  # held by the hit running the checks
        self._state = threading.Lock()  # guards what the run publishes, below
        self._results: dict[str, str] | None = None
        self._checked_at = 0.0  # time.monotonic() when the last run finished
        self._started_at = 0.0  # time.monotonic() when the run under way started
        self._checking: str | None = None  # the check the run under way waits for
        self._under_way: dict[str, str] = {}  # the results of the run under way so far

    def get(self) -> dict[str, str]:
        if self._lock.acquire(blocking=False):
            return self._run_if_due()
        with self._state:
            now = time.monotonic()
            if self._results is not None and now - self._checked_at <= (
                CHECK_INTERVAL + longest_check()
            ):
                return {**self._results, **self._under_way}
            # Wait until the run under way has had its time; a run that has just ended, or
            # a forget(), releases the lock at once.
            wait = longest_check()
            if self._checking is not None:
                wait = max(0.0, self._started_at + longest_check() - now)
        if self._lock.acquire(timeout=wait):
            return self._run_if_due()
        return self._stuck_answer()

    def _run_if_due(self) -> dict[str, str]:
        """Run the checks if the last answer is CHECK_INTERVAL old. Called holding _lock,
        which it releases."""
        try:
            # Counted from the end of the last run, so a slow run (a database timing out for
            # 3 s) is not followed at once by another.
            if self._results is not None and time.monotonic() - self._checked_at < CHECK_INTERVAL:
                return self._results
            with self._state:
                self._started_at = time.monotonic()
                self._under_way = {}
            try:
                for name in CHECKS:
                    with self._state:
                        self._checking = name
                    result = run_check(name)
                    with self._state:
                        self._under_way[name] = result
                with self._state:
                    self._results = dict(self._under_way)
                    self._checked_at = time.monotonic()
            finally:
                with self._state:
                    self._checking = None
                    self._under_way = {}
            return self._results
        finally:
            self._lock.release()

    def _stuck_answer(self) -> dict[str, str]:
        """The answer for a hit that waited for a run past longest_check(): what that run
        has found so far, the check it still waits for as failed, the rest as last answered."""
        with self._state:
            answer = dict(self._results or dict.fromkeys(CHECKS, "failed"))
            if self._checking is not None:  # else the run has just ended and its answer stands
                answer.update(self._under_way)
                answer[self._checking] = "failed"
            return answer

    def forget(self) -> None:
        """Check again on the next hit (tests start from a fresh process's state)."""
        with self._lock, self._state:
            self._results = None


latest_results = LatestResults()
