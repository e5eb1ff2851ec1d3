"""Writes to the SQLite database: WAL mode, and concurrent read-then-write transactions that
do not lock (IMMEDIATE transactions), with the control that shows they would otherwise. The
concurrent-writes test also runs on PostgreSQL."""

import threading
import time

import pytest
from django.db import connection, connections, transaction

from cms.models import KarasuImage


@pytest.mark.sqlite_only
@pytest.mark.django_db
def test_sqlite_connection_is_in_wal_mode():
    with connection.cursor() as cursor:
        cursor.execute("PRAGMA journal_mode")
        assert cursor.fetchone()[0] == "wal"
        cursor.execute("PRAGMA busy_timeout")
        assert cursor.fetchone()[0] >= 5000


def read_then_write_concurrently(rounds: int = 5) -> list[BaseException]:
    """Two threads, each running ``rounds`` read-then-write transactions at the same time.

    This is what locks SQLite: two transactions that both read first hold read snapshots,
    and when one commits a write the other can no longer upgrade to a writer ("database is
    locked", at once, whatever the busy timeout). IMMEDIATE transactions take the write
    lock at BEGIN, so the second waits for the first instead.
    """
    errors: list[BaseException] = []
    barrier = threading.Barrier(2)

    def work(prefix: str) -> None:
        try:
            for _ in range(rounds):
                barrier.wait(timeout=60)  # both transactions start together every round
                with transaction.atomic():
                    done = KarasuImage.objects.filter(title__startswith=f"{prefix}-").count()
                    time.sleep(0.05)  # the other thread's transaction begins meanwhile
                    KarasuImage.objects.create(
                        title=f"{prefix}-{done}",
                        file=f"original_images/{prefix}-{done}.png",
                        width=1,
                        height=1,
                    )
        except BaseException as exc:  # noqa: BLE001 - reported by the caller
            errors.append(exc)
            barrier.abort()  # do not leave the other thread waiting
        finally:
            connections.close_all()

    threads = [threading.Thread(target=work, args=(name,)) for name in ("a", "b")]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    return errors


@pytest.mark.django_db(transaction=True)
def test_two_threads_writing_at_once_do_not_lock(collections):
    errors = read_then_write_concurrently()
    assert errors == []
    titles = set(KarasuImage.objects.values_list("title", flat=True))
    assert titles == {f"{prefix}-{n}" for prefix in "ab" for n in range(5)}


@pytest.mark.sqlite_only
@pytest.mark.django_db(transaction=True)
def test_the_same_load_locks_sqlite_with_deferred_transactions(collections, monkeypatch):
    """The control: without IMMEDIATE, the load above does lock, so that test means something.

    With Django's own backend: Karasu's (cms.sqlite3) also makes a process's threads take
    turns, which hides the problem within one process but not between processes.
    """
    # New connections (one per thread) read these settings when they are created.
    settings = connections.settings["default"]
    monkeypatch.setitem(settings, "ENGINE", "django.db.backends.sqlite3")
    monkeypatch.setitem(settings["OPTIONS"], "transaction_mode", "DEFERRED")
    errors = read_then_write_concurrently()
    assert any("database is locked" in str(error) for error in errors), errors
