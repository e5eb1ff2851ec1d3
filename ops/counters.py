"""Provider errors counted for the metrics: one atomic UPDATE per failed provider call.

Called from the one place each kind of call is made (``huey_tasks.tasks``: the image
model's call in ``generate_image``, the LLM's in ``expand_prompt``). Counting never changes
what happens to the call: any error here is logged and swallowed.
"""

from __future__ import annotations

import logging

from django.db import IntegrityError, transaction
from django.db.models import F
from django.utils import timezone

from generation.models import GenerationRequest
from generation.providers.errors import (
    NotCalled,
    PermanentProviderError,
    ProviderError,
    TransientProviderError,
)
from ops.models import ProviderErrorCount

logger = logging.getLogger(__name__)
Kind = ProviderErrorCount.Kind
Type = ProviderErrorCount.Type


def error_kind(exc: ProviderError) -> str | None:
    """rate_limited (a transient 429), transient, permanent; None for anything else."""
    if isinstance(exc, NotCalled):  # refused before any call: not the provider's error
        return None
    if isinstance(exc, TransientProviderError):
        return Kind.RATE_LIMITED if getattr(exc, "rate_limited", False) else Kind.TRANSIENT
    if isinstance(exc, PermanentProviderError):
        return Kind.PERMANENT
    return None


def increment(call_type: str, provider: str, kind: str) -> None:
    """Add one to (call_type, provider, kind), creating the row on first use; safe under
    concurrency.

    UPDATE first (the common case: one statement). A missing row is inserted in a
    savepoint; if a concurrent first insert won, the UPDATE is repeated.
    """
    provider = provider[:100]
    now = timezone.now()
    rows = ProviderErrorCount.objects.filter(type=call_type, provider=provider, kind=kind)
    # Its own savepoint inside a caller's transaction: a failure here undoes only this.
    with transaction.atomic():
        if rows.update(count=F("count") + 1, last_at=now):
            return
        try:
            with transaction.atomic():
                ProviderErrorCount.objects.create(
                    type=call_type, provider=provider, kind=kind, count=1, last_at=now
                )
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


def count_llm_error(request_id: int, exc: BaseException) -> None:
    """Count a failed LLM call of a request's expansion under the request's LLM name.

    An LLM that is not configured (``UnknownProvider``) made no call: not counted.
    """
    if isinstance(exc, NotCalled):
        return
    try:
        name = GenerationRequest.objects.filter(pk=request_id).values_list("llm", flat=True)
        provider = name.first() or "unknown"
    except Exception:
        logger.exception("Could not count an LLM error of request %s", request_id)
        return
    count_provider_error(provider, exc, Type.LLM)
