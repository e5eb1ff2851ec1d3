"""Give every open job and request a way to a final state.

Dead letters settle their job or request the moment they are buried (see tasks.py); this
is the periodic safety net for everything else that could be left open: a message lost
between a database write and the queue write, a dead-letter settlement that failed, a
fan-out that ran out of retries, an expansion whose message vanished. It compares the
database with one snapshot of the queue storage, and acts only on states older than a
grace period and without a live claim, with the same conditional updates the pipeline
uses, so it never races a worker that is about to move them on.
"""

from __future__ import annotations

import datetime
import logging
from collections import Counter
from collections.abc import Callable

from django.conf import settings
from django.utils import timezone

from generation import services
from generation.models import GenerationJob, GenerationRequest

logger = logging.getLogger(__name__)

DEFAULT_GRACE = 120.0  # seconds a state must be old before it counts as stuck
DEFAULT_MAX_RECOVERIES = 3
Job = GenerationJob.Status


def _times(deliveries: int) -> str:
    return "once" if deliveries == 1 else f"{deliveries} times"


def dead_job_reason(deliveries: int) -> str:
    return f"the worker running this job stopped {_times(deliveries)}; see the job monitor"


def dead_request_reason(deliveries: int) -> str:
    return (
        f"the worker writing this request's prompts stopped {_times(deliveries)}; "
        "see the job monitor"
    )


def settle_dead_letter(name: str, target: int, letter, lease_seconds: float) -> bool:
    """Fail what a buried message was for, unless something moved it on since (an
    editor's retry, a requeue) or a live worker holds it."""
    if name == "generate_image":
        # Its worker stopped, so the claim it took need not run out first. A live holder
        # renews its claim every third of a lease, so its claim expires later than this.
        stale_by = timezone.now() + datetime.timedelta(
            seconds=lease_seconds * (services.CLAIM_LEASES - 0.5)
        )
        return services.finish_abandoned_job(
            target,
            dead_job_reason(letter.deliveries),
            claim_message=letter.message_id,
            stale_by=stale_by,
            not_after=letter.died_at,
        )
    if name == "expand_prompt":
        return services.fail_request(
            target,
            dead_request_reason(letter.deliveries),
            [GenerationRequest.Status.QUEUED, GenerationRequest.Status.EXPANDING],
            not_after=letter.died_at,
        )
    return False


def _targets(huey, messages: list[bytes]) -> tuple[set[int], set[int]]:
    """Job ids of generate_image and request ids of expand_prompt and expand_call
    messages."""
    jobs, requests = set(), set()
    for data in messages:
        try:
            task = huey.deserialize_task(data)
        except Exception:
            continue
        name = task.name.rsplit(".", 1)[-1]
        target = task.args[0] if task.args else None
        if name == "generate_image":
            jobs.add(target)
        elif name == "expand_prompt":
            requests.add(target)
        elif name == "expand_call" and len(task.args) > 1:
            requests.add(task.args[1])  # args (call, request); the request's expansion is live
    return jobs, requests


def reconcile(huey, queue_jobs: Callable, expand_prompt, grace: float | None = None) -> dict:
    """Settle or restart whatever no message will move on; returns what it did."""
    options = settings.KARASU.get("RECONCILE", {})
    grace = options.get("GRACE_SECONDS", DEFAULT_GRACE) if grace is None else grace
    max_recoveries = options.get("MAX_RECOVERIES", DEFAULT_MAX_RECOVERIES)
    cutoff = timezone.now() - datetime.timedelta(seconds=grace)
    counts: Counter = Counter()

    live_jobs, live_requests = _targets(huey, huey.storage.all_messages())
    letters = huey.storage.dead_letters()

    # Dead letters whose settlement at burial did not happen (e.g. the database was down).
    for letter in letters:
        try:
            task = huey.deserialize_task(letter.data)
        except Exception:
            continue
        name, target = task.name.rsplit(".", 1)[-1], task.args[0] if task.args else None
        if target is not None and settle_dead_letter(
            name, target, letter, huey.storage.lease_seconds
        ):
            counts["jobs_failed" if name == "generate_image" else "requests_failed"] += 1

    # Jobs queued, retrying or running that no message and no live claim will finish.
    retry, give_up = [], []
    for job_id, recoveries, request_status in services.lost_jobs(live_jobs, cutoff):
        if request_status == GenerationRequest.Status.CANCELLED:
            if services.finish_unclaimed_job(job_id, Job.CANCELLED, error="request cancelled"):
                counts["jobs_cancelled"] += 1
        elif recoveries >= max_recoveries:
            give_up.append(job_id)
        else:
            retry.append(job_id)
    for job_id in give_up:
        reason = (
            f"lost: its task left the queue unfinished {max_recoveries + 1} times; "
            "see the job monitor"
        )
        if services.finish_unclaimed_job(job_id, Job.FAILED, error=reason):
            counts["jobs_failed"] += 1
    if retry:
        counts["jobs_requeued"] += len(queue_jobs(services.recover_jobs(retry, cutoff)))

    # Generating requests whose only open jobs are pending.
    for request in services.stalled_requests(cutoff):
        if request.auto_generate:
            counts["jobs_requeued"] += len(queue_jobs(services.pending_job_ids(request.pk)))
        elif services.pause_request(request.pk):
            counts["requests_paused"] += 1

    # Requests queued or expanding whose expand_prompt message is gone.
    for request_id, recoveries in services.lost_expansions(live_requests, cutoff):
        if recoveries >= max_recoveries:
            reason = "lost: its expansion left the queue unfinished; see the job monitor"
            if services.fail_request(
                request_id,
                reason,
                [GenerationRequest.Status.QUEUED, GenerationRequest.Status.EXPANDING],
            ) or services.give_up_lost_calls(request_id, reason):
                counts["requests_failed"] += 1
        elif services.restart_expansion(request_id, cutoff):
            expand_prompt(request_id)
            counts["requests_restarted"] += 1

    # Requests that ended while a call of theirs ran in a worker that died since.
    for request_id in services.ended_requests_with_lost_calls(live_requests, cutoff):
        services.close_lost_calls(
            request_id, "lost: the request ended while this call ran; see the job monitor"
        )

    counts["requests_settled"] += services.settle_finished_requests()
    if any(counts.values()):
        logger.warning("Maintenance repaired stuck states: %s", dict(counts))
    return {
        key: counts[key]
        for key in (
            "jobs_requeued",
            "jobs_failed",
            "jobs_cancelled",
            "requests_restarted",
            "requests_failed",
            "requests_paused",
            "requests_settled",
        )
    }
