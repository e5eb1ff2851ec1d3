"""Per-provider limits shared by every worker on every host.

``ConcurrencyLimiter`` is a distributed semaphore kept in the queue storage: a slot is a
lease as long as a message lease, kept alive by the worker's heartbeat while its task runs,
so a crashed worker's slot frees itself as soon as its messages do. The requests-per-minute
limit is Huey's own fixed-window ``RateLimit`` over the same storage's atomic counters.
"""

from __future__ import annotations

import contextlib
import logging
import os
import socket
import threading
import time
import uuid
from collections.abc import Iterator
from dataclasses import dataclass

from huey.exceptions import RateLimitExceeded

from .queue import SLOTS, LeasingHuey

logger = logging.getLogger(__name__)

SLOT_POLL = 0.05  # seconds between tries while waiting briefly for a slot in-thread
DEFAULT_SLOT_WAIT = 1.0  # then: seconds before a task that found no slot is tried again


def holder_id() -> str:
    return f"{socket.gethostname()}:{os.getpid()}:{threading.get_ident()}:{uuid.uuid4().hex[:8]}"


class SlotLost(RateLimitExceeded):
    """The slot's lease ran out and another worker may hold it: do not call on."""


@dataclass(frozen=True)
class Slot:
    name: str
    index: int
    holder: str
    taken_at: float  # time.monotonic()

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

    @property
    def storage(self):
        return self.huey.storage

    def try_acquire(self) -> Slot | None:
        # A cheap read first: waiting threads poll, and most polls find every slot taken.
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
        """Raise SlotLost unless ``slot`` is still ours: checked right before a paid call.

        The heartbeat marks slots it lost; a slot older than a heartbeat interval is also
        checked in the storage, since a frozen process resumes before its heartbeat does.
        """
        lost = self.huey.is_lost(SLOTS, slot.key)
        if not lost and time.monotonic() - slot.taken_at > self.storage.lease_seconds / 3:
            lost = not self.storage.extend_slot(*slot.key, self.storage.lease_seconds)
        if lost:
            raise SlotLost(f"{self.name} concurrency (slot lost)", DEFAULT_SLOT_WAIT)

    def release(self, slot: Slot) -> None:
        """Give the slot back. Never raises: an unreleased slot frees itself at its TTL."""
        self.huey.drop(SLOTS, slot.key)
        try:
            self.storage.release_slot(*slot.key)
        except Exception:
            logger.exception("Could not release slot %s of %s; it expires by itself.",
                             slot.index, self.name)

    @contextlib.contextmanager
    def slot(self, patience: float = 2.0, wait: float = DEFAULT_SLOT_WAIT) -> Iterator[Slot]:
        """Hold a slot for the block, waiting up to ``patience`` seconds for one to free.

        With none free after that, raise RateLimitExceeded: Huey re-schedules the task in
        ``wait`` seconds without using up a retry.
        """
        deadline = time.monotonic() + patience
        while (slot := self.try_acquire()) is None:
            if time.monotonic() >= deadline:
                raise RateLimitExceeded(f"{self.name} concurrency", wait)
            time.sleep(SLOT_POLL)
        try:
            yield slot
        finally:
            self.release(slot)
