"""Signals the queue sends for whoever listens (the metrics in ``ops`` count them).

The queue does not know who listens: ``ops`` sits at the edge and imports the queue, never
the other way round. Sending never raises, so a failing listener cannot stop a heartbeat.
"""

from __future__ import annotations

import logging

from django.dispatch import Signal

logger = logging.getLogger(__name__)

# A heartbeat of a worker process crashed (an exception out of one beat). Arguments:
# heartbeat ("lease": the messages' leases and provider slots; "claims": the job claims),
# error (the exception).
heartbeat_crashed = Signal()


def report_heartbeat_crash(heartbeat: str, error: BaseException) -> None:
    """Tell the listeners that the ``heartbeat`` crashed with ``error``."""
    for receiver, result in heartbeat_crashed.send_robust(
        sender=None, heartbeat=heartbeat, error=error
    ):
        if isinstance(result, Exception):
            logger.error("%s could not take a heartbeat crash: %r", receiver, result)
