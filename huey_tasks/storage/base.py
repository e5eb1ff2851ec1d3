"""What Karasu's queue storages add to Huey's BaseStorage: leases, dead letters, slots.

Huey's stock storages delete a message when it is dequeued, so a worker that dies mid-task
loses it. A leasing storage instead *claims* the message until a deadline; the worker acks
(deletes) it when the task reaches a final outcome, a heartbeat extends the deadline while
it runs, and a message whose lease ran out is delivered again. A message delivered
``max_deliveries`` times without an ack is moved to a dead-letter store.

The same storage also keeps concurrency *slots* (a lease-based distributed semaphore) so a
crashed worker's slot frees itself when its lease runs out.
"""

from __future__ import annotations

import datetime
from dataclasses import dataclass

DEFAULT_LEASE_SECONDS = 30.0
DEFAULT_MAX_DELIVERIES = 5


@dataclass(frozen=True)
class Delivery:
    """A claimed message: hand ``message_id`` back to ack/release/extend."""

    message_id: str
    data: bytes
    deliveries: int


@dataclass(frozen=True)
class DeadLetter:
    message_id: str
    data: bytes
    deliveries: int
    died_at: datetime.datetime
    reason: str


def utc_from_timestamp(ts: float) -> datetime.datetime:
    return datetime.datetime.fromtimestamp(ts, tz=datetime.UTC)


class LeasingStorageMixin:
    """The extra API both Karasu storages implement on top of Huey's ``BaseStorage``.

    ``dequeue()`` of a leasing storage claims rather than removes: it is ``claim().data``.
    """

    lease_seconds: float = DEFAULT_LEASE_SECONDS
    max_deliveries: int = DEFAULT_MAX_DELIVERIES

    def configure_leases(
        self, lease_seconds: float | None = None, max_deliveries: int | None = None
    ) -> None:
        if lease_seconds is not None:
            self.lease_seconds = float(lease_seconds)
        if max_deliveries is not None:
            self.max_deliveries = int(max_deliveries)
        if self.lease_seconds <= 0 or self.max_deliveries < 1:
            raise ValueError("lease_seconds must be > 0 and max_deliveries >= 1")

    def dequeue(self) -> bytes | None:
        delivery = self.claim()
        return None if delivery is None else delivery.data

    # Messages -----------------------------------------------------------------------
    def enqueue_many(self, messages: list[bytes], priority: float | None = None) -> None:
        """Add many messages in one write (the fan-out of a generation request)."""
        raise NotImplementedError

    def promote_due(self, ts) -> list[bytes]:
        """Move every scheduled message due at ``ts`` onto the queue, atomically.

        Huey's own scheduler reads the schedule, then enqueues what it read: a worker killed
        in between loses those messages. This does both in one step and returns what moved.
        """
        raise NotImplementedError

    def claim(self, lease_seconds: float | None = None) -> Delivery | None:
        """Lease the next deliverable message (highest priority, oldest first)."""
        raise NotImplementedError

    def ack(self, message_id: str) -> bool:
        """Delete a claimed message: its task reached a final outcome."""
        raise NotImplementedError

    def release(self, message_id: str) -> bool:
        """Hand a claimed message back for immediate redelivery (not counted)."""
        raise NotImplementedError

    def extend_leases(self, message_ids: list[str], lease_seconds: float | None = None) -> int:
        """Push the lease deadline of running messages forward; returns how many."""
        raise NotImplementedError

    def leased_count(self) -> int:
        """Messages currently claimed by a live lease (running somewhere)."""
        raise NotImplementedError

    # Dead letters -------------------------------------------------------------------
    def dead_letters(self, limit: int | None = None) -> list[DeadLetter]:
        raise NotImplementedError

    def dead_letter_count(self) -> int:
        raise NotImplementedError

    def requeue_dead_letter(self, message_id: str) -> bool:
        """Put a dead letter back on the queue with a fresh delivery count."""
        raise NotImplementedError

    def purge_dead_letters(self, message_ids: list[str] | None = None) -> int:
        """Delete the given dead letters, or all of them."""
        raise NotImplementedError

    # Slots (distributed semaphore) ----------------------------------------------------
    def acquire_slot(self, name: str, limit: int, holder: str, ttl: float) -> int | None:
        """Take a free slot 0..limit-1 of ``name`` for ``ttl`` seconds; None if all taken."""
        raise NotImplementedError

    def extend_slot(self, name: str, index: int, holder: str, ttl: float) -> bool:
        raise NotImplementedError

    def release_slot(self, name: str, index: int, holder: str) -> bool:
        raise NotImplementedError

    def slots_in_use(self, name: str) -> int:
        raise NotImplementedError

    def flush_slots(self) -> None:
        raise NotImplementedError

    def flush_all(self) -> None:
        super().flush_all()  # type: ignore[misc]
        self.purge_dead_letters()
        self.flush_slots()
