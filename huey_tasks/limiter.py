"""Per-provider limits shared by every worker on every host.

``ConcurrencyLimiter`` is a distributed semaphore kept in the queue storage: a slot is a
lease as long as a message lease, kept alive by the worker's heartbeat while its task runs,
so a crashed worker's slot frees itself as soon as its messages do. The requests-per-minute
limit is Huey's own fixed-window ``RateLimit`` over the same storage's atomic counters.
"""

from __future__ import annotations

import contextlib
import os
import socket
import threading
import time
import uuid
from collections.abc import Iterator

from huey.exceptions import RateLimitExceeded

from .queue import LeasingHuey

SLOT_POLL = 0.05  # seconds between tries while waiting briefly for a slot in-thread
DEFAULT_SLOT_WAIT = 1.0  # then: seconds before a task that found no slot is tried again


def holder_id() -> str:
    return f"{socket.gethostname()}:{os.getpid()}:{threading.get_ident()}:{uuid.uuid4().hex[:8]}"


class ConcurrencyLimiter:
    def __init__(self, huey: LeasingHuey, name: str, limit: int):
        if limit < 1:
            raise ValueError("limit must be at least 1")
        self.huey = huey
        self.storage = huey.storage
        self.name = name
        self.limit = limit

    def try_acquire(self) -> tuple[int, str] | None:
        # A cheap read first: waiting threads poll, and most polls find every slot taken.
        if self.storage.slots_in_use(self.name) >= self.limit:
            return None
        holder = holder_id()
        ttl = self.storage.lease_seconds
        index = self.storage.acquire_slot(self.name, self.limit, holder, ttl)
        if index is None:
            return None
        self.huey.hold_slot((self.name, index, holder))
        return index, holder

    def release(self, slot: tuple[int, str]) -> None:
        self.huey.drop_slot((self.name, *slot))
        self.storage.release_slot(self.name, *slot)

    @contextlib.contextmanager
    def slot(self, patience: float = 2.0, wait: float = DEFAULT_SLOT_WAIT) -> Iterator[int]:
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
            yield slot[0]
        finally:
            self.release(slot)
