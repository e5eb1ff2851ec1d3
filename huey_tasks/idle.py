"""Idle worker threads of one process share one look at the queue.

Huey's workers each poll on their own, backing off to ``max_delay``. 20 idle threads make
10 queries a second between them and still start new work up to 2 s late. Here one idle
thread at a time (the poller) looks every ``interval`` seconds and the others sleep without
querying. Whoever finds work wakes the next sleeper (which wakes the next if it finds more),
and an enqueue in this process wakes up to as many sleepers as it queued, so a fan-out is
picked up at once.
"""

from __future__ import annotations

import threading
import time

# Sleepers also look at the stop flag this often, so a shutdown never waits on them.
STOP_CHECK = 1.0


class IdleWorkers:
    def __init__(self, interval: float):
        if interval <= 0:
            raise ValueError("interval must be positive")
        self.interval = interval
        self._cond = threading.Condition()
        self._polling = False
        self._sleeping = 0
        self._wakeups = 0  # sleepers asked to look now; never more than are asleep

    def wait(self, stop_flag: threading.Event) -> None:
        """Called by a worker thread that found nothing to do. Returns when the thread
        should look again: after ``interval`` if it is the poller, or when it is woken."""
        with self._cond:
            self._sleeping += 1
            try:
                while not stop_flag.is_set():
                    if self._wakeups:
                        self._wakeups -= 1
                        return
                    if not self._polling:
                        self._poll_wait(stop_flag)
                        return
                    self._cond.wait(STOP_CHECK)
            finally:
                self._sleeping -= 1
                self._wakeups = min(self._wakeups, self._sleeping)

    def _poll_wait(self, stop_flag: threading.Event) -> None:
        """The poller's turn: ``interval`` seconds, unless woken or stopped first."""
        self._polling = True
        try:
            deadline = time.monotonic() + self.interval
            while not stop_flag.is_set():
                remaining = deadline - time.monotonic()
                if remaining <= 0 or self._cond.wait(min(remaining, STOP_CHECK)):
                    return
        finally:
            self._polling = False

    def wake(self, count: int = 1) -> None:
        """Wake up to ``count`` sleepers, one for each message this process knows is new."""
        with self._cond:
            self._wakeups = min(self._wakeups + count, self._sleeping)
            if self._wakeups:
                self._cond.notify_all()
