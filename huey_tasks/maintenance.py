"""The queue's housekeeping, and the last maintenance result kept for the job monitor.

The pipeline's periodic ``maintenance`` task (``generation.tasks``) runs ``housekeeping``
and its own repairs, then ``remember``s what it did, and the monitor shows
``last_result``.
"""

from __future__ import annotations

import datetime
import logging
import time

from django.conf import settings

from huey_tasks import ledger

logger = logging.getLogger(__name__)

MAINTENANCE_KEY = "karasu:maintenance:last"


def housekeeping(huey) -> dict:
    """Delete old ledger rows, stored results and worker records, mark dead letters in the
    ledger, and return what was deleted and marked."""
    retention = settings.KARASU.get("RETENTION", {})
    return {
        "runs_deleted": ledger.purge_finished_runs(
            datetime.timedelta(days=retention.get("RUN_DAYS", 7))
        ),
        "workers_deleted": ledger.purge_stopped_workers(datetime.timedelta(days=1)),
        "results_deleted": huey.storage.purge_results(retention.get("RESULT_HOURS", 24) * 3600),
        "dead_marked": ledger.mark_dead_letters(huey),
    }


def remember(huey, result: dict) -> None:
    """Keep the last maintenance result in the queue storage, for the monitor."""
    try:
        huey.put(MAINTENANCE_KEY, {"finished_at": time.time(), **result})
    except Exception:
        logger.exception("Could not record the maintenance result.")


def last_result(huey) -> dict | None:
    try:
        return huey.get(MAINTENANCE_KEY, peek=True)
    except Exception:
        return None
