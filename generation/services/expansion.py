"""Expansion: a request's prompts, written by LLM calls that run in parallel.

Each call is an ``ExpansionCall`` row, claimed by the task that runs it. Its prompts become
jobs as they arrive, and a failed call is retried alone for the prompts it had not written."""

from __future__ import annotations

import logging
import uuid
from collections.abc import Callable
from datetime import timedelta

from django.db import transaction
from django.db.models import Case, F, Q, Value, When
from django.db.models.functions import Coalesce
from django.utils import timezone

from generation.models import ExpansionCall, GenerationJob, GenerationRequest
from generation.providers import (
    get_llm,
)
from generation.providers.base import StreamAborted, TokenUsage
from generation.providers.errors import NotCalled, ProviderError
from generation.providers.prompting import angle_for
from generation.retrying import paid_result_writes
from generation.services import provider_calls as _provider_calls
from generation.services import recovery as _recovery
from generation.services import requests as _requests
from generation.services.common import (
    EXPANDING_STATES,
    Call,
    Job,
    Req,
    close_lost_calls,
    lock_request,
)
from generation.services.prompts import CallWriter, count_call_tokens

logger = logging.getLogger(__name__)


# Expansion: the request's prompts, written by LLM calls that run in parallel -------------
def plan_expansion(request_id: int) -> list[int]:
    """Start or resume a request's expansion, and return the ids of its calls still to run.

    The first run moves the request to expanding and plans its calls (a small first call,
    then batches), each to run as its own task. A redelivery or a restart returns the calls
    that have not finished, and a request whose prompts are all written returns none.
    """
    now = timezone.now()
    GenerationRequest.objects.filter(pk=request_id, status__in=EXPANDING_STATES).update(
        status=Req.EXPANDING,
        updated_at=now,
        expansion_started_at=Coalesce("expansion_started_at", Value(now)),
    )
    request = GenerationRequest.objects.filter(pk=request_id).first()
    if (
        request is None
        or request.status in GenerationRequest.TERMINAL
        or (request.status == Req.DRAFT)
    ):
        return []
    with transaction.atomic():
        lock_request(request_id)
        calls = ExpansionCall.objects.filter(request_id=request_id)
        if not calls.exists():
            # Older versions wrote prompts without calls; those prompts are kept.
            if request.jobs_total:
                return []
            # A deleted source image fails the request before any prompt is paid for.
            if request.source_deleted:
                raise NotCalled(_provider_calls.SOURCE_DELETED)
            ExpansionCall.objects.bulk_create(
                ExpansionCall(request_id=request_id, number=number, size=size)
                for number, size in enumerate(get_llm(request.llm).plan_calls(request.count))
            )
        has_open = calls.filter(status__in=ExpansionCall.OPEN).exists()
    if not has_open:
        # An interrupted finish (or its top-ups) is completed.
        return _after_calls(request_id)
    llm = get_llm(request.llm)
    in_flight = calls.filter(status__in=[Call.QUEUED, Call.RUNNING]).count()
    return take_next_calls(request_id, max(0, llm.concurrency - in_flight))


def take_next_calls(request_id: int, n: int) -> list[int]:
    """Mark up to ``n`` of the request's calls that are not yet enqueued as queued, first
    planned first, and return them. Each is taken by one conditional UPDATE, so that two
    callers never take the same call.

    Only as many calls are enqueued as can run, and a finished call's task enqueues the
    next. So no task holds a worker thread while it waits for a slot, and no slot stays
    idle for a task's re-scheduling delay."""
    taken = []
    if n <= 0:
        return taken
    # Every pending call is a candidate. Callers that finish together race for the first
    # ones, and a loser takes the next rather than nothing.
    candidates = (
        ExpansionCall.objects.filter(request_id=request_id, status=Call.PENDING)
        .order_by("number")
        .values_list("pk", flat=True)
    )
    for call_id in list(candidates):
        if len(taken) >= n:
            break
        if ExpansionCall.objects.filter(pk=call_id, status=Call.PENDING).update(
            status=Call.QUEUED, updated_at=timezone.now()
        ):
            taken.append(call_id)
    return taken


def untake_calls(call_ids: list[int]) -> None:
    """Calls taken for tasks that could not be enqueued (the queue storage failed): pending
    again, so that the next caller takes them instead of counting them in flight."""
    ExpansionCall.objects.filter(pk__in=call_ids, status=Call.QUEUED).update(
        status=Call.PENDING, updated_at=timezone.now()
    )


def pending_jobs_to_generate(request_id: int) -> list[int]:
    """The request's pending jobs, if they are to be generated now (auto-generate)."""
    if not GenerationRequest.objects.filter(
        pk=request_id, status=Req.GENERATING, auto_generate=True
    ).exists():
        return []  # It is cancelled, missing or failed, or its prompts await review.
    return _recovery.pending_job_ids(request_id)


class CallBusy(Exception):
    """Another attempt holds a live claim on this call, so its stream may be under way."""


# A call claimed outside a worker (``expand_request`` in a shell) has no heartbeat to renew
# its claim, so it holds the call for this long.
LOCAL_CLAIM_SECONDS = 300.0


def claim_call(
    call_id: int, message_id: str = "", seconds: float = LOCAL_CLAIM_SECONDS
) -> str | None:
    """Claim an open call for one attempt, for ``seconds`` unless renewed, and return its
    token. Return None when the call has nothing to do, because it finished or its request
    ended (the call is then cancelled).

    It raises CallBusy while another attempt's claim is live, whichever message asks: a
    duplicate, or the call's own message delivered again because its lease ran out while
    the worker stalled. A running call is taken over only once its claim has expired,
    since the stream under way would otherwise be paid twice.
    """
    call = ExpansionCall.objects.filter(pk=call_id).select_related("request").first()
    if call is None or call.status not in ExpansionCall.OPEN:
        return None
    if call.request.status not in (Req.EXPANDING, Req.GENERATING):
        ExpansionCall.objects.filter(pk=call_id, status__in=ExpansionCall.OPEN).update(
            status=Call.CANCELLED, error=f"request {call.request.status}", token=""
        )
        return None
    token = uuid.uuid4().hex
    now = timezone.now()
    expired = Q(claim_expires_at__isnull=True) | Q(claim_expires_at__lt=now)
    takeable = Q(status__in=[Call.PENDING, Call.QUEUED]) | (Q(status=Call.RUNNING) & expired)
    if (
        not ExpansionCall.objects.filter(pk=call_id)
        .filter(takeable)
        .update(
            status=Call.RUNNING,
            token=token,
            claim_message=message_id,
            claim_expires_at=now + timedelta(seconds=seconds),
            attempts=F("attempts") + 1,
            updated_at=now,
        )
    ):
        if ExpansionCall.objects.filter(pk=call_id, status__in=ExpansionCall.OPEN).exists():
            raise CallBusy(f"expansion call {call_id} is run by another attempt")
        return None  # It finished meanwhile.
    return token


def extend_call_claims(claims: list[tuple[int, str]], seconds: float) -> set[tuple[int, str]]:
    """Push the expiry of the held (call, token) claims forward, and return those that
    another attempt holds now. A claim this worker gave back itself is not counted as
    lost."""
    tokens = [token for _, token in claims]
    now = timezone.now()
    # updated_at too: maintenance takes a call untouched since its grace for a lost one.
    ExpansionCall.objects.filter(token__in=tokens, status=Call.RUNNING).update(
        claim_expires_at=now + timedelta(seconds=seconds), updated_at=now
    )
    current = dict(
        ExpansionCall.objects.filter(pk__in=[call_id for call_id, _ in claims]).values_list(
            "pk", "token"
        )
    )
    return {
        (call_id, token) for call_id, token in claims if current.get(call_id, "") not in ("", token)
    }


def release_call(call_id: int, token: str) -> bool:
    """Give a claimed call back before its LLM call is made (there was no slot, or a rate
    limit). The attempt is returned and the call is pending again."""
    return bool(
        ExpansionCall.objects.filter(pk=call_id, status=Call.RUNNING, token=token).update(
            status=Call.QUEUED,
            token="",
            claim_message="",
            claim_expires_at=None,
            attempts=F("attempts") - 1,
        )
    )


def call_attempts(call_id: int) -> int:
    return ExpansionCall.objects.filter(pk=call_id).values_list("attempts", flat=True).first() or 0


def run_call(
    call_id: int, token: str, on_written: Callable[[list[int]], None] | None = None
) -> list[int]:
    """Make the claimed call's LLM call, writing its prompts as jobs as they stream in, and
    return the ids of the calls to run next (top-ups, when duplicates left the request
    short). With auto-generate, ``on_written`` gets the ids of each group's jobs to
    generate now.

    Provider errors propagate, with the call's tokens counted and the prompts that came
    before the error written, so that a retry asks only for the rest. The last group is
    written in one transaction with the call marked done, so that its prompts and tokens
    count once, whatever happens next.
    """
    call = ExpansionCall.objects.select_related("request").get(pk=call_id)
    request = call.request
    writer = CallWriter(call, token, on_written)
    left = call.size - call.prompts_written  # An earlier attempt wrote the others.
    if left <= 0:
        writer.finish(TokenUsage())
        return next_calls(request.pk)
    recent = list(
        GenerationJob.objects.filter(request_id=request.pk)
        .order_by("-index")
        .values_list("prompt", flat=True)[:20]
    )
    try:
        usage = get_llm(request.llm).stream_call(
            request.theme,
            left,
            brief=request.brief,
            style=request.style,
            source=_provider_calls.source_description(request.source_image),
            angle=angle_for(call.number),
            avoid=recent[::-1],
            on_prompts=writer.add,
        )
    except StreamAborted as exc:
        # The request was cancelled, or the call was handed to another attempt.
        for attempt in paid_result_writes():
            with attempt:
                count_call_tokens(call_id, exc.usage)
        return []
    except ProviderError as exc:
        # The answer was unusable or cut off. It is paid for all the same, and the prompts
        # that came before the error are kept.
        try:
            writer.flush()
        except StreamAborted:
            pass
        for attempt in paid_result_writes():
            with attempt:
                count_call_tokens(call_id, exc.usage)
        raise
    writer.finish(usage)
    return next_calls(request.pk)


def next_calls(request_id: int) -> list[int]:
    """After a call ended, return the next call to enqueue in its place, or top-ups, or
    none."""
    return take_next_calls(request_id, 1) or _after_calls(request_id)


def fail_call(call_id: int, token: str | None, reason: str) -> list[int]:
    """Fail a call for good (a permanent error, its retries used up, its deadline) and
    return the calls to run next. The request goes on with the prompts of its other
    calls."""
    calls = ExpansionCall.objects.filter(pk=call_id, status__in=ExpansionCall.OPEN)
    if token:
        calls = calls.filter(token=token)
    request_id = calls.values_list("request_id", flat=True).first()
    if request_id is None or not calls.update(status=Call.FAILED, error=reason, token=""):
        return []
    return next_calls(request_id)


def retry_call_later(call_id: int, token: str, reason: str) -> bool:
    """Put the call back for its next attempt after a transient failure."""
    note = ExpansionCall.objects.filter(pk=call_id, status=Call.RUNNING, token=token)
    request_id = note.values_list("request_id", flat=True).first()
    if request_id is None:
        return False
    _requests.note_request_error(request_id, f"{reason} (will retry)")
    # The call's own message retries it.
    return bool(note.update(status=Call.QUEUED, token="", claim_expires_at=None, error=reason))


def requeue_timed_out_call(call_id: int, reason: str, max_attempts: int) -> list[int]:
    """Queue a call that is past its deadline again for another attempt, or fail it when
    its attempts are used up. Return the calls to enqueue now (itself, or the next ones).
    The late answer of the timed-out attempt writes nothing."""
    calls = ExpansionCall.objects.filter(pk=call_id, status=Call.RUNNING)
    if calls.filter(attempts__lt=max_attempts).update(
        status=Call.QUEUED,
        token="",
        claim_message="",
        claim_expires_at=None,
        error=reason,
        updated_at=timezone.now(),
    ):
        return [call_id]
    if ExpansionCall.objects.filter(pk=call_id, status=Call.QUEUED).exists():
        return []  # its attempt had just scheduled its own retry: that message runs it
    return fail_call(call_id, None, reason)


def _after_calls(request_id: int) -> list[int]:
    """Once no call of the request is open, top up a shortfall left by duplicates or end
    the expansion. Return the ids of new calls to run."""
    with transaction.atomic():
        lock_request(request_id)
        request = GenerationRequest.objects.filter(pk=request_id).first()
        calls = ExpansionCall.objects.filter(request_id=request_id)
        if request is None or calls.filter(status__in=ExpansionCall.OPEN).exists():
            return []
        if request.status not in (Req.EXPANDING, Req.GENERATING):
            return []  # It was cancelled or failed meanwhile.
        missing = request.count - request.jobs_total
        failed = list(calls.filter(status=Call.FAILED).values_list("error", flat=True))
        llm = get_llm(request.llm)
        last_round = max(calls.values_list("round", flat=True), default=0)
        if missing > 0 and not failed and last_round < llm.max_rounds_extra:
            # Parallel calls wrote duplicates, so ask again, each call on a new angle.
            start = max(calls.values_list("number", flat=True)) + 1
            sizes = llm.plan_calls(missing)
            ExpansionCall.objects.bulk_create(
                ExpansionCall(
                    request_id=request_id, number=start + i, size=size, round=last_round + 1
                )
                for i, size in enumerate(sizes)
            )
            return take_next_calls(request_id, llm.concurrency)
        _finish_expansion(request, missing, failed)
    _requests.settle_request(request_id)
    return []


def give_up_lost_calls(request_id: int, reason: str) -> bool:
    """Fail a generating request's lost calls with ``reason`` when maintenance gives up on
    them. The expansion ends with the prompts written, so that the request can settle."""
    if not close_lost_calls(request_id, reason):
        return False
    _after_calls(request_id)
    return True


def _finish_expansion(request: GenerationRequest, missing: int, failed: list[str]) -> None:
    """End the expansion with the prompts written, once every call is over. It says why
    when they are fewer than asked (a call failed for good, or the LLM kept repeating
    itself)."""
    now = timezone.now()
    reason = ""
    if missing > 0:
        why = failed[0] if failed else f"{request.llm}: too many duplicate prompts"
        reason = f"wrote {request.jobs_total} of {request.count} prompts: {why}"
    if request.jobs_total == 0:
        GenerationRequest.objects.filter(pk=request.pk, status=Req.EXPANDING).update(
            status=Req.FAILED,
            error=failed[0] if failed else reason,
            finished_at=now,
            updated_at=now,
            expansion_finished_at=now,
        )
        return
    # Without auto-generate the request is a draft, unless the editor already generated
    # some of its prompts while the calls wrote the rest: then it is generating, and settles
    # like any other once its jobs end.
    started = GenerationJob.objects.filter(request_id=request.pk).exclude(status=Job.PENDING)
    next_status = Req.GENERATING if request.auto_generate or started.exists() else Req.DRAFT
    GenerationRequest.objects.filter(pk=request.pk).update(
        status=Case(When(status=Req.EXPANDING, then=Value(next_status)), default=F("status")),
        error=reason,
        updated_at=now,
        expansion_finished_at=now,
    )


def expand_request(request_id: int) -> list[int]:
    """Run the whole expansion in this process, one call after another, for the shell,
    scripts and tests. Workers run the same calls in parallel as tasks. Return the pending
    jobs to generate now. A provider error of a call is recorded (the call is failed and
    its tokens counted) and raised."""
    calls = plan_expansion(request_id)
    while calls:
        call_id = calls.pop(0)
        token = claim_call(call_id)
        if token is None:
            continue
        try:
            calls.extend(run_call(call_id, token))
        except ProviderError as exc:
            fail_call(call_id, token, exc.reason)
            raise
    return pending_jobs_to_generate(request_id)
