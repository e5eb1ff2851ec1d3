"""Every expansion ends: failed requests can be generated again, lost calls are given up,
and an expansion under way is budgeted at its full count."""

import datetime
from decimal import Decimal

import pytest
from django.utils import timezone

from generation import costs, services
from generation.models import ExpansionCall, GenerationJob, GenerationRequest
from generation.tasks import maintenance
from tests.support.factories import make_request

pytestmark = [pytest.mark.django_db(transaction=True), pytest.mark.usefixtures("collections")]
Req = GenerationRequest.Status
Call = ExpansionCall.Status
KYOTO_DUSK = "京都の烏、夕暮れ"


def test_a_request_failed_mid_expansion_can_be_generated_again(demo):
    request = make_request(with_jobs=False, theme=KYOTO_DUSK, count=300, status=Req.QUEUED)
    services.plan_expansion(request.pk)  # the calls planned; the first ones queued
    assert ExpansionCall.objects.filter(request=request, status=Call.PENDING).exists()

    assert services.fail_request(request.pk, "infrastructure error: the database went away")
    assert not ExpansionCall.objects.filter(request=request, status__in=ExpansionCall.OPEN)
    request.refresh_from_db()
    assert services.start_request(request)  # not refused for calls that will never run
    request.refresh_from_db()
    assert request.status == Req.QUEUED


def test_maintenance_gives_up_a_generating_requests_lost_calls_and_settles_it(demo, settings):
    settings.KARASU["RECONCILE"] = {"GRACE_SECONDS": 0, "MAX_RECOVERIES": 3}
    long_ago = timezone.now() - datetime.timedelta(hours=1)
    request = make_request(
        with_jobs=False,
        theme=KYOTO_DUSK,
        count=8,
        status=Req.GENERATING,
        jobs_total=4,
        jobs_succeeded=4,
        recoveries=3,
        expansion_started_at=long_ago,
    )
    GenerationJob.objects.bulk_create(
        GenerationJob(request=request, index=i, prompt=f"烏 number {i}", status="succeeded")
        for i in range(4)
    )
    ExpansionCall.objects.create(
        request=request, number=0, size=4, status=Call.DONE, prompts_written=4
    )
    lost = ExpansionCall.objects.create(
        request=request, number=1, size=4, status=Call.RUNNING, token="gone"
    )
    ExpansionCall.objects.filter(pk=lost.pk).update(updated_at=long_ago)

    result = maintenance.call_local()
    assert result["requests_failed"] == 1
    request.refresh_from_db()
    lost.refresh_from_db()
    assert lost.status == Call.FAILED and lost.error.startswith("lost: ")
    assert request.status in GenerationRequest.TERMINAL  # not generating for ever
    assert request.status == Req.COMPLETED_WITH_ERRORS
    assert maintenance.call_local()["requests_failed"] == 0  # done once


def test_an_expansion_under_way_is_budgeted_at_its_full_count():
    request = make_request(
        with_jobs=False,
        theme=KYOTO_DUSK,
        count=500,
        status=Req.GENERATING,
        jobs_total=4,
        expansion_started_at=timezone.now(),
    )
    # Its price per image is its estimate over its count: $0.10.
    GenerationRequest.objects.filter(pk=request.pk).update(cost_estimate=Decimal("50.00"))
    request.refresh_from_db()
    # Four prompts written so far: the other 496 are still coming, and may be paid for.
    assert costs.still_to_spend(request) == Decimal("50.00")
    request.expansion_finished_at = timezone.now()
    request.jobs_total = 480  # the LLM wrote fewer in the end
    assert costs.still_to_spend(request) == Decimal("48.00")


def test_a_call_lost_after_its_request_failed_is_closed_so_it_can_be_generated_again(
    demo, settings
):
    """The request failed while one of its calls streamed; that call's worker died then.
    No message will ever end the call, and an open call refuses Generate: maintenance
    closes it (never a call whose message is still in the queue)."""
    settings.KARASU["RECONCILE"] = {"GRACE_SECONDS": 0}
    long_ago = timezone.now() - datetime.timedelta(hours=1)
    request = make_request(with_jobs=False, theme=KYOTO_DUSK, count=40, status=Req.QUEUED)
    services.plan_expansion(request.pk)
    call = ExpansionCall.objects.filter(request=request).order_by("number").first()
    ExpansionCall.objects.filter(pk=call.pk).update(status=Call.RUNNING, token="died")
    assert services.fail_request(request.pk, "timed out")
    ExpansionCall.objects.filter(pk=call.pk).update(updated_at=long_ago)
    request.refresh_from_db()
    assert not services.start_request(request)  # refused: a call still "streams"

    maintenance.call_local()
    call.refresh_from_db()
    assert call.status == Call.FAILED and call.error.startswith("lost: ")
    request.refresh_from_db()
    assert request.status == Req.FAILED and request.error == "timed out"  # unchanged
    assert services.start_request(request)
    request.refresh_from_db()
    assert request.status == Req.QUEUED


def test_prompts_generated_while_the_others_are_written_settle_the_request(demo):
    """Auto-generate off: the editor generates the first prompts while later calls still
    write. When the expansion ends the request is generating, not a draft that would never
    settle (its jobs end, and Generate is refused because it has prompts)."""
    from generation.tasks import queue_jobs

    request = make_request(
        with_jobs=False, theme=KYOTO_DUSK, count=8, status=Req.QUEUED, auto_generate=False
    )
    calls = services.plan_expansion(request.pk)
    first = calls.pop(0)
    calls.extend(services.run_call(first, services.claim_call(first)))
    written = list(request.jobs.values_list("pk", flat=True))
    assert written and ExpansionCall.objects.filter(request=request, status__in=ExpansionCall.OPEN)
    assert queue_jobs(written)  # "Generate pending prompts" while the request expands
    for job_id in written:
        services.finish_unclaimed_job(job_id, GenerationJob.Status.SUCCEEDED)
    for call in calls:
        services.run_call(call, services.claim_call(call))
    request.refresh_from_db()
    assert request.status == Req.GENERATING
    rest = list(
        request.jobs.filter(status=GenerationJob.Status.PENDING).values_list("pk", flat=True)
    )
    assert len(rest) == 8 - len(written)
    assert queue_jobs(rest)
    for job_id in rest:
        services.finish_unclaimed_job(job_id, GenerationJob.Status.SUCCEEDED)
    request.refresh_from_db()
    assert request.status == Req.COMPLETED


def test_calls_whose_tasks_could_not_be_enqueued_are_taken_again(demo, monkeypatch):
    """The queue storage failed between taking the calls and enqueueing their tasks: they
    are pending again, so the expansion's retry runs them at once instead of counting them
    in flight until maintenance gives them up."""
    from huey.contrib.djhuey import HUEY

    from generation.tasks import enqueue_calls

    request = make_request(with_jobs=False, theme=KYOTO_DUSK, count=40, status=Req.QUEUED)
    taken = services.plan_expansion(request.pk)
    assert taken

    def storage_down(*args, **kwargs):
        raise ConnectionError("queue storage unreachable")

    monkeypatch.setattr(HUEY, "enqueue_many", storage_down)
    with pytest.raises(ConnectionError):
        enqueue_calls(request.pk, taken)
    assert set(ExpansionCall.objects.filter(pk__in=taken).values_list("status", flat=True)) == {
        Call.PENDING
    }
    assert sorted(services.plan_expansion(request.pk)) == sorted(taken)  # the retry's


def test_a_deadline_leaves_a_call_whose_retry_is_already_scheduled(demo):
    """The attempt put its call back to queued (a Retry-After) just as its deadline fired:
    the call keeps its scheduled retry, it is not failed for good."""
    request = make_request(with_jobs=False, theme=KYOTO_DUSK, count=40, status=Req.QUEUED)
    [call_id, *_] = services.plan_expansion(request.pk)
    ExpansionCall.objects.filter(pk=call_id).update(status=Call.QUEUED, attempts=1)
    assert services.requeue_timed_out_call(call_id, "timed out", max_attempts=4) == []
    call = ExpansionCall.objects.get(pk=call_id)
    assert (call.status, call.error) == (Call.QUEUED, "")
