"""Per-provider limits shared by every worker on every host.

``ConcurrencyLimiter`` is a distributed semaphore kept in the queue storage. A slot is a
lease as long as a message lease, and the worker's heartbeat keeps it alive while its task
runs, so a crashed worker's slot frees itself as soon as its messages do.
``RequestsPerMinute`` is a fixed-window counter over the same storage's atomic ``incr``.
"""

from __future__ import annotations

import contextlib
import logging
import os
import random
import socket
import threading
import time
import uuid
from collections.abc import Iterator
from dataclasses import dataclass

from huey.exceptions import RateLimitExceeded

from .queue import SLOTS, LeasingHuey

logger = logging.getLogger(__name__)

# Seconds between looks for a slot that another process freed.
SLOT_POLL = 0.05
# Seconds before a task that found no slot is tried again, times uniform(1, 1 +
# SLOT_WAIT_JITTER), so that the waiting tasks come back spread out.
DEFAULT_SLOT_WAIT = 1.0
SLOT_WAIT_JITTER = 0.5
# A rate-limited task waits until the window's end, plus up to this many periods.
RATE_JITTER = 0.25


def holder_id() -> str:
    return f"{socket.gethostname()}:{os.getpid()}:{threading.get_ident()}:{uuid.uuid4().hex[:8]}"


class SlotLost(RateLimitExceeded):
    """The slot's lease ran out and another worker may hold it, so the call must not go
    on."""


@dataclass(frozen=True)
class Slot:
    name: str
    index: int
    holder: str
    taken_at: float  # A time.monotonic() value.

    @property
    def key(self) -> tuple[str, int, str]:
        return (self.name, self.index, self.holder)


class ConcurrencyLimiter:
    def __init__(self, huey: LeasingHuey, name: str, limit: int):
        if limit < 1:
            raise ValueError("limit must be at least 1")
        self.huey = huey
        self.name = name
        self.limit = limit
        # A slot released in this process goes to a thread waiting here at once.
        self._freed = threading.Condition()

    @property
    def storage(self):
        return self.huey.storage

    def try_acquire(self) -> Slot | None:
        # A cheap read comes first, because waiting threads poll and most polls find every
        # slot taken.
        if self.storage.slots_in_use(self.name) >= self.limit:
            return None
        holder = holder_id()
        ttl = self.storage.lease_seconds
        index = self.storage.acquire_slot(self.name, self.limit, holder, ttl)
        if index is None:
            return None
        slot = Slot(self.name, index, holder, time.monotonic())
        self.huey.hold(SLOTS, slot.key)
        return slot

    def ensure_held(self, slot: Slot) -> None:
        """Raise SlotLost unless ``slot`` is still ours. It is checked right before a paid
        call.

        The heartbeat marks the slots it lost. A slot older than a heartbeat interval is
        also checked in the storage, because a frozen process resumes before its heartbeat
        does.
        """
        lost = self.huey.is_lost(SLOTS, slot.key)
        if not lost and time.monotonic() - slot.taken_at > self.storage.lease_seconds / 3:
            lost = not self.storage.extend_slot(*slot.key, self.storage.lease_seconds)
        if lost:
            raise SlotLost(f"{self.name} concurrency (slot lost)", DEFAULT_SLOT_WAIT)

    def release(self, slot: Slot) -> None:
        """Give the slot back. It never raises, because an unreleased slot frees itself at
        its TTL."""
        self.huey.drop(SLOTS, slot.key)
        try:
            self.storage.release_slot(*slot.key)
        except Exception:
            logger.exception(
                "Could not release slot %s of %s; it expires by itself.", slot.index, self.name
            )
            return
        with self._freed:
            self._freed.notify()

    @contextlib.contextmanager
    def slot(self, patience: float = 2.0, wait: float = DEFAULT_SLOT_WAIT) -> Iterator[Slot]:
        """Hold a slot for the block, waiting up to ``patience`` seconds for one to free.

        With none free after that, raise RateLimitExceeded, and Huey re-schedules the task
        in ``wait`` to 1.5 × ``wait`` seconds without using up a retry.
        """
        deadline = time.monotonic() + patience
        while (slot := self.try_acquire()) is None:
            if time.monotonic() >= deadline:
                # The wait is jittered, so that tasks turned away together do not all come back
                # together.
                delay = wait * random.uniform(1, 1 + SLOT_WAIT_JITTER)
                raise RateLimitExceeded(f"{self.name} concurrency", delay)
            with self._freed:
                self._freed.wait(SLOT_POLL)
        try:
            yield slot
        finally:
            self.release(slot)


class RequestsPerMinute:
    """At most ``limit`` acquisitions per fixed window of ``period`` seconds, fleet-wide.

    Each window has its own counter (``rpm:{name}:{window number}``), so a window starts
    from zero without a reset. That takes one atomic ``incr`` per acquisition and leaves
    nothing to race on. Huey's ``RateLimit`` resets one shared counter with a read, a delete
    and a put, so two workers crossing into a new window together can both reset it and
    let more through.
    """

    def __init__(
        self,
        huey: LeasingHuey,
        name: str,
        limit: int,
        period: float = 60.0,
        jitter: float = RATE_JITTER,
    ):
        if limit < 1:
            raise ValueError("limit must be at least 1")
        if period <= 0:
            raise ValueError("period must be positive")
        self.huey = huey
        self.name = name
        self.limit = limit
        self.period = float(period)
        self.jitter = jitter
        # This process's last window, to clean up after a lull.
        self._last_window: int | None = None

    @property
    def storage(self):
        return self.huey.storage

    def key(self, window: int) -> str:
        return f"rpm:{self.name}:{window}"

    def window(self, now: float) -> int:
        return int(now // self.period)

    def delay(self, now: float) -> float:
        """Seconds to the end of ``now``'s window, plus jitter so that the tasks turned
        away in a window do not all come back in the first instant of the next one."""
        remainder = (self.window(now) + 1) * self.period - now
        return remainder + random.uniform(0, self.jitter * self.period)

    def acquire(self, now: float | None = None) -> int:
        """Count one request and return its number in its window. Over the limit, raise
        RateLimitExceeded, which is a wait, not a failure.
        """
        now = time.time() if now is None else now
        window = self.window(now)
        count = self.storage.incr(self.key(window))
        self._forget_old(window, first=count == 1)
        if count > self.limit:
            raise RateLimitExceeded(f"{self.name} requests per minute", self.delay(now))
        return count

    def _forget_old(self, window: int, first: bool) -> None:
        """Delete the counters that no one counts on any more. This is best effort and
        never raises.

        The window before the current one is kept. A thread that read the clock just
        before the edge (or a host whose clock lags) may still count on it, and must find
        it full rather than start it again from zero.
        """
        stale = set()
        if first:  # Whoever opens a window clears the one before the last.
            stale.add(window - 2)
        last, self._last_window = self._last_window, window
        if last is not None and last < window - 2:
            # It was left over from before a lull, when no one opened window - 1.
            stale.add(last)
        for old in stale:
            try:
                self.storage.delete_counter(self.key(old))
            except Exception:
                logger.warning(
                    "Could not delete rate counter %s; it is left behind.",
                    self.key(old),
                    exc_info=True,
                )
