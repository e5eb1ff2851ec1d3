"""A streaming LLM call's prompts, written as jobs while the call runs: in groups, each
group one transaction and one fan-out, its tokens counted once."""

from __future__ import annotations

import logging
import random
import time
from collections.abc import Callable

from django.db import transaction
from django.db.models import Case, F, Value, When
from django.utils import timezone

from generation.models import ExpansionCall, GenerationJob, GenerationRequest
from generation.providers import get_image_model
from generation.providers.base import StreamAborted, TokenUsage
from generation.providers.errors import ProviderError
from generation.providers.prompting import normalise
from generation.retrying import DATABASE_ERRORS, paid_result_writes
from generation.services import requests as _requests
from generation.services.common import (
    SEED_RANGE,
    Call,
    Job,
    Req,
    lock_request,
)

logger = logging.getLogger(__name__)


# A streamed call's prompts are written in groups, to keep database writes few. The first
# prompt is written at once, because the first images wait for it, and then a group every
# WRITE_EVERY seconds or WRITE_PROMPTS prompts, whichever comes first. Each group is a
# transaction and a fan-out. With 8 calls in parallel, groups every 0.4 s cost the images
# more than the prompts gain from being written sooner (a 500-image benchmark took 25 s
# against 21 s).
WRITE_EVERY = 1.0
WRITE_PROMPTS = 12
# Sooner than that when the images would otherwise wait: while fewer of the request's jobs
# are queued than the image model has slots, a call writes what it has every HUNGRY_EVERY
# seconds. Early in a big request every slot is idle and each prompt is an image started
# sooner; later the queue is full and the groups stay large.
HUNGRY_EVERY = 0.2


class CallWriter:
    """Writes a call's prompts as jobs in small groups as they stream in. When a group
    finds the request cancelled, or the call taken by another attempt, StreamAborted ends
    the stream, because nothing more from it is wanted and no more tokens should be paid
    for."""

    def __init__(
        self, call: ExpansionCall, token: str, on_written: Callable[[list[int]], None] | None
    ) -> None:
        self.call, self.token, self.on_written = call, token, on_written
        self.buffer: list = []
        self.groups = 0
        self.last_write = time.monotonic()
        # The request's prompts seen so far (normalised), and how many jobs they cover.
        # Each group reads only the jobs written since, because other calls write beside
        # this one.
        self.seen: set[str] = set()
        self.known = 0
        self.slots: int | None = None  # the image model's concurrency, read when needed

    def add(self, prompts: list) -> None:
        self.buffer.extend(prompts)
        waited = time.monotonic() - self.last_write
        if (
            not self.groups
            or len(self.buffer) >= WRITE_PROMPTS
            or waited >= WRITE_EVERY
            or (waited >= HUNGRY_EVERY and self._images_starving())
        ):
            self.flush()

    def _images_starving(self) -> bool:
        """Fewer of the request's jobs wait in the queue than the image model has slots."""
        request = self.call.request
        if not request.auto_generate:
            return False  # drafts: no image waits for these prompts
        if self.slots is None:
            try:
                self.slots = get_image_model(request.image_model).concurrency
            except ProviderError:  # the model left the settings: its jobs will fail alone
                self.slots = 0
        try:
            queued = GenerationJob.objects.filter(request_id=request.pk, status=Job.QUEUED)
            return queued.count() < self.slots
        except DATABASE_ERRORS:
            return False  # only a hint: the prompts wait for the next group

    def flush(self) -> None:
        if self.buffer:
            self._write(done=False, usage=None)

    def finish(self, usage: TokenUsage) -> None:
        self._write(done=True, usage=usage)

    def _write(self, *, done: bool, usage: TokenUsage | None) -> None:
        prompts, self.buffer = self.buffer, []
        job_ids: list[int] = []
        for attempt in paid_result_writes():  # The prompts are paid for.
            with attempt:
                job_ids = _write_prompts(self, prompts, done, usage)
        self.groups += 1
        self.last_write = time.monotonic()
        if job_ids and self.on_written:
            self.on_written(job_ids)


def count_call_tokens(call_id: int, usage: TokenUsage | None) -> None:
    if not usage or not (usage.input_tokens or usage.output_tokens):
        return
    with transaction.atomic():
        request_id = (
            ExpansionCall.objects.filter(pk=call_id).values_list("request_id", flat=True).first()
        )
        _requests.add_llm_usage(request_id, usage)
        ExpansionCall.objects.filter(pk=call_id).update(
            input_tokens=F("input_tokens") + usage.input_tokens,
            output_tokens=F("output_tokens") + usage.output_tokens,
        )


def _write_prompts(
    writer: CallWriter, prompts: list, done: bool, usage: TokenUsage | None
) -> list[int]:
    """Write one group of a call's prompts as jobs in one transaction, and with ``done``
    mark the call done with its tokens. Return the new jobs to generate now
    (auto-generate). Raise StreamAborted when the request ended or another attempt holds
    the call."""
    call, token = writer.call, writer.token
    if (
        done
        and ExpansionCall.objects.filter(
            pk=call.pk, token=token, status__in=[Call.DONE, Call.CANCELLED]
        ).exists()
    ):
        return []  # An attempt whose commit raised but went through wrote it.
    request = call.request
    usage = usage or TokenUsage()
    tokens = dict(
        input_tokens=F("input_tokens") + usage.input_tokens,
        output_tokens=F("output_tokens") + usage.output_tokens,
    )
    aborted = None
    with transaction.atomic():
        # The request row is locked first, in the lock order of every writer. A cancel that
        # committed meanwhile wins, and one that comes later waits for this transaction.
        lock_request(request.pk)
        status, written = (
            GenerationRequest.objects.filter(pk=request.pk)
            .values_list("status", "jobs_total")
            .first()
        )
        # The tokens were spent, so they are counted even when a cancel won or the call
        # timed out.
        _requests.add_llm_usage(request.pk, usage)
        mine = ExpansionCall.objects.filter(pk=call.pk, status=Call.RUNNING, token=token)
        if status not in (Req.EXPANDING, Req.GENERATING):
            if not mine.update(status=Call.CANCELLED, error=f"request {status}", **tokens):
                ExpansionCall.objects.filter(pk=call.pk).update(**tokens)
            aborted = StreamAborted(f"request {status}")
        elif not mine.exists():
            # The call timed out and was handed to another attempt, so nothing is written.
            ExpansionCall.objects.filter(pk=call.pk).update(**tokens)
            aborted = StreamAborted("another attempt holds the call")
        else:
            jobs, seen, fresh = _new_jobs(writer, request, prompts, written)
            now = timezone.now()
            moves = {}
            if fresh and request.auto_generate:
                moves["status"] = Case(
                    When(status=Req.EXPANDING, then=Value(Req.GENERATING)), default=F("status")
                )
            GenerationRequest.objects.filter(pk=request.pk).update(
                jobs_total=F("jobs_total") + len(fresh), updated_at=now, **moves
            )
            changes = dict(
                prompts_written=F("prompts_written") + len(fresh), updated_at=now, **tokens
            )
            if done:
                changes.update(status=Call.DONE, error="")
            mine.update(**changes)
    if aborted:
        raise aborted  # Raised after the commit, so the cancel and the tokens stay.
    # The group is committed, so this attempt's cache follows it. A retried transaction
    # starts again above.
    writer.seen = seen
    writer.known = written + len(fresh)
    return [job.pk for job in jobs] if request.auto_generate else []


def _new_jobs(writer: CallWriter, request: GenerationRequest, prompts: list, written: int):
    """Make jobs of the group's prompts that are not already in the request, numbered on
    from ``written``. The caller holds the request's lock."""
    # Prompts are distinct across every call of the request, which run in parallel. Indexes
    # follow on from those written, so they stay 0..N-1 whatever order calls write in.
    if written > writer.known:
        writer.seen.update(
            normalise(p)
            for p in GenerationJob.objects.filter(
                request_id=request.pk, index__gte=writer.known
            ).values_list("prompt", flat=True)
        )
    room = max(0, request.count - written)
    seen = set(writer.seen)
    fresh = []
    for item in prompts:
        key = normalise(item.prompt)
        if key not in seen and len(fresh) < room:
            seen.add(key)
            fresh.append(item)
    jobs = GenerationJob.objects.bulk_create(
        GenerationJob(
            request=request,
            index=written + i,
            prompt=item.prompt,
            alt_text=item.alt_text,
            seed=random.randint(0, SEED_RANGE),
        )
        for i, item in enumerate(fresh)
    )
    return jobs, seen, fresh
