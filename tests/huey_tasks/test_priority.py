"""Priority survives the schedule: a scheduled, retried or slot-waiting task comes back at
its own priority, ahead of lower-priority work queued before it became due.

``LeasingHuey.add_schedule`` hands the task's priority to the storage, and both storages
keep it when ``read_schedule`` promotes the due message to the queue.
"""

import time

import mongomock
import pytest
from huey.contrib.djhuey import HUEY
from huey.exceptions import RateLimitExceeded, RetryTask

from huey_tasks.storage import MongoStorage
from tests.support.tasks import add

HIGH = 10
DUE_IN = 0.3  # seconds

# Transactional: the ledger (listening to the tasks' signals) closes the connection a
# worker thread gets, which would end a test's transaction.
pytestmark = pytest.mark.django_db(transaction=True)


@HUEY.task(context=True)
def comes_back_later(how: str, task=None) -> None:
    """Re-schedules itself once: through RetryTask, or as a task waiting for a slot."""
    if how == "retry":
        raise RetryTask(delay=DUE_IN)
    raise RateLimitExceeded("test slot", DUE_IN)


@pytest.fixture
def mongomock_queue(monkeypatch):
    """The project's Huey on MongoStorage over mongomock, for this test."""
    original = HUEY.storage
    storage = MongoStorage(
        original.name,
        client=mongomock.MongoClient(),
        lease_seconds=original.lease_seconds,
        max_deliveries=original.max_deliveries,
    )
    storage.on_dead_letter = original.on_dead_letter
    monkeypatch.setattr(HUEY, "storage", storage)
    yield "mongomock"
    storage.flush_all()


def run_next() -> None:
    """One worker step: claim the next message and execute it (acked afterwards)."""
    task = HUEY.dequeue()
    assert task is not None
    HUEY.execute(task)


def claim_order_after_promotion(high_id: str) -> list[tuple[str, int]]:
    """Queue a priority-0 task, let the scheduled one fall due and promote it; return the
    (task id, priority) of the messages in the order they are claimed."""
    assert HUEY.storage.schedule_size() == 1
    low = add.s(3, 4)  # queued before the scheduled task is promoted: FIFO would run it first
    HUEY.enqueue(low)
    time.sleep(DUE_IN + 0.1)
    assert HUEY.read_schedule() == []  # moved onto the queue by the storage itself
    assert HUEY.storage.schedule_size() == 0
    order = []
    while (delivery := HUEY.storage.claim()) is not None:
        task = HUEY.deserialize_task(delivery.data)
        order.append((task.id, task.priority or 0))
        HUEY.storage.ack(delivery.message_id, delivery.token)
    assert {task_id for task_id, _ in order} == {high_id, low.id}
    return order


def check_scheduled(priority: int = HIGH) -> None:
    # Huey queues a task with an eta; the worker that claims it early puts it on the schedule.
    result = add.schedule((1, 2), delay=DUE_IN, priority=priority)
    run_next()
    assert claim_order_after_promotion(result.id)[0] == (result.id, priority)


def check_rescheduled(how: str) -> None:
    task = comes_back_later.s(how, priority=HIGH)
    HUEY.enqueue(task)
    run_next()  # runs, and re-schedules itself
    assert claim_order_after_promotion(task.id)[0] == (task.id, HIGH)


def test_scheduled_task_keeps_its_priority(queue_backend):
    check_scheduled()


@pytest.mark.parametrize("how", ["retry", "slot-wait"])
def test_rescheduled_task_keeps_its_priority(queue_backend, how):
    check_rescheduled(how)


def test_priority_survives_the_schedule_on_mongomock(mongomock_queue):
    check_scheduled()
    check_rescheduled("retry")
    check_rescheduled("slot-wait")


def test_without_priority_the_older_message_comes_first(queue_backend):
    """The control: the order above is the priority's doing, not the queue's."""
    result = add.schedule((1, 2), delay=DUE_IN)
    run_next()
    order = claim_order_after_promotion(result.id)
    assert order[0][0] != result.id
