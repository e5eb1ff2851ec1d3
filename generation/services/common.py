"""What the services share: the statuses, the column values of "no claim" and "no provider
call", and the conditions they are used in."""

from __future__ import annotations

from django.db.models import Exists, Q

from generation.models import ExpansionCall, GenerationJob, GenerationRequest

Job = GenerationJob.Status
Req = GenerationRequest.Status
COUNTERS = {
    Job.SUCCEEDED: "jobs_succeeded",
    Job.FAILED: "jobs_failed",
    Job.CANCELLED: "jobs_cancelled",
}
SEED_RANGE = 2**31 - 1


NO_CLAIM = {"claim_token": "", "claim_expires_at": None, "claim_message": ""}


# Job claims outlive message leases, so that a heartbeat delayed by a queue-storage
# failover does not let another worker take a job whose call is still in flight.
CLAIM_LEASES = 2


def unclaimed(now) -> Q:
    return Q(claim_token="") | Q(claim_expires_at__lt=now)


NO_PROVIDER_CALL = {
    "provider_request_id": "",
    "provider_endpoint": "",
    "provider_submitted_at": None,
}


Call = ExpansionCall.Status
EXPANDING_STATES = [Req.QUEUED, Req.EXPANDING]


def open_calls(request_id) -> Exists:
    return Exists(ExpansionCall.objects.filter(request=request_id, status__in=ExpansionCall.OPEN))


def close_calls_not_started(request_id: int, reason: str) -> int:
    """End the request's LLM calls that have not started, as failed with ``reason``, so
    that they never start. A call under way ends itself at its next write, when it finds
    the request over."""
    return ExpansionCall.objects.filter(
        request_id=request_id, status__in=[Call.PENDING, Call.QUEUED]
    ).update(status=Call.FAILED, error=reason, token="")


def close_lost_calls(request_id: int, reason: str) -> int:
    """End every open LLM call of the request, which no live message runs, as failed with
    ``reason``. A call that still answers late has lost its token, so it writes nothing."""
    return ExpansionCall.objects.filter(
        request_id=request_id, status__in=ExpansionCall.OPEN
    ).update(status=Call.FAILED, error=reason, token="")


def lock_request(request_id: int) -> None:
    # Editor actions that move finished jobs back serialise on the request row. PostgreSQL
    # takes a row lock; SQLite's IMMEDIATE transactions serialise every writer anyway.
    list(GenerationRequest.objects.select_for_update().filter(pk=request_id).values("pk"))
