"""At-least-once delivery through real Huey consumers: threads in-process and subprocesses,
on the SQLite queue and (with TEST_MONGODB_URI) on MongoDB."""

import logging
import signal
import threading
from pathlib import Path

import pytest
from huey.contrib.djhuey import HUEY

from tests.support import consumers
from tests.support.tasks import fail_then_succeed, interrupted_once, record_run

pytestmark = pytest.mark.usefixtures("queue_backend")


def lines(path: Path, prefix: str, key: str | None = None) -> list[str]:
    if not path.exists():
        return []
    return [
        line
        for line in path.read_text().splitlines()
        if line.startswith(prefix + " ") and (key is None or line.split()[1] == key)
    ]


def test_thread_consumer_runs_and_acks_every_task(tmp_path, thread_consumer):
    log = tmp_path / "runs.log"
    results = [record_run(str(log), f"k{i}") for i in range(20)]
    assert sorted(r.get(blocking=True, timeout=10) for r in results) == sorted(
        f"k{i}" for i in range(20)
    )
    consumers.wait_for(lambda: HUEY.storage.leased_count() == 0, 5, message="acks")
    assert HUEY.storage.queue_size() == 0
    assert len(lines(log, "done")) == 20


def test_retry_is_rescheduled_then_acked(tmp_path, thread_consumer):
    log = tmp_path / "attempts.log"
    result = fail_then_succeed(str(log), "r", failures=2)
    # Read the result only once it is final: Huey stores each intermediate error under
    # the same key, and a get() in between would return that error instead.
    consumers.wait_for(lambda: len(lines(log, "attempt")) == 3, 15, message="third attempt")
    consumers.wait_for(lambda: HUEY.storage.leased_count() == 0, 5, message="acks")
    assert result.get(blocking=True, timeout=5) == "r"
    assert len(lines(log, "attempt")) == 3
    assert HUEY.storage.queue_size() == 0 and HUEY.storage.schedule_size() == 0


def test_lock_task_locks_expire(monkeypatch):
    from huey.exceptions import TaskLockedException

    def held_then_freed(name: str, ttl: float | None = None) -> None:
        assert HUEY.lock_task(name, ttl=ttl).acquire()
        assert HUEY.lock_task(name).is_locked()
        with pytest.raises(TaskLockedException):  # a second taker is refused meanwhile
            HUEY.lock_task(name, ttl=ttl).acquire()
        threading.Event().wait(0.15)
        # Never released, as by a crashed holder: the lock has freed itself.
        assert not HUEY.lock_task(name).is_locked()
        assert HUEY.lock_task(name, ttl=ttl).acquire()

    held_then_freed("短い", ttl=0.05)
    # Without a ttl a lock carries the queue's own (lock_ttl, 600 s), scaled down here.
    monkeypatch.setattr(HUEY, "lock_ttl", 0.05)
    held_then_freed("既定")


def test_a_task_really_interrupted_in_its_thread_is_handed_back_at_once(
    tmp_path, thread_consumer, caplog
):
    """Not left leased until its lease runs out: released at once, and run again."""
    log = tmp_path / "runs.log"
    with caplog.at_level(logging.WARNING, logger="huey_tasks.queue"):
        result = interrupted_once(str(log), "割り込み")
        assert result.get(blocking=True, timeout=10) == "割り込み"
    starts = [float(line.split()[3]) for line in lines(log, "start")]
    assert len(starts) == 2 and len(lines(log, "done")) == 1
    # Again within a fraction of the lease it would otherwise have waited out.
    assert starts[1] - starts[0] < HUEY.storage.lease_seconds / 3, starts
    assert f"Handed back interrupted task {result.id}" in caplog.text
    consumers.wait_for(lambda: HUEY.storage.leased_count() == 0, 5, message="acked")
    assert HUEY.storage.queue_size() == 0 and HUEY.storage.dead_letter_count() == 0


def test_sigkill_mid_task_is_finished_exactly_once_by_another_consumer(tmp_path):
    log = tmp_path / "runs.log"
    record_run(str(log), "victim", seconds=2.0)
    first = consumers.start_consumer(tmp_path / "first.log", workers=2)
    try:
        consumers.wait_for(lambda: lines(log, "start", "victim"), 30, message="first start")
        first.send_signal(signal.SIGKILL)
        first.wait(10)
    finally:
        consumers.stop(first)
    assert lines(log, "done", "victim") == []
    assert HUEY.storage.leased_count() == 1  # still leased by the dead worker

    second = consumers.start_consumer(tmp_path / "second.log", workers=2)
    try:
        consumers.wait_for(lambda: lines(log, "done", "victim"), 30, message="redelivery")
        consumers.wait_for(
            lambda: HUEY.storage.leased_count() == 0 and HUEY.storage.queue_size() == 0,
            10,
            message="ack",
        )
    finally:
        consumers.stop(second)
    assert len(lines(log, "start", "victim")) == 2
    assert len(lines(log, "done", "victim")) == 1
    assert HUEY.storage.dead_letter_count() == 0


def test_sigterm_finishes_a_short_task(tmp_path):
    log = tmp_path / "runs.log"
    record_run(str(log), "short", seconds=1)
    first = consumers.start_consumer(tmp_path / "first.log", workers=1)
    try:
        consumers.wait_for(lambda: lines(log, "start"), 30, message="start")
        assert consumers.stop(first, signal.SIGTERM) == 0
    finally:
        consumers.stop(first)
    assert len(lines(log, "done", "short")) == 1
    assert HUEY.storage.leased_count() == 0 and HUEY.storage.queue_size() == 0


@pytest.mark.parametrize("sig", [signal.SIGTERM, signal.SIGINT])
def test_shutdown_does_not_hand_back_a_task_still_running(tmp_path, sig):
    log = tmp_path / "runs.log"
    record_run(str(log), "still-running", seconds=30)
    first = consumers.start_consumer(tmp_path / "first.log", workers=1)
    try:
        consumers.wait_for(lambda: lines(log, "start"), 30, message="start")
        # SIGTERM waits out the shutdown timeout (2 s in tests); SIGINT does not wait.
        assert consumers.stop(first, sig) == 0
    finally:
        consumers.stop(first)
    # Its thread was still running at exit: handing it back would have let another worker
    # start it while it ran. It is deliverable again once the lease (3 s) runs out.
    assert HUEY.storage.leased_count() == 1 and HUEY.storage.queue_size() == 0
    consumers.wait_for(lambda: HUEY.storage.queue_size() == 1, 10, message="lease ran out")
    assert HUEY.storage.claim().deliveries == 2  # counted: a task that never ends is buried


def test_concurrent_consumers_never_complete_a_message_twice(tmp_path):
    log = tmp_path / "runs.log"
    total = 60
    for i in range(total):
        # Some tasks outlive the 3 s lease: the heartbeat must keep them from redelivery.
        record_run(str(log), f"m{i}", seconds=4.0 if i % 20 == 0 else 0.05)
    workers = [consumers.start_consumer(tmp_path / f"c{n}.log", workers=4) for n in range(3)]
    try:
        consumers.wait_for(lambda: len(lines(log, "done")) >= total, 90, message="all done")
        consumers.wait_for(lambda: HUEY.storage.leased_count() == 0, 10, message="acks")
    finally:
        for process in workers:
            consumers.stop(process)
    done = [line.split()[1] for line in lines(log, "done")]
    assert sorted(done) == sorted(f"m{i}" for i in range(total))
    started = [line.split()[1] for line in lines(log, "start")]
    assert len(started) == total  # nothing was even started twice
    assert HUEY.storage.queue_size() == 0


def test_enqueue_many_keeps_each_tasks_priority(tmp_path):
    low = record_run.s(str(tmp_path / "log"), "low")
    high = record_run.s(str(tmp_path / "log"), "high", priority=5)
    HUEY.enqueue_many([low, high])
    assert [HUEY.deserialize_task(d).id for d in HUEY.storage.enqueued_items()] == [high.id, low.id]
