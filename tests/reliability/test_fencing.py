"""A claim belongs to one worker: LeasingHuey acks, releases and extends only with its own
token, reports lost leases, and never hands back a task that may still be running."""

import logging
import threading
import time

import pytest
from huey.contrib.djhuey import HUEY

from huey_tasks.limiter import ConcurrencyLimiter, SlotLost
from huey_tasks.queue import LeasingHuey
from tests.support.consumers import wait_for
from tests.support.tasks import add, always_fail, record_run

pytestmark = pytest.mark.usefixtures("queue_backend")


@pytest.fixture
def short_leases(monkeypatch):
    """Leases of 0.2 s; the process's background heartbeat is paused (tests beat by hand)."""
    storage = HUEY.storage
    original = storage.lease_seconds
    storage.lease_seconds = 0.2
    monkeypatch.setattr(HUEY, "beat", lambda: None)
    yield storage
    storage.lease_seconds = original


def beat():
    LeasingHuey.beat(HUEY)


def take_over(storage):
    """Another worker claims the message once the first lease has run out."""
    time.sleep(0.3)
    delivery = storage.claim(lease_seconds=30)
    assert delivery is not None
    return delivery


def test_a_late_worker_does_not_ack_the_new_holders_claim(short_leases, caplog):
    add(1, 2)
    task = HUEY.dequeue()
    newer = take_over(short_leases)
    with caplog.at_level(logging.WARNING):
        HUEY.execute(task)
    assert short_leases.leased_count() == 1  # still the new holder's
    assert "lost before its ack" in caplog.text
    assert short_leases.ack(newer.message_id, newer.token)


def test_the_heartbeat_reports_a_lost_lease_and_the_worker_stays_away(short_leases, caplog):
    add(1, 2)
    task = HUEY.dequeue()
    newer = take_over(short_leases)
    with caplog.at_level(logging.WARNING):
        beat()
        beat()
    assert caplog.text.count("Lost the lease of task") == 1  # logged once
    HUEY.execute(task)  # neither acks nor releases
    assert short_leases.leased_count() == 1
    assert short_leases.release(newer.message_id, newer.token)


def test_an_error_outside_the_task_lets_the_lease_run_out_counted(monkeypatch):
    always_fail("boom")
    task = HUEY.dequeue()

    def storage_down(*args, **kwargs):
        raise OSError("queue storage unreachable")

    monkeypatch.setattr(HUEY, "put_result", storage_down)
    with pytest.raises(OSError):
        HUEY.execute(task)
    # Not released (which would lower the count and loop hot): still leased, counted.
    assert HUEY.storage.leased_count() == 1 and HUEY.storage.queue_size() == 0


def test_tasks_still_running_at_exit_are_not_handed_back():
    add(1, 2)
    HUEY.dequeue()  # running in a thread that shutdown cannot stop
    HUEY.notify_interrupted_tasks()
    assert HUEY.storage.leased_count() == 1 and HUEY.storage.queue_size() == 0


def test_an_exit_notice_from_another_thread_leaves_a_running_task_to_finish(tmp_path, caplog):
    """The consumer's exit calls notify_interrupted_tasks from its own thread while a worker
    thread still runs a task: that task was not interrupted. When it then finishes normally
    it is acked, not handed back to run a second time."""
    log = tmp_path / "runs.log"
    record_run(str(log), "busy", seconds=1.0)
    task = HUEY.dequeue()
    worker = threading.Thread(target=HUEY.execute, args=(task,), name="worker")
    worker.start()
    try:
        wait_for(
            lambda: log.exists() and "start busy" in log.read_text(),
            5,
            interval=0.01,
            message="the task running in its worker thread",
        )
        assert task in HUEY._tasks_in_flight  # the exit notice below is sent for it
        with caplog.at_level(logging.WARNING):
            HUEY.notify_interrupted_tasks()  # here, as the consumer does at exit
            assert not HUEY._tasks_in_flight
            worker.join(10)
    finally:
        worker.join(10)
    assert not worker.is_alive()
    assert log.read_text().count("done busy") == 1
    # Acked: nothing leased, queued or scheduled, so it never runs again.
    storage = HUEY.storage
    assert storage.queue_size() == 0, "handed back for redelivery"
    assert storage.leased_count() == storage.schedule_size() == 0
    assert HUEY.dequeue() is None
    assert log.read_text().count("start busy") == 1
    assert "Handed back interrupted task" not in caplog.text
    assert not getattr(task, "interrupted", False)


def test_a_deadline_stops_the_heartbeat_keeping_lease_and_slot(short_leases):
    limiter = ConcurrencyLimiter(HUEY, "deadline-test", 1)
    add(1, 2)
    task = HUEY.dequeue()
    running = HUEY._running[id(task)]
    HUEY._current.running = running
    try:
        slot = limiter.try_acquire()
    finally:
        HUEY._current.running = None
    running.deadline = time.monotonic() - 1
    beat()  # past the deadline: acked, and nothing it held is kept any longer
    assert short_leases.leased_count() == 0 and short_leases.queue_size() == 0
    assert getattr(task, "past_deadline", False)
    time.sleep(0.3)
    assert short_leases.slots_in_use("deadline-test") == 0
    with pytest.raises(SlotLost):
        limiter.ensure_held(slot)


def test_a_stalled_holder_that_lost_its_slot_does_not_call_on(short_leases):
    limiter = ConcurrencyLimiter(HUEY, "stall-test", 1)
    slot = limiter.try_acquire()
    time.sleep(0.3)  # frozen past the lease; its heartbeat did not run either
    other = limiter.try_acquire()
    assert other is not None  # the slot went to another worker
    with pytest.raises(SlotLost):
        limiter.ensure_held(slot)
    limiter.ensure_held(other)
    limiter.release(other)
    limiter.release(slot)
