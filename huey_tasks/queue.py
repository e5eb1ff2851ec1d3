"""Huey with at-least-once delivery on top of a leasing storage.

The worker claims a message under a lease (``storage.claim``), a heartbeat thread in each
process extends the leases of the tasks it is running, and the message is acked only when
``execute`` returns: success, final failure, cancel, revoke, expiry, or after the task was
re-scheduled for retry. A task interrupted by shutdown is handed back for redelivery at
once; one whose process was killed is delivered again when its lease runs out.
"""

from __future__ import annotations

import logging
import os
import threading
import time

from huey import Huey
from huey import signals as S
from huey.api import TaskLock
from huey.consumer import Consumer

from .storage import LeasingSqliteStorage, MongoStorage

logger = logging.getLogger(__name__)

DEFAULT_LOCK_TTL = 600  # seconds; a crashed worker's lock_task lock frees itself


class LeasingHuey(Huey):
    def __init__(self, *args, lock_ttl: float = DEFAULT_LOCK_TTL, **kwargs):
        self.lock_ttl = lock_ttl
        self._leases: dict[object, str] = {}  # task -> message id, for the heartbeat
        self._slots: set[tuple[str, int, str]] = set()  # limiter slots held, ditto
        self._leases_lock = threading.Lock()
        self._heartbeat_pid: int | None = None
        self._consumer_listeners: list = []
        super().__init__(*args, **kwargs)
        self._signal.connect(self._on_interrupted, S.SIGNAL_INTERRUPTED)

    @property
    def leasing(self) -> bool:
        # Immediate mode swaps in Huey's MemoryStorage, which has no leases.
        return hasattr(self.storage, "claim")

    def dequeue(self):
        if not self.leasing:
            return super().dequeue()
        delivery = self.storage.claim()
        if delivery is None:
            return None
        # An undecodable message stays leased and, after max_deliveries, is dead-lettered.
        task = self.deserialize_task(delivery.data)
        task.delivery = delivery
        with self._leases_lock:
            self._leases[task] = delivery.message_id
        self._ensure_heartbeat()
        return task

    def enqueue_many(self, tasks: list) -> None:
        """Enqueue many tasks, one storage write per priority; signals fire for each."""
        if not self.leasing:
            for task in tasks:
                self.enqueue(task)
            return
        by_priority: dict = {}
        for task in tasks:
            if task.expires:
                task.resolve_expires(self.utc)
            self._emit(S.SIGNAL_ENQUEUED, task)
            by_priority.setdefault(task.priority, []).append(self.serialize_task(task))
        for priority, messages in by_priority.items():
            self.storage.enqueue_many(messages, priority)

    def read_schedule(self, timestamp=None):
        """The scheduler's step: move due tasks onto the queue in one atomic storage step.

        Huey's scheduler enqueues whatever this returns; returning [] after moving them
        ourselves closes the window in which a killed scheduler would lose them.
        """
        if not self.leasing:
            return super().read_schedule(timestamp)
        if timestamp is None:
            timestamp = self._get_timestamp()
        for data in self.storage.promote_due(timestamp):
            try:
                self._emit(S.SIGNAL_ENQUEUED, self.deserialize_task(data))
            except Exception:  # already queued; only the signal is missed
                logger.exception("Could not announce a promoted task.")
        return []

    def execute(self, task, timestamp=None):
        delivery = getattr(task, "delivery", None)
        if delivery is None:
            return super().execute(task, timestamp)
        try:
            result = super().execute(task, timestamp)
        except BaseException:
            self._settle(task, ack=False)
            raise
        self._settle(task, ack=not getattr(task, "interrupted", False))
        return result

    def _settle(self, task, ack: bool) -> None:
        with self._leases_lock:
            message_id = self._leases.pop(task, None)
        if message_id is None:
            return  # already handed back by notify_interrupted_tasks
        if ack:
            self.storage.ack(message_id)
        else:
            self.storage.release(message_id)

    def _on_interrupted(self, signal, task, *args) -> None:
        task.interrupted = True

    def notify_interrupted_tasks(self):
        # The consumer is exiting with tasks still running in daemon threads: hand their
        # messages back now instead of waiting for their leases to run out.
        with self._leases_lock:
            leases, self._leases = self._leases, {}
        for task, message_id in leases.items():
            try:
                self.storage.release(message_id)
                logger.warning("Handed back interrupted task %s for redelivery.", task.id)
            except Exception:
                logger.exception("Could not hand back %s; its lease will expire.", task.id)
        super().notify_interrupted_tasks()

    # Heartbeat ----------------------------------------------------------------------
    def _ensure_heartbeat(self) -> None:
        if self._heartbeat_pid == os.getpid():
            return
        with self._leases_lock:
            if self._heartbeat_pid == os.getpid():
                return
            self._heartbeat_pid = os.getpid()  # a forked child starts its own
            thread = threading.Thread(
                target=self._heartbeat, name="huey-lease-heartbeat", daemon=True
            )
            thread.start()

    def hold_slot(self, slot: tuple[str, int, str]) -> None:
        """Keep a limiter slot (name, index, holder) alive while its task runs."""
        with self._leases_lock:
            self._slots.add(slot)
        self._ensure_heartbeat()

    def drop_slot(self, slot: tuple[str, int, str]) -> None:
        with self._leases_lock:
            self._slots.discard(slot)

    def _heartbeat(self) -> None:
        interval = self.storage.lease_seconds / 3
        while True:  # a daemon thread: it ends with the process
            time.sleep(interval)
            with self._leases_lock:
                ids, slots = list(self._leases.values()), list(self._slots)
            try:
                if ids:
                    self.storage.extend_leases(ids)
                for name, index, holder in slots:
                    self.storage.extend_slot(name, index, holder, self.storage.lease_seconds)
            except Exception:
                logger.exception("Lease heartbeat failed; will retry.")

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


class LeasingConsumer(Consumer):
    """Huey's consumer, announcing itself so the monitor can show which workers are alive."""

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
