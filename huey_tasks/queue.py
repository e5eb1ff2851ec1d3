"""Huey with at-least-once delivery on top of a leasing storage.

The worker claims a message under a lease (``storage.claim``) and gets a fencing token with
it; a heartbeat thread in each process extends the leases of the tasks it is running, and
the message is acked only when ``execute`` returns: success, final failure, cancel, revoke,
expiry, or after the task was re-scheduled for retry. Every ack, release and extension names
the token, so a worker whose lease ran out (a long pause, a stalled heartbeat) can never
touch the claim of the worker that took the message over.

Tasks also keep other leases alive through the same heartbeat (``hold``): provider slots
and job claims, even after their message was taken over, for as long as the task runs
here. Past ``task_deadline`` seconds a task's leases are no longer extended, it is
announced as timed out (``SIGNAL_DEADLINE``) and its message is acked.
"""

from __future__ import annotations

import logging
import os
import threading
import time
from collections.abc import Callable, Hashable, Iterable
from dataclasses import dataclass, field

from huey import Huey
from huey import signals as S
from huey.api import TaskLock
from huey.consumer import Consumer, Worker

from generation.providers.errors import redact, redact_traceback

from .idle import IdleWorkers
from .storage import LeasingSqliteStorage, MongoStorage
from .storage.base import DeadLetter, Delivery

logger = logging.getLogger(__name__)

DEFAULT_LOCK_TTL = 600  # seconds; a crashed worker's lock_task lock frees itself
DEFAULT_TASK_DEADLINE = 300.0  # seconds; above the providers' own timeouts (fal: 180 s)
DEFAULT_IDLE_POLL = 0.1  # seconds between an idle process's looks at the queue

# Karasu's own signals, sent like Huey's: handler(signal, task, *args).
SIGNAL_DEAD_LETTERED = "dead-lettered"  # args: the DeadLetter
SIGNAL_DEADLINE = "deadline-exceeded"  # args: the deadline in seconds

SLOTS = "slot"  # hold() group of limiter slots: (name, index, holder)

# Keeper: extend these held items for ``seconds``; return the ones that were lost.
Keeper = Callable[[list, float], Iterable]


@dataclass(eq=False)
class Running:
    """A claimed message whose task runs in this process."""

    task: object
    delivery: Delivery
    deadline: float  # time.monotonic()
    thread: int | None = None
    lost: bool = False
    holds: set[tuple[str, Hashable]] = field(default_factory=set)


class LeasingHuey(Huey):
    def __init__(
        self,
        *args,
        lock_ttl: float = DEFAULT_LOCK_TTL,
        task_deadline: float = DEFAULT_TASK_DEADLINE,
        idle_poll: float = DEFAULT_IDLE_POLL,
        **kwargs,
    ):
        self.lock_ttl = lock_ttl
        self.task_deadline = float(task_deadline)
        self.idle = IdleWorkers(idle_poll)
        self._running: dict[int, Running] = {}  # id(task) -> lease; duplicates share ids
        self._free_holds: set[tuple[str, Hashable]] = set()  # held outside a consumer task
        self._lost: set[tuple[str, Hashable]] = set()
        self._keepers: dict[str, Keeper] = {}
        self._current = threading.local()
        self._lock = threading.Lock()
        self._heartbeat_pid: int | None = None
        self._consumer_listeners: list = []
        super().__init__(*args, **kwargs)
        self._signal.connect(self._on_interrupted, S.SIGNAL_INTERRUPTED)
        if self.leasing:
            self.storage.on_dead_letter = self._on_dead_letter
            self.register_keeper(SLOTS, self._extend_slots)

    @property
    def leasing(self) -> bool:
        # Immediate mode swaps in Huey's MemoryStorage, which has no leases.
        return hasattr(self.storage, "claim")

    # Claims -------------------------------------------------------------------------
    def dequeue(self):
        if not self.leasing:
            return super().dequeue()
        delivery = self.storage.claim()
        if delivery is None:
            return None
        # An undecodable message stays leased and, after max_deliveries, is dead-lettered.
        task = self.deserialize_task(delivery.data)
        task.delivery = delivery
        running = Running(task, delivery, time.monotonic() + self.task_deadline)
        with self._lock:
            self._running[id(task)] = running
        self._ensure_heartbeat()
        self.idle.wake()  # there may be more: the next idle thread looks at once
        return task

    def execute(self, task, timestamp=None):
        running = self._running.get(id(task))
        if running is None:
            return super().execute(task, timestamp)
        running.thread = threading.get_ident()
        self._current.running = running
        try:
            result = super().execute(task, timestamp)
        except (KeyboardInterrupt, SystemExit):
            self._settle(task, "release")  # the task really stopped: hand it back now
            raise
        except BaseException:
            # Not an interruption (e.g. the storage failed while Huey recorded the outcome):
            # let the lease run out so the delivery counts, and a message that fails like
            # this every time ends in the dead letters instead of looping.
            self._settle(task, "abandon")
            raise
        finally:
            self._current.running = None
        if getattr(task, "interrupted", False):
            outcome = "release"
        else:
            outcome = getattr(task, "settle", "ack")
        self._settle(task, outcome)
        return result

    def _settle(self, task, outcome: str) -> None:
        """ack, release or abandon the task's message, if this worker still holds it."""
        with self._lock:
            running = self._running.pop(id(task), None)
            if running is not None:
                self._lost.difference_update(running.holds)
        if running is None:
            return  # past its deadline: already settled by the heartbeat
        delivery = running.delivery
        if running.lost:
            return  # logged once when the heartbeat found it lost
        if outcome == "ack":
            if not self.storage.ack(delivery.message_id, delivery.token):
                logger.warning("Lease of %s was lost before its ack; not acked.", task.id)
        elif outcome == "release":
            self.storage.release(delivery.message_id, delivery.token)
            logger.warning("Handed back interrupted task %s for redelivery.", task.id)
        else:
            logger.warning("Task %s left for redelivery when its lease runs out.", task.id)

    def _on_interrupted(self, signal, task, *args) -> None:
        # Only an interruption raised inside the task's own thread (process workers get
        # KeyboardInterrupt) means it stopped; notify_interrupted_tasks runs elsewhere.
        running = self._running.get(id(task))
        if running is not None and running.thread == threading.get_ident():
            task.interrupted = True

    def notify_interrupted_tasks(self):
        # The consumer is exiting. Tasks still running in daemon threads are not handed
        # back: another host could start them while they run. Their leases run out once
        # this process is gone.
        with self._lock:
            still_running = [running.task.id for running in self._running.values()]
        if still_running:
            logger.warning(
                "%d tasks still running at exit; they are delivered again once their "
                "leases run out: %s",
                len(still_running),
                ", ".join(still_running),
            )
        super().notify_interrupted_tasks()

    def _on_dead_letter(self, letter: DeadLetter) -> None:
        try:
            task = self.deserialize_task(letter.data)
        except Exception:
            logger.warning("Dead-lettered an undecodable message %s.", letter.message_id)
            return
        logger.error("Task %s dead-lettered: %s.", task.id, letter.reason)
        self._emit(SIGNAL_DEAD_LETTERED, task, letter)

    def requeue_dead_letter(self, letter: DeadLetter) -> bool:
        """Put a dead letter back on the queue, announced like any enqueue."""
        if not self.storage.requeue_dead_letter(letter.message_id):
            return False
        self.idle.wake()
        try:
            self._emit(S.SIGNAL_ENQUEUED, self.deserialize_task(letter.data))
        except Exception:
            logger.exception("Could not announce requeued dead letter %s.", letter.message_id)
        return True

    # Queue writes ---------------------------------------------------------------------
    def enqueue(self, task):
        result = super().enqueue(task)
        self.idle.wake()
        return result

    def enqueue_many(self, tasks: list) -> None:
        """Enqueue many tasks in one storage write, each at its priority; signals fire for
        each."""
        if not self.leasing:
            for task in tasks:
                self.enqueue(task)
            return
        for task in tasks:
            if task.expires:
                task.resolve_expires(self.utc)
            self._emit(S.SIGNAL_ENQUEUED, task)
        self.storage.enqueue_many(
            [self.serialize_task(task) for task in tasks],
            priorities=[task.priority or 0 for task in tasks],
        )
        self.idle.wake(len(tasks))

    def add_schedule(self, task):
        if not self.leasing:
            return super().add_schedule(task)
        # As Huey's, but the priority survives the schedule (retries, slot waits).
        eta = task.eta or self._get_timestamp()
        self.storage.add_to_schedule(self.serialize_task(task), eta, priority=task.priority)
        self._emit(S.SIGNAL_SCHEDULED, task)

    def read_schedule(self, timestamp=None):
        """The scheduler's step: move due tasks onto the queue in one atomic storage step.

        Huey's scheduler enqueues whatever this returns; returning [] after moving them
        ourselves closes the window in which a killed scheduler would lose them.
        """
        if not self.leasing:
            return super().read_schedule(timestamp)
        if timestamp is None:
            timestamp = self._get_timestamp()
        promoted = self.storage.promote_due(timestamp)
        self.idle.wake(len(promoted))
        for data in promoted:
            try:
                self._emit(S.SIGNAL_ENQUEUED, self.deserialize_task(data))
            except Exception:  # already queued; only the signal is missed
                logger.exception("Could not announce a promoted task.")
        return []

    def build_error_result(self, task, exception):
        # The stored error result is readable by anyone with queue access: no secrets.
        result = super().build_error_result(task, exception)
        result["error"] = redact(result["error"])
        result["traceback"] = redact_traceback(result["traceback"])
        return result

    # Other leases a task keeps alive --------------------------------------------------
    def register_keeper(self, group: str, keeper: Keeper) -> None:
        """``keeper(items, seconds)`` extends held items of ``group``, returns lost ones."""
        self._keepers[group] = keeper

    def _extend_slots(self, slots: list, seconds: float) -> list:
        return [slot for slot in slots if not self.storage.extend_slot(*slot, seconds)]

    def hold(self, group: str, item: Hashable) -> None:
        """Keep ``item`` alive with the running task's lease (until its deadline)."""
        running = getattr(self._current, "running", None)
        with self._lock:
            (running.holds if running is not None else self._free_holds).add((group, item))
        self._ensure_heartbeat()

    def drop(self, group: str, item: Hashable) -> None:
        running = getattr(self._current, "running", None)
        with self._lock:
            (running.holds if running is not None else self._free_holds).discard((group, item))
            self._lost.discard((group, item))

    def is_lost(self, group: str, item: Hashable) -> bool:
        """Whether the heartbeat found ``item`` taken over (or stopped keeping it)."""
        return (group, item) in self._lost

    # Heartbeat ----------------------------------------------------------------------
    def _ensure_heartbeat(self) -> None:
        if self._heartbeat_pid == os.getpid():
            return
        with self._lock:
            if self._heartbeat_pid == os.getpid():
                return
            self._heartbeat_pid = os.getpid()  # a forked child starts its own
            thread = threading.Thread(
                target=self._heartbeat, name="huey-lease-heartbeat", daemon=True
            )
            thread.start()

    def _heartbeat(self) -> None:
        interval = self.storage.lease_seconds / 3
        while True:  # a daemon thread: it ends with the process
            time.sleep(interval)
            self.beat()

    def beat(self) -> None:
        """One heartbeat: extend what is held, enforce deadlines, note what was lost."""
        now = time.monotonic()
        with self._lock:
            overdue = [r for r in self._running.values() if now > r.deadline]
            for running in overdue:
                del self._running[id(running.task)]
                self._lost.update(running.holds)
            live = [r for r in self._running.values() if not r.lost]
            # A task whose message was taken over still runs here: its job claim and its
            # slot stay alive until it ends (or its deadline), so the new holder of the
            # message finds the job busy instead of making a second call while this one runs.
            holds = (
                set(self._free_holds).union(*(r.holds for r in self._running.values())) - self._lost
            )
        for running in overdue:
            if not running.lost:  # a lost one is another worker's now: not ours to fail
                self._expire(running)
        self._extend_holds(holds)
        self._extend_leases(live)

    def _extend_holds(self, holds: set[tuple[str, Hashable]]) -> None:
        by_group: dict[str, list] = {}
        for group, item in holds:
            by_group.setdefault(group, []).append(item)
        for group, items in by_group.items():
            keeper = self._keepers.get(group)
            if keeper is None:
                continue
            try:
                lost = {(group, item) for item in keeper(items, self.storage.lease_seconds)}
            except Exception:
                logger.exception("Heartbeat could not extend %s; will retry.", group)
                continue
            with self._lock:  # not what was dropped meanwhile (its task finished)
                held = self._free_holds.union(*(r.holds for r in self._running.values()))
                lost &= held
                self._lost.update(lost)
            if lost:
                logger.warning("Lost %d %s leases to other workers.", len(lost), group)

    def _extend_leases(self, live: list[Running]) -> None:
        if not live:
            return
        # A message claimed twice here (its lease ran out while the heartbeat stalled, then
        # another thread claimed it): the later claim holds it, the earlier one lost it.
        leases = {r.delivery.message_id: r.delivery.token for r in live}
        try:
            lost_ids = self.storage.extend_leases(leases)
        except Exception:
            logger.exception("Lease heartbeat failed; will retry.")
            return
        for running in live:
            message_id, token = running.delivery.message_id, running.delivery.token
            if running.lost or (message_id not in lost_ids and leases[message_id] == token):
                continue
            with self._lock:
                if id(running.task) not in self._running:
                    continue  # settled meanwhile (acked): not lost
                running.lost = True  # its holds stay kept: see beat()
                logger.warning(
                    "Lost the lease of task %s to another worker; it will not be acked here.",
                    running.task.id,
                )

    def _expire(self, running: Running) -> None:
        task, delivery = running.task, running.delivery
        task.past_deadline = True  # what the task reports later is no longer its outcome
        logger.error("Task %s passed its %.0f s deadline; failing it.", task.id, self.task_deadline)
        try:
            self._emit(SIGNAL_DEADLINE, task, self.task_deadline)
        except Exception:
            logger.exception("Could not announce the deadline of %s.", task.id)
        try:
            self.storage.ack(delivery.message_id, delivery.token)
        except Exception:
            logger.exception("Could not ack %s after its deadline.", task.id)

    # Consumer lifecycle ---------------------------------------------------------------
    def on_consumer_event(self, listener):
        """Register ``listener(event, consumer)`` for "start", "beat" and "stop"."""
        self._consumer_listeners.append(listener)
        return listener

    def notify_consumer(self, event: str, consumer) -> None:
        for listener in self._consumer_listeners:
            listener(event, consumer)

    def create_consumer(self, **options):
        return LeasingConsumer(self, **options)

    # Locks get a TTL so that a crashed worker's lock frees itself.
    def lock_task(self, lock_name, ttl=None):
        return TaskLock(self, lock_name, self.lock_ttl if ttl is None else ttl)


class LeasingWorker(Worker):
    """Huey's worker; when idle it waits its turn to look at the queue (see ``idle``)."""

    def sleep(self):
        if not self.huey.leasing:
            return super().sleep()
        self.huey.idle.wait(self.stop_flag)


class LeasingConsumer(Consumer):
    """Huey's consumer, announcing itself so the monitor can show which workers are alive."""

    worker_class = LeasingWorker
    beat_interval = 10.0

    def start(self):
        super().start()
        self.huey.notify_consumer("start", self)
        threading.Thread(target=self._beat, name="huey-consumer-beat", daemon=True).start()

    def _beat(self):
        while not self.stop_flag.wait(self.beat_interval):
            self.huey.notify_consumer("beat", self)

    def run(self):
        try:
            super().run()
        finally:
            self.huey.notify_consumer("stop", self)


class SqliteLeasingHuey(LeasingHuey):
    """The embedded queue: a SQLite file, single host."""

    storage_class = LeasingSqliteStorage


class MongoLeasingHuey(LeasingHuey):
    """The queue in MongoDB, shared by workers on any number of hosts."""

    storage_class = MongoStorage
