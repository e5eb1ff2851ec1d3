"""A worker's heartbeat made to raise, for the tests of what a crash does."""

from __future__ import annotations

import contextlib
import threading
from collections.abc import Callable, Iterator

from tests.support.consumers import wait_for

# A beat of the message leases, and the job claims' own (which reads what is held).
BEAT_OF = {"lease": "_beat", "claims": "_held"}


@contextlib.contextmanager
def failing_heartbeat(
    heartbeat: str = "lease",
    message: str = "",
    error: Callable[[str], BaseException] = RuntimeError,
) -> Iterator[threading.Event]:
    """While the event this yields is set, every beat of ``heartbeat`` raises
    ``error(message)`` (a RuntimeError unless told); clear it and the heartbeat beats again.
    On exit the heartbeat is whole and beating."""
    from huey.contrib.djhuey import HUEY

    method = BEAT_OF[heartbeat]
    original = getattr(HUEY, method)
    failing = threading.Event()
    failing.set()
    message = message or f"the {heartbeat} heartbeat was made to fail: 心拍が止まった 💔"

    def beat(*args, **kwargs):
        if failing.is_set():
            raise error(message)
        return original(*args, **kwargs)

    setattr(HUEY, method, beat)  # on the instance: the heartbeat thread looks it up each beat
    try:
        yield failing
    finally:
        failing.clear()
        delattr(HUEY, method)
        # The next test's consumer must find this process claiming again.
        wait_for(lambda: not HUEY.heartbeat_down, 15, message="the heartbeat beating again")
