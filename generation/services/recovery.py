"""Reconciliation: maintenance finds the open states that no message will move on, and
these functions find and repair them."""

from __future__ import annotations

import logging

from django.db import transaction
from django.db.models import Exists, F, OuterRef, Q
from django.utils import timezone

from generation.models import ExpansionCall, GenerationJob, GenerationRequest
from generation.services.common import (
    NO_CLAIM,
    Call,
    Job,
    Req,
    open_calls,
    unclaimed,
)

logger = logging.getLogger(__name__)


# Reconciliation: open states that no message will move on ---------------------------------
RECOVERABLE = [Job.QUEUED, Job.RETRYING, Job.RUNNING]


def lost_jobs(live: set[int], cutoff) -> list[tuple[int, int, str]]:
    """Return (job, recoveries, request status) for each job that has been queued,
    retrying or running since before ``cutoff``, with no live claim and no message in
    ``live``."""
    rows = (
        GenerationJob.objects.filter(status__in=RECOVERABLE, updated_at__lt=cutoff)
        .filter(unclaimed(timezone.now()))
        .values_list("pk", "recoveries", "request__status")
    )
    return [row for row in rows if row[0] not in live]


def recover_jobs(job_ids: list[int], cutoff) -> list[int]:
    """Put lost jobs back to pending, counting the recovery, under the same conditions
    that found them lost."""
    now = timezone.now()
    GenerationJob.objects.filter(
        pk__in=job_ids, status__in=RECOVERABLE, updated_at__lt=cutoff
    ).filter(unclaimed(now)).update(
        status=Job.PENDING, recoveries=F("recoveries") + 1, updated_at=now, **NO_CLAIM
    )
    return list(
        GenerationJob.objects.filter(pk__in=job_ids, status=Job.PENDING).values_list(
            "pk", flat=True
        )
    )


def stalled_requests(cutoff) -> list[GenerationRequest]:
    """Return the generating requests whose open jobs have all been pending since before
    ``cutoff``. Either their fan-out failed, or the editor has not sent their prompts yet."""
    jobs = GenerationJob.objects.filter(request=OuterRef("pk"))
    return list(
        GenerationRequest.objects.filter(status=Req.GENERATING)
        .filter(Exists(jobs.filter(status=Job.PENDING)))
        .exclude(Exists(jobs.filter(status__in=RECOVERABLE)))
        .exclude(Exists(jobs.filter(status=Job.PENDING, updated_at__gte=cutoff)))
        .only("pk", "auto_generate")
    )


def pending_job_ids(request_id: int) -> list[int]:
    return list(
        GenerationJob.objects.filter(request_id=request_id, status=Job.PENDING).values_list(
            "pk", flat=True
        )
    )


def pause_request(request_id: int) -> bool:
    """Put a generating request with only unsent prompts left back to draft, for the
    editor."""
    running = GenerationJob.objects.filter(request=OuterRef("pk"), status__in=RECOVERABLE)
    return bool(
        GenerationRequest.objects.filter(pk=request_id, status=Req.GENERATING)
        # The check is in the UPDATE itself, so that a click meanwhile wins.
        .exclude(Exists(running))
        .update(status=Req.DRAFT, updated_at=timezone.now())
    )


def lost_expansions(live: set[int], cutoff) -> list[tuple[int, int]]:
    """Return (request, recoveries) for each expansion that no message moves on. These are
    requests queued or expanding since before ``cutoff``, or generating with calls open
    and none of them touched since, with no expand_prompt or expand_call message in
    ``live``."""
    stale_calls = ExpansionCall.objects.filter(
        request=OuterRef("pk"), status__in=ExpansionCall.OPEN
    )
    rows = GenerationRequest.objects.filter(
        Q(status__in=[Req.QUEUED, Req.EXPANDING], updated_at__lt=cutoff)
        | Q(
            Exists(stale_calls),
            ~Exists(stale_calls.filter(updated_at__gte=cutoff)),
            status=Req.GENERATING,
        )
    ).values_list("pk", "recoveries")
    return [row for row in rows if row[0] not in live]


def ended_requests_with_lost_calls(live: set[int], cutoff) -> list[int]:
    """Requests that ended (failed, cancelled, completed, paused) while one of their LLM
    calls was running, in a worker that died since: no message runs the call, and nothing
    has touched it since ``cutoff``. Its open call would refuse Generate for ever."""
    ongoing = [Req.QUEUED, Req.EXPANDING, Req.GENERATING]
    stale_calls = ExpansionCall.objects.filter(
        request=OuterRef("pk"), status__in=ExpansionCall.OPEN
    )
    rows = (
        GenerationRequest.objects.exclude(status__in=ongoing)
        .filter(Exists(stale_calls), ~Exists(stale_calls.filter(updated_at__gte=cutoff)))
        .values_list("pk", flat=True)
    )
    return [pk for pk in rows if pk not in live]


def restart_expansion(request_id: int, cutoff) -> bool:
    """Restart a lost expansion. Its calls that were running, which no message runs, are
    pending again, and the caller enqueues expand_prompt, which runs the open calls."""
    with transaction.atomic():
        restarted = GenerationRequest.objects.filter(
            pk=request_id, status__in=[Req.QUEUED, Req.EXPANDING], updated_at__lt=cutoff
        ).update(status=Req.QUEUED, recoveries=F("recoveries") + 1, updated_at=timezone.now())
        restarted = restarted or GenerationRequest.objects.filter(
            pk=request_id, status=Req.GENERATING
        ).filter(open_calls(OuterRef("pk"))).update(
            recoveries=F("recoveries") + 1, updated_at=timezone.now()
        )
        if restarted:
            # A running call whose claim is still renewed has a live stream in some worker
            # (its message was lost to a stalled queue storage), so it is left to finish.
            now = timezone.now()
            ExpansionCall.objects.filter(request_id=request_id).filter(
                Q(status=Call.QUEUED)
                | Q(status=Call.RUNNING)
                & (Q(claim_expires_at__isnull=True) | Q(claim_expires_at__lt=now))
            ).update(
                status=Call.PENDING,
                token="",
                claim_message="",
                claim_expires_at=None,
                updated_at=now,
            )
    return bool(restarted)
