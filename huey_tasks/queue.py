"""Huey with at-least-once delivery on top of a leasing storage.

The worker claims a message under a lease (``storage.claim``) and gets a fencing token with
it; the process's heartbeat (``heartbeat.HeartbeatMixin``) extends the leases of the tasks
it is running, and the message is acked only when ``execute`` returns, whatever the
outcome: success, final failure, cancel, revoke, expiry or a scheduled retry. Every ack,
release and extension names the token, so a worker whose lease ran out (a long pause, a
stalled heartbeat) can never touch the claim of the worker that took the message over.

Tasks also keep other leases alive through the same heartbeat (``hold``), such as provider
slots and job claims. These are kept for as long as the task runs here, even after its
message was taken over. Past ``task_deadline`` seconds a task's leases are no longer
extended, it is announced as timed out (``SIGNAL_DEADLINE``) and its message is acked. A
task that could not reach the database hands its message back uncounted, after a back-off.
"""

from __future__ import annotations

import logging
import random
import threading
import time

from huey import Huey
from huey import signals as S
from huey.api import TaskLock
from huey.consumer import Consumer, Worker

from cms.redaction import redact, redact_traceback

from .heartbeat import SIGNAL_DEADLINE, HeartbeatMixin, Running
from .idle import IdleWorkers
from .storage import LeasingSqliteStorage, MongoStorage
from .storage.base import DeadLetter, Delivery, positive_seconds

logger = logging.getLogger(__name__)

DEFAULT_LOCK_TTL = 600  # seconds, so that a crashed worker's lock_task lock frees itself
DEFAULT_TASK_DEADLINE = 300.0  # seconds; above the providers' own timeouts (fal: 180 s)
DEFAULT_IDLE_POLL = 0.1  # seconds between an idle process's looks at the queue
# On SIGTERM, provider waits are handed back this long (at most half the shutdown timeout)
# before the timeout, leaving time to give the job and its message back.
HAND_BACK_MARGIN = 5.0

# SIGNAL_DEADLINE is the heartbeat's; it is importable from here as before.
__all__ = [
    "HAND_BACK",
    "SIGNAL_DEADLINE",
    "SIGNAL_DEAD_LETTERED",
    "SLOTS",
    "LeasingConsumer",
    "LeasingHuey",
    "LeasingWorker",
    "MongoLeasingHuey",
    "SqliteLeasingHuey",
]

# Karasu's own signals, sent like Huey's: handler(signal, task, *args). The heartbeat sends
# SIGNAL_DEADLINE (args: the deadline in seconds).
SIGNAL_DEAD_LETTERED = "dead-lettered"  # args: the DeadLetter

SLOTS = "slot"  # the hold() group of limiter slots, each (name, index, holder)

# The task.settle of a task that could not reach the database (or media). Its message is
# handed back uncounted and can be delivered again after a back-off (see hand_back_later).
HAND_BACK = "hand back"
OUTAGE_BACKOFF_FIRST = 1.0  # seconds; doubles with each hand-back in a row in this process
DEFAULT_OUTAGE_BACKOFF_MAX = 30.0


class LeasingHuey(HeartbeatMixin, Huey):
    def __init__(
        self,
        *args,
        lock_ttl: float = DEFAULT_LOCK_TTL,
        task_deadline: float = DEFAULT_TASK_DEADLINE,
        idle_poll: float = DEFAULT_IDLE_POLL,
        outage_backoff_max: float = DEFAULT_OUTAGE_BACKOFF_MAX,
        **kwargs,
    ):
        self.lock_ttl = lock_ttl
        self.outage_backoff_max = positive_seconds("outage_backoff_max", outage_backoff_max)
        self._outage_streak = 0  # hand-backs in a row, since a task last completed here
        self.task_deadline = positive_seconds("task_deadline", task_deadline)
        self.idle = IdleWorkers(positive_seconds("idle_poll", idle_poll))
        self._consumer_listeners: list = []
        # Set while a consumer of this process stops. Tasks waiting on a provider then hand
        # the wait back; the request stays with the provider and the next worker resumes it.
        self.handing_back = threading.Event()
        self.stopping = threading.Event()  # set as soon as a consumer here starts to stop
        super().__init__(*args, **kwargs)
        self._signal.connect(self._on_interrupted, S.SIGNAL_INTERRUPTED)
        self._signal.connect(self._on_complete, S.SIGNAL_COMPLETE)
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
        if self.heartbeat_down:
            # Nothing would keep a new claim alive: its lease would run out under the task
            # and another worker would run it too. Healthy workers take the messages.
            return None
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
        self.idle.wake()  # there may be more, so the next idle thread looks at once
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
            self._settle(task, "release")  # the task really stopped, so hand it back now
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
        """Ack, release or abandon the task's message, if this worker still holds it."""
        with self._lock:
            running = self._running.pop(id(task), None)
            if running is not None:
                self._lost.difference_update(running.holds)
        if running is None:
            return  # the heartbeat already settled it when its deadline passed
        delivery = running.delivery
        if running.lost:
            return  # logged once when the heartbeat found it lost
        if outcome == "ack":
            if not self.storage.ack(delivery.message_id, delivery.token):
                logger.warning("Lease of %s was lost before its ack; not acked.", task.id)
        elif outcome == "release":
            self.storage.release(delivery.message_id, delivery.token)
            logger.warning("Handed back interrupted task %s for redelivery.", task.id)
        elif outcome == HAND_BACK:
            self._hand_back(task, delivery)
        else:
            logger.warning("Task %s left for redelivery when its lease runs out.", task.id)

    # Outages: hand the message back uncounted, with back-off ------------------------------
    def hand_back_later(self, task) -> float:
        """Settle the running ``task`` by handing its message back after a back-off.

        The task could not reach the database (or media), which is no fault of the message,
        so the delivery does not count towards the dead letters. The back-off doubles with
        each hand-back in a row in this process, up to ``outage_backoff_max``, with jitter so
        the backlog does not return all at once. Returns the delay."""
        with self._lock:
            self._outage_streak += 1
            streak = self._outage_streak
        ceiling = min(self.outage_backoff_max, OUTAGE_BACKOFF_FIRST * 2 ** min(streak - 1, 20))
        delay = ceiling * random.uniform(0.5, 1.0)
        task.settle = HAND_BACK
        task.hand_back_delay = delay
        return delay

    def _hand_back(self, task, delivery: Delivery) -> None:
        delay = getattr(task, "hand_back_delay", OUTAGE_BACKOFF_FIRST)
        try:
            handed = self.storage.release(delivery.message_id, delivery.token, delay=delay)
        except Exception:
            # The queue storage is down too, so the lease runs out and the delivery counts.
            logger.exception(
                "Could not hand back task %s; it is delivered again when its lease runs out.",
                task.id,
            )
            return
        if handed:
            logger.warning(
                "Handed back task %s for %.1f s: the database or media storage did not answer.",
                task.id,
                delay,
            )
        else:
            logger.warning("Lease of %s was lost before its hand-back.", task.id)

    def time_left(self) -> float | None:
        """Seconds before the running task's deadline (None outside a consumer task)."""
        running = getattr(self._current, "running", None)
        return None if running is None else running.deadline - time.monotonic()

    def _on_complete(self, signal, task, *args) -> None:
        # A task that ran to its end without handing back shows that whatever it needed
        # answers again, so the back-off starts over.
        if getattr(task, "settle", None) != HAND_BACK:
            self._outage_streak = 0

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

    def _extend_slots(self, slots: list, seconds: float) -> list:
        return [slot for slot in slots if not self.storage.extend_slot(*slot, seconds)]

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
        self.huey.handing_back.clear()
        self.huey.stopping.clear()
        super().start()
        self.huey.notify_consumer("start", self)
        threading.Thread(target=self._beat, name="huey-consumer-beat", daemon=True).start()

    def _beat(self):
        while not self.stop_flag.wait(self.beat_interval):
            self.huey.notify_consumer("beat", self)

    def stop(self, graceful=False):
        """Stop as Huey's consumer does, and have tasks waiting on a provider hand their
        waits back in time.

        A stop that is not graceful hands them back at once. A graceful one hands them back
        shortly before the shutdown timeout runs out, so calls that end sooner still finish
        here. Nothing is cancelled at the provider."""
        self.huey.stopping.set()
        timeout = self.shutdown_timeout
        timer = None
        if not graceful:
            self.huey.handing_back.set()
        elif timeout:
            timer = threading.Timer(
                timeout - min(timeout / 2, HAND_BACK_MARGIN), self.huey.handing_back.set
            )
            timer.daemon = True
            timer.start()
        try:
            return super().stop(graceful)
        finally:
            if timer is not None:
                timer.cancel()
            # Once every worker thread has ended, nothing of this consumer is left to stop.
            # A later consumer (or a task run by hand) in this process must not see the
            # flags still set.
            if not any(self.environment.is_alive(t) for _, t in self.worker_threads):
                self.huey.stopping.clear()
                self.huey.handing_back.clear()

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
