"""Idle worker threads share one look at the queue, and work wakes them at once."""

import threading
import time

import pytest
from huey.contrib.djhuey import HUEY

from huey_tasks.idle import STOP_CHECK, IdleWorkers
from huey_tasks.limiter import ConcurrencyLimiter
from tests.support.consumers import wait_for

pytestmark = pytest.mark.django_db(transaction=True)


def waiters(idle: IdleWorkers, count: int, stop: threading.Event) -> list[float]:
    """Start ``count`` idle threads; the list fills with the moments they return."""
    returned: list[float] = []

    def run():
        idle.wait(stop)
        returned.append(time.monotonic())

    for _ in range(count):
        threading.Thread(target=run, daemon=True).start()
    return returned


def test_one_idle_thread_polls_and_the_others_sleep_until_woken():
    idle = IdleWorkers(interval=30)
    stop = threading.Event()
    returned = waiters(idle, 5, stop)
    wait_for(lambda: idle._sleeping == 5, 5, interval=0.01, message="all five waiting")
    time.sleep(0.3)
    assert returned == []  # no one looks before the interval, or before there is work

    idle.wake(2)  # two messages: the poller looks early, and two sleepers wake for them
    wait_for(lambda: len(returned) >= 3, 5, interval=0.01, message="woken threads")
    time.sleep(0.3)
    assert len(returned) == 3  # the other two sleep on, without looking

    stop.set()  # shutting down: every thread returns within STOP_CHECK
    wait_for(lambda: len(returned) == 5, STOP_CHECK + 2, interval=0.01, message="stopped")


def test_wakeups_are_not_saved_up_for_threads_that_are_busy():
    idle = IdleWorkers(interval=30)
    stop = threading.Event()
    idle.wake(100)  # work claimed while every thread was busy
    returned = waiters(idle, 3, stop)
    time.sleep(0.3)
    assert len(returned) == 0
    stop.set()


def test_an_idle_consumer_makes_one_claim_per_interval_not_one_per_thread(
    queue_backend, thread_consumer_factory, monkeypatch
):
    claims = []
    original = HUEY.storage.claim

    def counted_claim(*args, **kwargs):
        claims.append(1)
        return original(*args, **kwargs)

    monkeypatch.setattr(HUEY.storage, "claim", counted_claim)
    with thread_consumer_factory(workers=8):
        time.sleep(0.5)  # settle
        before = len(claims)
        time.sleep(2.0)
        idle_claims = len(claims) - before
    # Eight threads polling on their own at 0.1 s would make 160.
    assert idle_claims <= 2.0 / HUEY.idle.interval + 5


@HUEY.task()
def note_pickup(log_key: str) -> None:
    HUEY.put(log_key, time.time())


def test_work_queued_elsewhere_is_picked_up_within_the_interval(
    queue_backend, thread_consumer_factory
):
    delays = []
    with thread_consumer_factory(workers=8):
        for trial in range(3):
            time.sleep(1.0)  # idle for a while
            task = note_pickup.s(f"pickup-{trial}")
            queued_at = time.time()
            # Straight into the storage, as another process's enqueue arrives: no wake-up.
            HUEY.storage.enqueue(HUEY.serialize_task(task), 0)
            picked_up = wait_for(
                lambda key=f"pickup-{trial}": HUEY.get(key, peek=True),
                10,
                interval=0.005,
                message="the task ran",
            )
            delays.append(picked_up - queued_at)
    # Within the interval, plus what a loaded machine adds to a thread's wake-up. Without
    # the idle poll nothing would pick it up before the workers' next back-off (seconds).
    assert sorted(delays)[1] < HUEY.idle.interval + 0.5, delays


def test_a_released_slot_goes_to_a_waiting_thread_without_polling(monkeypatch):
    monkeypatch.setattr("huey_tasks.limiter.SLOT_POLL", 30.0)  # only a wake-up can be quick
    limiter = ConcurrencyLimiter(HUEY, "test:handoff", 1)
    got = []
    with limiter.slot():
        thread = threading.Thread(
            target=lambda: got.append(limiter.slot(patience=60).__enter__()), daemon=True
        )
        thread.start()
        time.sleep(0.3)  # waiting for the slot
        assert got == []
        released_at = time.monotonic()
    thread.join(5)
    assert got and time.monotonic() - released_at < 5
    limiter.release(got[0])
