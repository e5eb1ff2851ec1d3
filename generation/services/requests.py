"""A request's life: started, failed, cancelled, reopened and settled."""

from __future__ import annotations

import logging

from django.db import transaction
from django.db.models import Case, F, OuterRef, Value, When
from django.utils import timezone

from generation import costs
from generation.models import ExpansionCall, GenerationRequest
from generation.providers.base import TokenUsage
from generation.services.common import (
    NO_CLAIM,
    Call,
    Job,
    Req,
    close_calls_not_started,
    open_calls,
)

logger = logging.getLogger(__name__)


# Requests -------------------------------------------------------------------------------
def start_request(request: GenerationRequest) -> bool:
    """Move a draft without prompts, or a failed request, to queued. The caller enqueues
    expand_prompt.

    The estimate is taken again at today's price, because the spend is booked at it."""
    # The request starts only as the caller read it. Otherwise an edit of the count or the
    # model meanwhile would get an estimate (and a price per image) from the old values.
    # It never starts beside an expansion whose calls still run, which a click while the
    # prompts are being written would otherwise do.
    started = bool(
        GenerationRequest.objects.filter(
            pk=request.pk,
            status__in=[Req.DRAFT, Req.FAILED],
            jobs_total=0,
            count=request.count,
            image_model=request.image_model,
        )
        .exclude(open_calls(OuterRef("pk")))
        .update(
            status=Req.QUEUED,
            error="",
            finished_at=None,
            updated_at=timezone.now(),
            cost_estimate=costs.estimate(request.count, request.image_model),
            expansion_started_at=None,
            expansion_finished_at=None,
        )
    )
    # The calls of a failed expansion, which wrote nothing, make way for new ones.
    if started:
        ExpansionCall.objects.filter(request_id=request.pk).delete()
    return started


def add_llm_usage(request_id: int, usage: TokenUsage | None) -> None:
    if usage and (usage.input_tokens or usage.output_tokens):
        GenerationRequest.objects.filter(pk=request_id).update(
            llm_input_tokens=F("llm_input_tokens") + usage.input_tokens,
            llm_output_tokens=F("llm_output_tokens") + usage.output_tokens,
        )


def fail_request(
    request_id: int, reason: str, statuses=GenerationRequest.ACTIVE, not_after=None
) -> bool:
    """Fail an active request, or with ``not_after``, only if nothing has moved it since.
    Its LLM calls that have not started end with it, and a call under way ends itself at
    its next write, so that the request can be generated again once they have ended."""
    now = timezone.now()
    requests = GenerationRequest.objects.filter(pk=request_id, status__in=statuses)
    if not_after is not None:
        requests = requests.filter(updated_at__lte=not_after)
    with transaction.atomic():
        failed = bool(
            requests.update(status=Req.FAILED, error=reason, finished_at=now, updated_at=now)
        )
        if failed:
            close_calls_not_started(request_id, reason)
    return failed


def cancel_queued_expansion(request_id: int, reason: str) -> bool:
    """End a request cancelled, with ``reason``, when its queued expansion was revoked, so
    that maintenance does not take the missing message for a lost one and restart it. This
    works only while the request is queued, because an expansion under way cannot be
    revoked."""
    now = timezone.now()
    return bool(
        GenerationRequest.objects.filter(pk=request_id, status=Req.QUEUED).update(
            status=Req.CANCELLED, error=reason, finished_at=now, updated_at=now
        )
    )


def note_request_error(request_id: int, reason: str) -> None:
    """Record why an expansion will be tried again. A request that ended meanwhile (its
    deadline failed it, say) keeps its own reason."""
    GenerationRequest.objects.filter(pk=request_id, status__in=[Req.QUEUED, Req.EXPANDING]).update(
        error=reason
    )


def cancel_request(request: GenerationRequest) -> list[str]:
    """Cancel the request's pending, queued and retrying jobs, and return the task ids to
    revoke. Running jobs finish their current call and make no new attempt."""
    now = timezone.now()
    with transaction.atomic():
        # The request row is updated first, so that an expansion finishing now either sees
        # the cancel or has committed its jobs before this reads them.
        GenerationRequest.objects.filter(pk=request.pk).update(
            status=Req.CANCELLED, finished_at=now, updated_at=now
        )
        # Calls that have not started never start; those under way finish and write
        # nothing.
        ExpansionCall.objects.filter(
            request_id=request.pk, status__in=[Call.PENDING, Call.QUEUED]
        ).update(status=Call.CANCELLED, error="request cancelled")
        open_jobs = request.jobs.filter(status__in=[Job.PENDING, Job.QUEUED, Job.RETRYING])
        task_ids = [t for t in open_jobs.values_list("task_id", flat=True) if t]
        cancelled = open_jobs.update(
            status=Job.CANCELLED, finished_at=now, updated_at=now, **NO_CLAIM
        )
        GenerationRequest.objects.filter(pk=request.pk).update(
            jobs_cancelled=F("jobs_cancelled") + cancelled
        )
    return task_ids


def reopen_request(request_id: int) -> bool:
    """Put a failed request without prompts back to queued, so that its expansion can be
    enqueued again."""
    reopened = bool(
        GenerationRequest.objects.filter(pk=request_id, status=Req.FAILED, jobs_total=0)
        .exclude(open_calls(OuterRef("pk")))
        .update(status=Req.QUEUED, error="", finished_at=None, updated_at=timezone.now())
    )
    if reopened:
        ExpansionCall.objects.filter(request_id=request_id).delete()
    return reopened


def settle_request(request_id: int) -> None:
    """Mark a generating request terminal once every one of its jobs is."""
    GenerationRequest.objects.filter(
        pk=request_id,
        status=Req.GENERATING,
        jobs_total__gt=0,
        jobs_total__lte=F("jobs_succeeded") + F("jobs_failed") + F("jobs_cancelled"),
    ).exclude(open_calls(OuterRef("pk"))).update(  # Open calls may still write prompts.
        status=Case(
            # Fewer prompts than asked (a call failed for good) is not a complete request.
            When(
                jobs_succeeded=F("jobs_total"),
                jobs_total__gte=F("count"),
                then=Value(Req.COMPLETED),
            ),
            When(jobs_succeeded=0, then=Value(Req.FAILED)),
            default=Value(Req.COMPLETED_WITH_ERRORS),
        ),
        finished_at=timezone.now(),
    )


def settle_finished_requests() -> int:
    """Settle every generating request whose jobs are all finished. This is a safety net
    for maintenance."""
    ids = list(
        GenerationRequest.objects.filter(
            status=Req.GENERATING,
            jobs_total__gt=0,
            jobs_total__lte=F("jobs_succeeded") + F("jobs_failed") + F("jobs_cancelled"),
        )
        .exclude(open_calls(OuterRef("pk")))
        .values_list("pk", flat=True)
    )
    for request_id in ids:
        settle_request(request_id)
    return len(ids)
