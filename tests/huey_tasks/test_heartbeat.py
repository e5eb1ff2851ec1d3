"""The heartbeat never dies silently: a beat that crashes is logged and announced for the
metrics, and the worker claims nothing while it is down, then claims again once it beats,
even when the crash's own report fails; crashes are counted from one thread, and a forked
child does not inherit its parent's crash. The queue refuses timings a heartbeat could not
sleep on."""

from __future__ import annotations

import logging
import multiprocessing
import os
import threading
import time

import pytest
from huey.contrib.djhuey import HUEY

from huey_tasks.signals import heartbeat_crashed
from tests.support import consumers
from tests.support.heartbeat import failing_heartbeat
from tests.support.tasks import record_run


def started(log, key: str) -> bool:
    return log.exists() and f"start {key} " in log.read_text()


def logged_crashes(caplog, heartbeat: str = "lease") -> int:
    return sum(f"The {heartbeat} heartbeat crashed" in r.message for r in caplog.records)


@pytest.mark.parametrize("heartbeat", ["lease", "claims"])
def test_a_crashed_heartbeat_is_logged_counted_and_stops_claims_until_it_beats_again(
    tmp_path, thread_consumer, caplog, heartbeat
):
    log = tmp_path / "runs.log"
    # A first task: this process's heartbeats are running.
    assert record_run(str(log), "before").get(blocking=True, timeout=10) == "before"
    crashes = []

    def on_crash(sender, heartbeat, error, **kwargs):
        crashes.append((heartbeat, error))

    heartbeat_crashed.connect(on_crash, weak=False, dispatch_uid="test-heartbeat-crash")
    caplog.set_level(logging.WARNING, logger="huey_tasks.heartbeat")
    try:
        with failing_heartbeat(heartbeat) as failing:
            consumers.wait_for(lambda: crashes, 10, message="a crash announced")
            while_down = record_run(str(log), "while-down")
            # Two heartbeat intervals (a third of the 3 s lease) and many idle polls: a
            # worker still claiming would have started it long before.
            time.sleep(2.5)
            assert not started(log, "while-down")
            assert HUEY.storage.leased_count() == 0  # nobody holds it: it waits, queued
            assert HUEY.heartbeat_down
            failing.clear()
            assert while_down.get(blocking=True, timeout=15) == "while-down"
    finally:
        heartbeat_crashed.disconnect(dispatch_uid="test-heartbeat-crash")

    assert {name for name, _ in crashes} == {heartbeat}
    assert all("心拍" in str(error) for _, error in crashes)
    crashed = [r for r in caplog.records if f"The {heartbeat} heartbeat crashed" in r.message]
    assert crashed and crashed[0].levelno == logging.ERROR
    assert crashed[0].exc_info is not None  # the traceback, once per outage
    assert "心拍" in crashed[0].getMessage()
    assert any("claims tasks again" in r.getMessage() for r in caplog.records)
    # The crashes stopped, and with them the announcements.
    count = len(crashes)
    time.sleep(1.5)
    assert len(crashes) == count and not HUEY.heartbeat_down


@pytest.mark.parametrize("option", ["task_deadline", "idle_poll", "outage_backoff_max"])
@pytest.mark.parametrize("value", [float("nan"), float("inf"), 0, -1])
def test_the_queue_refuses_timings_that_are_not_finite_and_positive(tmp_path, option, value):
    from huey_tasks.queue import SqliteLeasingHuey

    with pytest.raises(ValueError, match=option):
        SqliteLeasingHuey("refused", filename=str(tmp_path / "q.db"), **{option: value})


class UnprintableError(RuntimeError):
    """An error whose message cannot be read: str() of it raises."""

    def __str__(self) -> str:
        raise ValueError("この例外は文字にできない")


class CrashReportsFail(logging.Filter):
    """Makes every log record of a heartbeat crash raise, as a broken log handler would."""

    def filter(self, record: logging.LogRecord) -> bool:
        if "heartbeat crashed" in str(record.msg):
            raise OSError("ログを書けない: ディスクがいっぱい")
        return True


@pytest.mark.parametrize("failure", ["unprintable error", "log raises"])
def test_a_crash_that_cannot_be_reported_does_not_end_the_heartbeat(
    tmp_path, thread_consumer, caplog, failure
):
    """The crash's own report fails: the heartbeat still beats again, the worker claims again,
    and the leases of what it runs are kept (a task longer than a lease runs once)."""
    log = tmp_path / "runs.log"
    assert record_run(str(log), "before").get(blocking=True, timeout=10) == "before"
    crashes = []

    def on_crash(sender, heartbeat, error, **kwargs):
        crashes.append(heartbeat)

    heartbeat_crashed.connect(on_crash, weak=False, dispatch_uid="test-heartbeat-crash")
    error = UnprintableError if failure == "unprintable error" else RuntimeError
    refuse = CrashReportsFail()
    if failure == "log raises":
        logging.getLogger("huey_tasks.heartbeat").addFilter(refuse)
    caplog.set_level(logging.WARNING, logger="huey_tasks.heartbeat")
    try:
        with failing_heartbeat("lease", error=error) as failing:
            consumers.wait_for(lambda: HUEY.heartbeat_down, 10, message="the heartbeat down")
            # Two crashes at least: the thread went on after the first one's report failed.
            consumers.wait_for(lambda: len(crashes) >= 2, 15, message="two crashes counted")
            while_down = record_run(str(log), "while-down")
            failing.clear()
            assert while_down.get(blocking=True, timeout=15) == "while-down"
    finally:
        logging.getLogger("huey_tasks.heartbeat").removeFilter(refuse)
        heartbeat_crashed.disconnect(dispatch_uid="test-heartbeat-crash")

    assert set(crashes) == {"lease"} and not HUEY.heartbeat_down
    if failure == "unprintable error":
        crashed = [r for r in caplog.records if "The lease heartbeat crashed" in r.message]
        assert crashed and "UnprintableError" in crashed[0].getMessage()
    # A task running past a lease: the live heartbeat keeps its lease, so no other worker
    # thread of the consumer starts it a second time.
    long = record_run(str(log), "長い", seconds=HUEY.storage.lease_seconds + 1)
    assert long.get(blocking=True, timeout=15) == "長い"
    assert log.read_text().count("start 長い ") == 1


def test_a_heartbeat_that_keeps_crashing_counts_every_crash_from_one_thread(
    tmp_path, thread_consumer, caplog, monkeypatch
):
    """While the count hangs (a database that does not answer), crashes go on: they start no
    thread each, and each is counted once when the count answers again."""
    from huey_tasks import heartbeat as heartbeat_module

    monkeypatch.setattr(heartbeat_module, "HEARTBEAT_RESTART_DELAY", 0.05)
    assert record_run(str(tmp_path / "runs.log"), "k").get(blocking=True, timeout=10) == "k"
    answering = threading.Event()
    counted = []

    def hung_count(sender, heartbeat, error, **kwargs):
        answering.wait(30)
        counted.append(heartbeat)

    heartbeat_crashed.connect(hung_count, weak=False, dispatch_uid="test-hung-count")
    caplog.set_level(logging.WARNING, logger="huey_tasks.heartbeat")
    threads_before = set(threading.enumerate())
    try:
        with failing_heartbeat("lease"):
            consumers.wait_for(lambda: logged_crashes(caplog) >= 4, 20, message="four crashes")
            started = set(threading.enumerate()) - threads_before
            assert len(started) <= 1, sorted(thread.name for thread in started)
            answering.set()
        crashes = logged_crashes(caplog)  # the heartbeat beats again: no more crashes
        consumers.wait_for(lambda: len(counted) >= crashes, 10, message="every crash counted")
        time.sleep(0.5)
        assert counted == ["lease"] * crashes
    finally:
        answering.set()
        heartbeat_crashed.disconnect(dispatch_uid="test-hung-count")


def test_a_crash_counted_when_no_thread_can_start_is_counted_with_a_later_one(
    tmp_path, thread_consumer, caplog, monkeypatch
):
    """The process cannot start a thread ("can't start new thread") when a crash is to be
    counted: the heartbeat goes on, and the count is made once a thread can start."""
    from huey_tasks.heartbeat import CrashCounter

    log = tmp_path / "runs.log"
    assert record_run(str(log), "before").get(blocking=True, timeout=10) == "before"
    # A counter whose thread has not started yet, as in a worker's first crash.
    monkeypatch.setattr(HUEY, "_crash_counter", CrashCounter())
    refusing = threading.Event()
    refusing.set()

    class NoNewThreads(threading.Thread):
        def start(self) -> None:
            if refusing.is_set():
                raise RuntimeError("can't start new thread")
            super().start()

    crashes = []

    def on_crash(sender, heartbeat, error, **kwargs):
        crashes.append(heartbeat)

    heartbeat_crashed.connect(on_crash, weak=False, dispatch_uid="test-heartbeat-crash")
    caplog.set_level(logging.WARNING, logger="huey_tasks.heartbeat")
    try:
        with failing_heartbeat("lease") as failing:
            with monkeypatch.context() as patched:
                patched.setattr(threading, "Thread", NoNewThreads)
                consumers.wait_for(lambda: logged_crashes(caplog) >= 2, 15, message="crashes")
                assert crashes == []  # nothing could count them yet
                refusing.clear()
                consumers.wait_for(lambda: len(crashes) >= 2, 15, message="counted later")
            while_down = record_run(str(log), "while-down")
            failing.clear()
            assert while_down.get(blocking=True, timeout=15) == "while-down"
        consumers.wait_for(
            lambda: len(crashes) == logged_crashes(caplog), 10, message="every crash counted"
        )
    finally:
        heartbeat_crashed.disconnect(dispatch_uid="test-heartbeat-crash")
    assert not HUEY.heartbeat_down


def test_a_forked_child_claims_although_its_parent_heartbeat_is_down(tmp_path):
    """A child forked while its parent's heartbeat is down starts heartbeats of its own: it
    does not inherit the parent's crash and claims at once."""
    from huey_tasks.queue import SqliteLeasingHuey

    huey = SqliteLeasingHuey("forked", filename=str(tmp_path / "q.db"), lease_seconds=3.0)

    @huey.task()
    def echo(text: str) -> str:
        return text

    parent, beat = os.getpid(), huey._beat

    def beat_failing_in_the_parent() -> None:
        if os.getpid() == parent:
            raise RuntimeError("親の心拍が止まった")
        beat()

    huey._beat = beat_failing_in_the_parent
    echo("最初")
    first = huey.dequeue()  # this claim starts the parent's heartbeats
    try:
        consumers.wait_for(lambda: huey.heartbeat_down, 10, message="the parent's heartbeat down")
        echo("子供")
        assert huey.dequeue() is None  # the parent claims nothing while it is down
        huey.storage.close()  # a SQLite connection must not be shared across a fork
        fork = multiprocessing.get_context("fork")
        reader, writer = fork.Pipe(duplex=False)

        def claim_in_the_child() -> None:
            task = huey.dequeue()
            writer.send(None if task is None else task.args)
            if task is not None:
                huey.execute(task)  # acks it

        child = fork.Process(target=claim_in_the_child)
        child.start()
        child.join(20)
        assert child.exitcode == 0
        assert reader.poll(1) and reader.recv() == ("子供",)
        assert huey.storage.queue_size() == 0 and huey.storage.leased_count() == 1  # "最初"
    finally:
        del huey._beat
        huey.execute(first)  # its message is acked; the parent's heartbeat holds nothing
