"""The embedded SQLite backend: a process's threads take turns to write, reads never wait."""

import threading
import time

import pytest
from django.db import OperationalError, connection, connections, transaction

from huey_tasks.models import WorkerHeartbeat

pytestmark = [pytest.mark.django_db(transaction=True), pytest.mark.sqlite_only]


def heartbeat() -> WorkerHeartbeat:
    from django.utils import timezone

    now = timezone.now()
    return WorkerHeartbeat.objects.create(
        host="h", pid=1, workers=1, worker_type="thread", started_at=now, last_seen=now
    )


def in_thread(fn) -> tuple[threading.Thread, list]:
    """Run ``fn`` in a thread with its own connection; the list gets its result or error."""
    outcome: list = []

    def run():
        try:
            outcome.append(fn())
        except Exception as exc:  # reported to the test
            outcome.append(exc)
        finally:
            connection.close()

    thread = threading.Thread(target=run, daemon=True)
    thread.start()
    return thread, outcome


def hold_a_write_transaction(row: int, release: threading.Event, rollback: bool = False):
    holding = threading.Event()

    def run():
        with transaction.atomic():
            WorkerHeartbeat.objects.filter(pk=row).update(workers=2)
            holding.set()
            release.wait(20)
            if rollback:
                raise RuntimeError("rolled back")
        return "committed"

    thread, outcome = in_thread(run)
    assert holding.wait(10)
    return thread, outcome


def write_taking_turns(row: int, pid: int):
    """A write in a thread whose connection has SQLite's busy handler off: stock SQLite
    answers "database is locked" at once while another connection writes, so a write that
    succeeds after waiting waited for Karasu's turn, not in SQLite."""

    def write():
        connection.cursor().execute("PRAGMA busy_timeout=0")
        return WorkerHeartbeat.objects.filter(pk=row).update(pid=pid)

    return in_thread(write)


def test_a_write_waits_for_the_open_write_transaction_and_reads_do_not():
    assert type(connections["default"]).__module__ == "cms.sqlite3.base"
    row = heartbeat().pk
    release = threading.Event()
    holder, held = hold_a_write_transaction(row, release)

    writer, written = write_taking_turns(row, 5)
    reader, read = in_thread(lambda: WorkerHeartbeat.objects.get(pk=row).workers)
    reader.join(5)
    assert read == [1]  # the reader saw the last commit at once
    time.sleep(0.3)
    assert written == []  # the writer waits its turn
    release.set()
    holder.join(10)
    writer.join(10)
    assert held == ["committed"] and written == [1]
    assert WorkerHeartbeat.objects.get(pk=row).pid == 5


def test_a_rolled_back_transaction_passes_the_turn_on():
    row = heartbeat().pk
    release = threading.Event()
    holder, held = hold_a_write_transaction(row, release, rollback=True)
    writer, written = write_taking_turns(row, 7)
    time.sleep(0.3)
    assert written == []  # waiting for the turn
    release.set()
    holder.join(10)
    writer.join(10)
    assert isinstance(held[0], RuntimeError) and written == [1]
    beat = WorkerHeartbeat.objects.get(pk=row)
    assert beat.workers == 1 and beat.pid == 7  # the rollback kept nothing; the write did


def test_a_turn_waited_for_past_the_timeout_is_database_is_locked():
    row = heartbeat().pk
    release = threading.Event()
    holder, _ = hold_a_write_transaction(row, release)

    def impatient_write():
        settings_dict = connection.settings_dict  # this thread's connection only
        connection.settings_dict = {
            **settings_dict,
            "OPTIONS": {**settings_dict["OPTIONS"], "timeout": 0.2},
        }
        return WorkerHeartbeat.objects.filter(pk=row).update(pid=9)

    writer, written = in_thread(impatient_write)
    writer.join(10)
    release.set()
    holder.join(10)
    assert isinstance(written[0], OperationalError) and "locked" in str(written[0])


# Each writer with SQLite's busy handler off: any wait in SQLite itself is an error at once.
WRITER = """
import django, sys
django.setup()
from django.db import connection, transaction
from huey_tasks.models import WorkerHeartbeat
connection.cursor().execute("PRAGMA busy_timeout=0")
row = int(sys.argv[1])
for _ in range(60):
    with transaction.atomic():
        WorkerHeartbeat.objects.filter(pk=row).update(workers=2)
    WorkerHeartbeat.objects.filter(pk=row).update(pid=3)
print("ok")
"""


def write_without_busy_handler(row: int) -> str:
    from django.db import connection as thread_connection

    thread_connection.cursor().execute("PRAGMA busy_timeout=0")
    for _ in range(60):
        with transaction.atomic():
            WorkerHeartbeat.objects.filter(pk=row).update(workers=2)
        WorkerHeartbeat.objects.filter(pk=row).update(pid=3)
    return "ok"


def test_threads_take_turns_instead_of_waiting_in_sqlite():
    rows = [heartbeat().pk for _ in range(6)]
    threads = [in_thread(lambda row=row: write_without_busy_handler(row)) for row in rows]
    for thread, _ in threads:
        thread.join(60)
    assert [outcome for _, outcome in threads] == [["ok"]] * 6


def test_the_control_threads_of_djangos_backend_do_wait_in_sqlite(monkeypatch):
    """Without turns the same load meets a busy database, so the test above means something."""
    monkeypatch.setitem(connections.settings["default"], "ENGINE", "django.db.backends.sqlite3")
    rows = [heartbeat().pk for _ in range(6)]
    threads = [in_thread(lambda row=row: write_without_busy_handler(row)) for row in rows]
    for thread, _ in threads:
        thread.join(60)
    errors = [outcome[0] for _, outcome in threads if outcome != ["ok"]]
    assert any("locked" in str(error) for error in errors), errors


def test_processes_take_turns_instead_of_waiting_in_sqlite():
    import subprocess
    import sys

    from tests.support.consumers import ROOT, consumer_env

    rows = [heartbeat().pk for _ in range(3)]
    writers = [
        subprocess.Popen(
            [sys.executable, "-c", WRITER, str(row)],
            cwd=ROOT,
            env=consumer_env(),
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
        )
        for row in rows
    ]
    outcomes = [writer.communicate(timeout=120) for writer in writers]
    assert [out.strip() for out, _ in outcomes] == ["ok"] * 3, [err[-500:] for _, err in outcomes]


def test_many_threads_write_without_errors():
    rows = [heartbeat().pk for _ in range(8)]

    def bump(row):
        def run():
            for _ in range(25):
                with transaction.atomic():
                    beat = WorkerHeartbeat.objects.select_for_update().get(pk=row)
                    beat.workers += 1
                    beat.save(update_fields=["workers"])
                WorkerHeartbeat.objects.filter(pk=row).update(pid=beat.workers)
            return "done"

        return run

    threads = [in_thread(bump(row)) for row in rows]
    for thread, _ in threads:
        thread.join(60)
    assert [outcome for _, outcome in threads] == [["done"]] * 8
    assert set(WorkerHeartbeat.objects.values_list("workers", flat=True)) == {26}


def test_single_writes_outside_transactions_pass_the_turn_on():
    # Model.save() outside a transaction is an INSERT ... RETURNING in autocommit mode.
    rows = [heartbeat().pk for _ in range(3)]
    WorkerHeartbeat.objects.filter(pk__in=rows).update(pid=3)
    writer, written = in_thread(lambda: [heartbeat().pk for _ in range(3)])
    writer.join(10)
    assert len(written[0]) == 3
    assert not connections["default"]._has_turn


def test_another_process_holding_the_file_turn_makes_writers_wait():
    import subprocess
    import sys

    name = connections["default"].settings_dict["NAME"]
    holder = subprocess.Popen(
        [
            sys.executable,
            "-c",
            (
                "import fcntl, os, sys, time\n"
                f"fd = os.open({name + '-turn'!r}, os.O_CREAT | os.O_RDWR)\n"
                "fcntl.flock(fd, fcntl.LOCK_EX)\n"
                "print('held', flush=True)\n"
                "time.sleep(1.0)\n"
            ),
        ],
        stdout=subprocess.PIPE,
        text=True,
    )
    assert holder.stdout.readline().strip() == "held"
    started = time.monotonic()
    heartbeat()  # waits for the other process's turn, then writes
    assert time.monotonic() - started > 0.3
    holder.wait(10)
