"""Signals the pipeline sends for whoever listens (the metrics in ``ops`` count them).

The pipeline does not know who listens: ``ops`` sits at the edge and imports the pipeline,
never the other way round. Sending never raises, so a failing listener cannot change a
call's outcome.
"""

from __future__ import annotations

import logging

from django.dispatch import Signal

logger = logging.getLogger(__name__)

# A provider call failed. Arguments: call_type ("image" or "llm"), provider (its
# configured name), error (the ProviderError).
provider_error = Signal()


def report_provider_error(provider: str, error: BaseException, call_type: str = "image") -> None:
    """Tell the listeners that a call to ``provider`` failed with ``error``."""
    for receiver, result in provider_error.send_robust(
        sender=None, call_type=call_type, provider=provider, error=error
    ):
        if isinstance(result, Exception):
            logger.error("%s could not take a provider error: %r", receiver, result)


def report_llm_error(request_id: int, error: BaseException) -> None:
    """A failed LLM call of a request's expansion, under the request's LLM name."""
    from generation.models import GenerationRequest

    try:
        name = GenerationRequest.objects.filter(pk=request_id).values_list("llm", flat=True)
        provider = name.first() or "unknown"
    except Exception:
        logger.exception("Could not look up the LLM of request %s", request_id)
        return
    report_provider_error(provider, error, "llm")
