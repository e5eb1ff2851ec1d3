"""Start real `manage.py run_huey` consumer processes against the suite's database and queue."""

from __future__ import annotations

import contextlib
import fcntl
import os
import signal
import sqlite3
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from pathlib import Path

from django.conf import settings
from django.db import connection

ROOT = Path(settings.BASE_DIR)

# The log file of every consumer process started in the current test, printed at its
# teardown so that a failed test's report shows what its workers said.
started_logs: list[Path] = []


def suite_database_url() -> str:
    params = connection.settings_dict
    if connection.vendor == "sqlite":
        return f"sqlite:///{params['NAME']}"
    user = params.get("USER") or ""
    password = f":{params['PASSWORD']}" if params.get("PASSWORD") else ""
    host = params.get("HOST") or "127.0.0.1"
    port = params.get("PORT") or 5432
    return f"postgres://{user}{password}@{host}:{port}/{params['NAME']}"


def consumer_env(**extra: str) -> dict[str, str]:
    env = dict(os.environ)
    env.update(
        DJANGO_SETTINGS_MODULE="tests.support.settings",
        KARASU_SUITE_DATABASE_URL=suite_database_url(),
        PYTHONUNBUFFERED="1",
    )
    env.update(extra)
    return env


def start_consumer(log_file: Path, workers: int = 2, **extra_env: str) -> subprocess.Popen:
    started_logs.append(log_file)
    return subprocess.Popen(
        # No periodic tasks: maintenance must not add messages the tests count.
        [
            sys.executable,
            "manage.py",
            "run_huey",
            "--workers",
            str(workers),
            "--no-periodic",
            "--delay",
            "0.05",
            "--max-delay",
            "0.2",
        ],
        cwd=ROOT,
        env=consumer_env(**extra_env),
        stdout=open(log_file, "ab"),
        stderr=subprocess.STDOUT,
        start_new_session=True,
    )


def stop(process: subprocess.Popen, sig: int = signal.SIGINT, timeout: float = 30) -> int:
    if process.poll() is None:
        process.send_signal(sig)
    try:
        return process.wait(timeout)
    except subprocess.TimeoutExpired:
        process.kill()
        return process.wait()


def show_on_failure(path: Path) -> None:
    """Have the end of ``path`` (a log the test writes) printed with the workers' logs."""
    started_logs.append(path)


def print_started_logs(lines: int = 80) -> None:
    """Print the end of each log of the consumers the test started (pytest shows a failed
    test's captured output), and forget them."""
    try:
        for log_file in started_logs:
            with contextlib.suppress(OSError):
                tail = log_file.read_text(errors="replace").splitlines()[-lines:]
                print(f"--- last {len(tail)} lines of {log_file.name}", *tail, sep="\n")
    finally:
        started_logs.clear()


def stopped(process: subprocess.Popen, timeout: float = 2.0) -> bool:
    """Wait until every thread of ``process`` has stopped (after a SIGSTOP): the signal is
    delivered a moment after ``send_signal`` returns."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            states = {
                (task / "stat").read_text().rsplit(")", 1)[1].split()[0]
                for task in Path(f"/proc/{process.pid}/task").iterdir()
            }
        except (OSError, IndexError):
            states = set()  # a thread ended while being read: look again
        if states and states <= {"T", "t"}:
            return True
        time.sleep(0.005)
    return False


def writers_blocked() -> bool:
    """Whether a stopped worker may hold a write lock that every other process needs.

    On SQLite one process writes at a time (the write lock of the queue file, and the
    database's write turn, cms/sqlite3); on PostgreSQL a transaction left open holds its row
    and advisory locks. A worker frozen while it holds one stalls every other process until
    it is thawed, which no claim or lease can change. A test that freezes a worker to see
    its claims run out must therefore freeze it between two writes."""
    from huey.contrib.djhuey import HUEY

    queue_file = getattr(HUEY.storage, "filename", None)
    if isinstance(queue_file, str) and not _sqlite_free(queue_file):
        return True
    if connection.vendor == "postgresql":
        with connection.cursor() as cursor:
            cursor.execute(
                "select count(*) from pg_stat_activity where datname = current_database()"
                " and backend_type = 'client backend' and pid <> pg_backend_pid()"
                " and xact_start is not null"
            )
            return cursor.fetchone()[0] > 0
    if connection.vendor == "sqlite":
        name = os.path.abspath(str(connection.settings_dict["NAME"]))
        # Every writer takes the turn first: probe the file while holding it, as they do.
        with open(f"{name}-turn", "a") as turn:
            try:
                fcntl.flock(turn, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except BlockingIOError:
                return True
            try:
                return not _sqlite_free(name)
            finally:
                fcntl.flock(turn, fcntl.LOCK_UN)
    return False


def _sqlite_free(path: str) -> bool:
    probe = sqlite3.connect(path, timeout=0.2, isolation_level=None)
    try:
        probe.execute("begin immediate")
        probe.execute("rollback")
        return True
    except sqlite3.OperationalError:
        return False
    finally:
        probe.close()


def freeze_between_writes(
    process: subprocess.Popen, ready=lambda: True, timeout: float = 60, message: str = "a freeze"
):
    """SIGSTOP ``process`` at a moment it holds no write lock (``writers_blocked``) and
    ``ready()`` returns something true, which is returned. Otherwise let it go on (SIGCONT)
    and try again a moment later."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        process.send_signal(signal.SIGSTOP)
        if stopped(process) and not writers_blocked():
            value = ready()
            if value:
                return value
        process.send_signal(signal.SIGCONT)
        time.sleep(0.02)
    raise AssertionError(f"timed out after {timeout}s waiting for {message}")


def wait_for(predicate, timeout: float, interval: float = 0.1, message: str = "condition"):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        value = predicate()
        if value:
            return value
        time.sleep(interval)
    raise AssertionError(f"timed out after {timeout}s waiting for {message}")


def queued_tasks(name: str) -> list:
    """Queued tasks called ``name`` (Wagtail's own index tasks share the queue)."""
    from huey.contrib.djhuey import HUEY

    tasks = [HUEY.deserialize_task(data) for data in HUEY.storage.enqueued_items()]
    return [task for task in tasks if task.name.rsplit(".", 1)[-1] == name]


def bury(task_id: str) -> None:
    """Let a message's leases run out until the storage dead-letters it."""
    from huey.contrib.djhuey import HUEY

    storage = HUEY.storage

    def buried():
        if any(HUEY.deserialize_task(d.data).id == task_id for d in storage.dead_letters()):
            return True
        storage.claim(lease_seconds=0.001)
        time.sleep(0.002)
        return False

    wait_for(buried, 10, interval=0, message=f"{task_id} dead-lettered")


@contextlib.contextmanager
def thread_consumer_running(workers: int = 8) -> Iterator[object]:
    """A real Huey consumer (thread workers + scheduler) running in this process, on an
    empty queue, stopped and emptied again on exit."""
    from huey.contrib.djhuey import HUEY

    HUEY.storage.flush_all()
    consumer = HUEY.create_consumer(workers=workers, periodic=False)
    # run() installs signal handlers, which only the main thread may do.
    consumer._set_signal_handlers = lambda: None
    runner = threading.Thread(target=consumer.run, daemon=True)
    runner.start()
    try:
        yield consumer
    finally:
        consumer.stop(graceful=True)
        runner.join(30)
        HUEY.storage.flush_all()
