"""Provider errors and heartbeat crashes counted for the metrics: one atomic UPDATE each.

The pipeline reports each failed call with ``generation.signals.provider_error``;
``on_provider_error`` counts it. The queue reports each crash of a worker's heartbeat with
``huey_tasks.signals.heartbeat_crashed``; ``on_heartbeat_crash`` counts it. Counting never
changes what happens to the call or the heartbeat: any error here is logged and swallowed.
"""

from __future__ import annotations

import logging

from django.db import IntegrityError, transaction
from django.db.models import F
from django.utils import timezone

from generation.providers.errors import (
    NotCalled,
    PermanentProviderError,
    ProviderError,
    TransientProviderError,
)
from ops.models import HeartbeatCrashCount, ProviderErrorCount

logger = logging.getLogger(__name__)
Kind = ProviderErrorCount.Kind
Type = ProviderErrorCount.Type


def error_kind(exc: ProviderError) -> str | None:
    """The error's kind: rate_limited (a transient 429), transient or permanent, else None."""
    if isinstance(exc, NotCalled):  # refused before any call, so not the provider's error
        return None
    if isinstance(exc, TransientProviderError):
        return Kind.RATE_LIMITED if getattr(exc, "rate_limited", False) else Kind.TRANSIENT
    if isinstance(exc, PermanentProviderError):
        return Kind.PERMANENT
    return None


def increment(call_type: str, provider: str, kind: str) -> None:
    """Add one to (call_type, provider, kind), creating the row on first use; safe under
    concurrency.

    An UPDATE comes first, as the common case needs only that. A missing row is inserted in a
    savepoint; if a concurrent first insert won, the UPDATE is repeated.
    """
    _count_up(ProviderErrorCount, type=call_type, provider=provider[:100], kind=kind)


def _count_up(model, **key) -> None:
    """Add one to the ``model`` row of ``key``, creating it on first use."""
    now = timezone.now()
    rows = model.objects.filter(**key)
    # Its own savepoint inside a caller's transaction, so a failure here undoes only this.
    with transaction.atomic():
        if rows.update(count=F("count") + 1, last_at=now):
            return
        try:
            with transaction.atomic():
                model.objects.create(**key, count=1, last_at=now)
        except IntegrityError:  # another worker created it first
            rows.update(count=F("count") + 1, last_at=now)


def count_provider_error(provider: str, exc: BaseException, call_type: str = Type.IMAGE) -> None:
    """Count a failed call to the image model (or LLM) ``provider``. Never raises: counting
    must not change the call's outcome."""
    try:
        kind = error_kind(exc)
        if kind is not None:
            increment(call_type, provider, kind)
    except Exception:
        logger.exception("Could not count a %s error of %s", type(exc).__name__, provider)


def on_provider_error(
    sender, call_type: str, provider: str, error: BaseException, **kwargs
) -> None:
    """Count a ``generation.signals.provider_error`` (connected in ``OpsConfig.ready``)."""
    count_provider_error(provider, error, call_type)


def on_heartbeat_crash(sender, heartbeat: str, error: BaseException, **kwargs) -> None:
    """Count a ``huey_tasks.signals.heartbeat_crashed`` (connected in ``OpsConfig.ready``).

    Never raises, as the heartbeat goes on whether it was counted or not."""
    try:
        _count_up(HeartbeatCrashCount, heartbeat=heartbeat[:20])
    except Exception:
        logger.exception("Could not count a crash of the %s heartbeat", heartbeat)
