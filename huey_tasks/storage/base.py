"""What Karasu's queue storages add to Huey's BaseStorage: leases, dead letters and slots.

Huey's stock storages delete a message when it is dequeued, so a worker that dies mid-task
loses it. A leasing storage instead *claims* the message until a deadline. The worker acks
(deletes) it when the task reaches a final outcome, a heartbeat extends the deadline while
the task runs, and a message whose lease ran out is delivered again. A message delivered
``max_deliveries`` times without an ack is moved to a dead-letter store.

Every claim carries a fresh *fencing token*. Ack, release and extend name it, so a worker
whose lease ran out and whose message was claimed again by another worker can no longer
touch the new holder's claim; its calls simply report failure.

The same storage also keeps concurrency *slots* (a lease-based distributed semaphore), so
that a crashed worker's slot frees itself when its lease runs out.
"""

from __future__ import annotations

import datetime
import logging
import math
import uuid
from collections.abc import Callable
from dataclasses import dataclass

logger = logging.getLogger(__name__)

DEFAULT_LEASE_SECONDS = 30.0
DEFAULT_MAX_DELIVERIES = 5


@dataclass(frozen=True)
class Delivery:
    """A claimed message. Its ``message_id`` and ``token`` are handed back to ack, release
    or extend it."""

    message_id: str
    data: bytes
    deliveries: int
    token: str


@dataclass(frozen=True)
class DeadLetter:
    message_id: str
    data: bytes
    deliveries: int
    died_at: datetime.datetime
    reason: str
    priority: float = 0  # Kept, so that a requeued message runs at its old priority.


def utc_from_timestamp(ts: float) -> datetime.datetime:
    return datetime.datetime.fromtimestamp(ts, tz=datetime.UTC)


def epoch_seconds(ts: datetime.datetime | float) -> float:
    """The epoch seconds of ``ts``, where a naive datetime is UTC (Huey's ``utc=True``).

    ``naive.timestamp()`` would read it in the process's local time zone and shift every
    eta by the UTC offset, so the conversion is explicit.
    """
    if isinstance(ts, int | float):
        return float(ts)
    if ts.tzinfo is None:
        ts = ts.replace(tzinfo=datetime.UTC)
    return ts.timestamp()


def positive_seconds(name: str, value: float) -> float:
    """``value`` as seconds, refused (ValueError) unless finite and above 0: nan or inf
    would reach ``time.sleep`` in a heartbeat and end the thread that sleeps on it."""
    try:
        seconds = float(value)
    except (TypeError, ValueError):
        seconds = math.nan
    if not math.isfinite(seconds) or seconds <= 0:
        raise ValueError(f"{name} must be a finite number of seconds above 0, not {value!r}")
    return seconds


def new_token() -> str:
    return uuid.uuid4().hex


def is_token(token: object) -> bool:
    # An unclaimed message has no token, so None or "" must never match it.
    return isinstance(token, str) and bool(token)


class LeasingStorageMixin:
    """The extra API both Karasu storages implement on top of Huey's ``BaseStorage``.

    ``dequeue()`` of a leasing storage claims rather than removes, and is
    ``claim().data``.
    """

    lease_seconds: float = DEFAULT_LEASE_SECONDS
    max_deliveries: int = DEFAULT_MAX_DELIVERIES
    # Called with each message ``claim()`` buries, after its dead letter is stored.
    on_dead_letter: Callable[[DeadLetter], None] | None = None

    def configure_leases(
        self, lease_seconds: float | None = None, max_deliveries: int | None = None
    ) -> None:
        """Set the lease length and the deliveries before a dead letter; both are checked
        before either is set, so a refused call changes nothing."""
        seconds = self.lease_seconds if lease_seconds is None else lease_seconds
        seconds = positive_seconds("lease_seconds", seconds)
        deliveries = self.max_deliveries if max_deliveries is None else max_deliveries
        if isinstance(deliveries, bool) or not isinstance(deliveries, int) or deliveries < 1:
            raise ValueError(f"max_deliveries must be a whole number >= 1, not {deliveries!r}")
        self.lease_seconds, self.max_deliveries = seconds, deliveries

    def dequeue(self) -> bytes | None:
        delivery = self.claim()
        return None if delivery is None else delivery.data

    def _dead_lettered(self, letter: DeadLetter) -> None:
        """Tell ``on_dead_letter``. Its failure must not stop the claim that buried the
        message."""
        callback = self.on_dead_letter
        if callback is None:
            return
        try:
            callback(letter)
        except Exception:
            logger.exception("on_dead_letter failed for message %s", letter.message_id)

    def _burial_reason(self) -> str:
        return f"lease expired on all {self.max_deliveries} deliveries"

    # Messages -----------------------------------------------------------------------
    def enqueue_many(
        self,
        messages: list[bytes],
        priority: float | None = None,
        priorities: list[float] | None = None,
    ) -> None:
        """Add many messages in one write (the fan-out of a generation request), all at
        ``priority``, or each at its own of ``priorities``."""
        raise NotImplementedError

    def add_to_schedule(
        self, data: bytes, ts: datetime.datetime, priority: float | None = None
    ) -> None:
        """Schedule ``data`` to run at ``ts`` (a naive datetime is UTC) at ``priority``."""
        raise NotImplementedError

    def promote_due(self, ts: datetime.datetime) -> list[bytes]:
        """Make every scheduled message due at ``ts`` runnable, atomically, and return them.

        Huey's own scheduler reads the schedule and then enqueues what it read, so a worker
        killed in between loses those messages. This does both in one step and returns what
        moved.
        """
        raise NotImplementedError

    def claim(self, lease_seconds: float | None = None) -> Delivery | None:
        """Lease the next deliverable message (highest priority, oldest first).

        A message already delivered ``max_deliveries`` times is buried instead (stored as
        a dead letter, then ``on_dead_letter`` is called) and the next one is tried.
        """
        raise NotImplementedError

    def ack(self, message_id: str, token: str) -> bool:
        """Delete a message claimed with ``token``, because its task reached a final
        outcome."""
        raise NotImplementedError

    def release(self, message_id: str, token: str, delay: float = 0.0) -> bool:
        """Hand a message claimed with ``token`` back for redelivery, uncounted, so that this
        delivery is undone. With ``delay``, it is deliverable again only after that many
        seconds (a worker that could not reach the database backs off), and meanwhile it is
        waiting, neither queued nor leased."""
        raise NotImplementedError

    def extend_leases(self, leases: dict[str, str], lease_seconds: float | None = None) -> set[str]:
        """Extend the leases of ``{message_id: token}`` that are still held, and return the
        ids that were lost.

        A lease is lost when its message is gone or was claimed again under another token.
        """
        raise NotImplementedError

    def leased_count(self) -> int:
        """The messages currently claimed by a live lease, which run somewhere. Those
        handed back with a delay are not included."""
        raise NotImplementedError

    def health_check(self, timeout: float = 2.0) -> None:
        """Raise unless the storage answers within about ``timeout`` seconds.

        It serves probes (``/healthz``, the metrics), and is bounded even where the
        storage's own calls would wait much longer for a lock or a server.
        """
        raise NotImplementedError

    def all_messages(self) -> list[bytes]:
        """The data of every message that may still run: queued, leased and scheduled.

        Dead letters are not included. It is read as one snapshot where the storage allows.
        """
        raise NotImplementedError

    # Dead letters -------------------------------------------------------------------
    def dead_letters(self, limit: int | None = None) -> list[DeadLetter]:
        raise NotImplementedError

    def dead_letter_count(self) -> int:
        raise NotImplementedError

    def requeue_dead_letter(self, message_id: str) -> bool:
        """Put a dead letter back on the queue at its priority with a fresh delivery count.

        It returns True only for the call that took the dead letter off the store.
        """
        raise NotImplementedError

    def purge_dead_letters(self, message_ids: list[str] | None = None) -> int:
        """Delete the given dead letters, or all of them."""
        raise NotImplementedError

    # Slots (distributed semaphore) ----------------------------------------------------
    def acquire_slot(self, name: str, limit: int, holder: str, ttl: float) -> int | None:
        """Take a free slot 0..limit-1 of ``name`` for ``ttl`` seconds, or return None if
        all are taken."""
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
