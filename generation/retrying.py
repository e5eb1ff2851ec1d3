"""Writes that record a paid provider result, tried again in place through a database blip.

Once a provider has answered, its result is paid for: a failover or "database is locked"
while it is written must not throw it away, or the retry of the whole task pays again.
A longer outage is left to the task's own retries.
"""

from __future__ import annotations

import logging
import sqlite3

from django.db import InterfaceError, OperationalError, connection
from tenacity import Retrying, retry_if_exception, stop_after_attempt, wait_exponential_jitter

logger = logging.getLogger(__name__)

DATABASE_ERRORS = (OperationalError, InterfaceError, sqlite3.OperationalError)


def _retryable(exc: BaseException) -> bool:
    # Inside a caller's transaction nothing can be retried: that transaction is broken.
    return isinstance(exc, DATABASE_ERRORS) and not connection.in_atomic_block


def _before_retry(state) -> None:
    logger.warning("Writing a paid result failed (%s); trying again.", state.outcome.exception())
    connection.close_if_unusable_or_obsolete()  # a broken connection: a new one next


def paid_result_writes() -> Retrying:
    """Attempts for one write: ``for attempt in paid_result_writes(): with attempt: ...``.

    Up to five, 4 sleeps over 4 to 7 s with jitter; the last error is raised as it was.
    """
    return Retrying(
        retry=retry_if_exception(_retryable),
        stop=stop_after_attempt(5),
        wait=wait_exponential_jitter(multiplier=0.25, max=2),
        before_sleep=_before_retry,
        reraise=True,
    )
