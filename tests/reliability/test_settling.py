"""No open state without a way to a final one: dead letters, lost messages, deadlines,
unknown models, infrastructure errors, cancels and the monitor's actions."""

import time
from unittest import mock

import pytest
from django.db import OperationalError, connections
from django.db.models import QuerySet
from django.urls import reverse
from huey.contrib.djhuey import HUEY
from wagtail.images import get_image_model

from generation import services
from generation.models import GenerationJob, GenerationRequest
from generation.providers import get_image_model as get_provider
from generation.providers import get_llm
from generation.providers.base import PromptBatch, TokenUsage
from generation.providers.demo import DemoLLM, call_key
from generation.tasks import expand_prompt, maintenance, queue_jobs
from huey_tasks import maintenance as queue_maintenance
from huey_tasks.models import TaskRun
from tests.support.consumers import queued_tasks, wait_for
from tests.support.factories import make_request, settled
from tests.support.provider_calls import calls_per_key, overlapping_calls

pytestmark = [pytest.mark.django_db(transaction=True), pytest.mark.usefixtures("collections")]
Job = GenerationJob.Status
Req = GenerationRequest.Status
Image = get_image_model()


@pytest.fixture
def one_delivery():
    storage = HUEY.storage
    original = storage.max_deliveries
    storage.max_deliveries = 1
    yield storage
    storage.max_deliveries = original


def die_holding(storage) -> None:
    """A worker claims the next message and dies: its lease just runs out."""
    assert storage.claim(lease_seconds=0.01) is not None
    time.sleep(0.05)


def test_a_buried_job_fails_at_once_and_requeue_reopens_it(
    demo, one_delivery, queue_backend, editor, thread_consumer_factory
):
    request = make_request(1)
    [job_id] = queue_jobs(list(request.jobs.values_list("pk", flat=True)))
    die_holding(HUEY.storage)
    assert HUEY.storage.claim() is None  # the second delivery is one too many: buried
    assert HUEY.storage.dead_letter_count() == 1
    job = GenerationJob.objects.get(pk=job_id)
    assert job.status == Job.FAILED
    assert job.error == "the worker running this job stopped once; see the job monitor"
    request.refresh_from_db()
    assert request.status == Req.FAILED and request.jobs_failed == 1
    assert TaskRun.objects.get(generation_job_id=job_id).status == TaskRun.Status.DEAD

    [letter] = HUEY.storage.dead_letters()
    editor.post(reverse("job_monitor:dead_letter", args=[letter.message_id, "requeue"]))
    job.refresh_from_db()
    request.refresh_from_db()
    assert job.status == Job.QUEUED and request.status == Req.GENERATING
    assert request.jobs_failed == 0
    with thread_consumer_factory():
        wait_for(lambda: settled(request), 30, message="requeued job finished")
    assert request.status == Req.COMPLETED
    assert Image.objects.filter(generation_job_id=job_id).count() == 1


def test_requeuing_a_dead_letter_is_checked_against_the_budgets(
    demo, one_delivery, queue_backend, editor, settings
):
    """A reopened job is paid work again: over budget, the letter stays where it is."""
    from decimal import Decimal

    settings.KARASU["IMAGE_MODELS"]["demo"] = {
        **settings.KARASU["IMAGE_MODELS"]["demo"],
        "PRICE": "0.5",
    }
    request = make_request(2, cost_estimate=Decimal("1.00"))  # $0.50 an image
    job_ids = queue_jobs(list(request.jobs.values_list("pk", flat=True)))
    die_holding(HUEY.storage)
    die_holding(HUEY.storage)
    assert HUEY.storage.claim() is None and HUEY.storage.dead_letter_count() == 2
    settings.KARASU["MAX_REQUEST_COST"] = Decimal("0.75")  # room for one more image only
    page = editor.post(
        reverse("job_monitor:dead_letters_all", args=["requeue"]), follow=True
    ).content.decode()
    assert "1 dead letters requeued." in page
    assert "1 kept, as they would pay for more" in page and "above the limit of $0.75" in page
    assert HUEY.storage.dead_letter_count() == 1
    statuses = sorted(GenerationJob.objects.filter(pk__in=job_ids).values_list("status", flat=True))
    assert statuses == [Job.FAILED, Job.QUEUED]


def test_a_buried_expansion_fails_its_request(demo, one_delivery, queue_backend):
    request = GenerationRequest.objects.create(
        theme="Moths", count=2, llm="demo", image_model="demo", status=Req.QUEUED
    )
    HUEY.storage.flush_queue()
    expand_prompt(request.pk)
    die_holding(HUEY.storage)
    assert HUEY.storage.claim() is None
    request.refresh_from_db()
    assert request.status == Req.FAILED
    assert "stopped once" in request.error


def test_maintenance_requeues_lost_jobs_then_gives_up(demo, queue_backend, settings):
    settings.KARASU["RECONCILE"] = {"GRACE_SECONDS": 0, "MAX_RECOVERIES": 1}
    request = make_request(2)
    queue_jobs(list(request.jobs.values_list("pk", flat=True)))
    HUEY.storage.flush_queue()  # the messages are lost
    result = maintenance.call_local()
    assert result["jobs_requeued"] == 2
    assert len(queued_tasks("generate_image")) == 2
    assert set(request.jobs.values_list("recoveries", flat=True)) == {1}
    HUEY.storage.flush_queue()
    result = maintenance.call_local()
    assert result["jobs_failed"] == 2 and result["requests_settled"] == 0
    request.refresh_from_db()
    assert request.status == Req.FAILED
    assert "left the queue unfinished" in request.jobs.first().error
    # The monitor shows what maintenance did.
    assert queue_maintenance.last_result(HUEY)["jobs_failed"] == 2


def test_maintenance_leaves_claimed_and_fresh_jobs_alone(demo, queue_backend, settings):
    settings.KARASU["RECONCILE"] = {"GRACE_SECONDS": 60}
    request = make_request(2)
    ids = queue_jobs(list(request.jobs.values_list("pk", flat=True)))
    HUEY.storage.flush_queue()
    services.claim_job(GenerationJob.objects.get(pk=ids[0]), "live", 30)
    assert maintenance.call_local()["jobs_requeued"] == 0  # fresh: within the grace
    settings.KARASU["RECONCILE"] = {"GRACE_SECONDS": 0}
    assert maintenance.call_local()["jobs_requeued"] == 1  # the claimed one waits
    assert [t.args[0] for t in queued_tasks("generate_image")] == [ids[1]]


def test_maintenance_restarts_lost_expansions_and_pauses_unsent_prompts(
    demo, queue_backend, settings
):
    settings.KARASU["RECONCILE"] = {"GRACE_SECONDS": 0}
    lost = GenerationRequest.objects.create(
        theme="Moths", count=2, llm="demo", image_model="demo", status=Req.EXPANDING
    )
    review = make_request(3, auto_generate=False)
    refanned = make_request(2)
    result = maintenance.call_local()
    assert result["requests_restarted"] == 1 and result["requests_paused"] == 1
    assert [t.args[0] for t in queued_tasks("expand_prompt")] == [lost.pk]
    review.refresh_from_db()
    assert review.status == Req.DRAFT
    assert sorted(t.args[0] for t in queued_tasks("generate_image")) == sorted(
        refanned.jobs.values_list("pk", flat=True)
    )


def test_an_unknown_image_model_fails_the_job(demo, thread_consumer):
    request = make_request(1, image_model="renamed-in-a-deploy")
    queue_jobs(list(request.jobs.values_list("pk", flat=True)))
    wait_for(lambda: settled(request), 20, message="request settled")
    job = request.jobs.get()
    assert job.status == Job.FAILED and "renamed-in-a-deploy" in job.error


def test_a_task_past_its_deadline_fails_as_timed_out(demo, call_log, thread_consumer):
    demo(latency=2.5)
    original = HUEY.task_deadline
    HUEY.task_deadline = 0.5
    try:
        request = make_request(1)
        queue_jobs(list(request.jobs.values_list("pk", flat=True)))
        wait_for(lambda: settled(request), 20, message="timed out")
        job = request.jobs.get()
        assert job.status == Job.FAILED and job.error.startswith("timed out")
        wait_for(
            lambda: calls_per_key(call_log) and open(call_log).read().count("end ") == 1,
            10,
            message="the stuck call returns",
        )
        time.sleep(0.5)
    finally:
        HUEY.task_deadline = original
    assert not Image.objects.filter(generation_job_id=job.pk).exists()  # fenced out
    assert HUEY.storage.leased_count() == 0 and HUEY.storage.queue_size() == 0
    run = TaskRun.objects.get(generation_job_id=job.pk)
    assert run.status == TaskRun.Status.FAILED and "timed out" in run.error_message


def flaky(function, error: Exception, times: int):
    """``function`` (or method) raising ``error`` on its first ``times`` calls."""
    failures = {"left": times}

    def flaky_call(*args, **kwargs):
        if failures["left"]:
            failures["left"] -= 1
            raise error
        return function(*args, **kwargs)

    return flaky_call


def test_a_database_blip_after_the_call_is_retried_in_place_not_paid_again(
    queue_backend, demo, call_log, thread_consumer, monkeypatch
):
    """The image is paid for: filing it is tried again at once, not the provider call."""
    monkeypatch.setattr(Image, "save", flaky(Image.save, OperationalError("database is locked"), 3))
    request = make_request(1)
    queue_jobs(list(request.jobs.values_list("pk", flat=True)))
    wait_for(lambda: settled(request), 30, message="request settled")
    job = request.jobs.get()
    assert job.status == Job.SUCCEEDED and job.attempts == 1 and job.infra_retries == 0
    assert calls_per_key(call_log) == {call_key(job.prompt): 1}
    assert Image.objects.filter(generation_request_id=request.pk).count() == 1


def test_storing_a_submitted_request_waits_out_an_outage_instead_of_paying_again(
    queue_backend, demo, call_log, thread_consumer, monkeypatch
):
    """The call is submitted (paid) and the database goes away before its request id is
    stored: the worker waits for the database instead of losing the request, however
    many attempts that takes, and the image is paid for once."""
    monkeypatch.setattr(HUEY, "outage_backoff_max", 0.2)  # scaled: the default is 30 s
    update = QuerySet.update
    failures = {"left": 12}  # more than the five attempts made outside a worker's task

    def update_failing_to_store_requests(queryset, **fields):
        if fields.get("provider_request_id") and failures["left"]:
            failures["left"] -= 1
            raise OperationalError("server closed the connection unexpectedly")
        return update(queryset, **fields)

    monkeypatch.setattr(QuerySet, "update", update_failing_to_store_requests)
    request = make_request(1)
    queue_jobs(list(request.jobs.values_list("pk", flat=True)))
    wait_for(lambda: settled(request), 30, message="request settled")
    job = request.jobs.get()
    assert job.status == Job.SUCCEEDED and job.attempts == 1
    assert failures["left"] == 0
    assert calls_per_key(call_log) == {call_key(job.prompt): 1}


@pytest.fixture
def commit_raises_once(monkeypatch):
    """``arm(table)``: the next commit after a write to ``table`` goes through and then
    raises, as a commit does when the connection drops before the server's answer."""
    connection = connections["default"]
    armed = {"table": None, "wrote": False}

    def watch(execute, sql, params, many, context):
        if (
            armed["table"]
            and sql.lstrip().upper().startswith(("INSERT", "UPDATE"))
            and (armed["table"] in sql)
        ):
            armed["wrote"] = True
        return execute(sql, params, many, context)

    commit = type(connection).commit

    def commit_then_raise(self):
        commit(self)
        if armed["wrote"]:
            armed.update(table=None, wrote=False)
            raise OperationalError("server closed the connection unexpectedly")

    monkeypatch.setattr(type(connection), "commit", commit_then_raise)
    with connection.execute_wrapper(watch):
        yield lambda table: armed.update(table=table)


def test_a_commit_that_raised_but_went_through_keeps_the_image_and_its_file(
    demo, commit_raises_once
):
    request = make_request(1)
    job = request.jobs.get()
    assert services.claim_job(job, "mine", 60)
    generated = get_provider("demo").generate(job.prompt, seed=1)
    commit_raises_once("cms_karasuimage")
    assert services.store(job, "mine", generated) is True
    job.refresh_from_db()
    [image] = Image.objects.filter(generation_request_id=request.pk)
    assert job.status == Job.SUCCEEDED and job.image_id == image.pk
    assert image.file.storage.exists(image.file.name)  # not deleted as "not filed"
    request.refresh_from_db()
    assert request.jobs_succeeded == 1


def test_prompts_whose_commit_raised_but_went_through_are_written_once(demo, commit_raises_once):
    request = GenerationRequest.objects.create(
        theme="Moths",
        count=3,
        llm="demo",
        image_model="demo",
        status=Req.QUEUED,
        auto_generate=False,
    )
    expansion = get_llm("demo").expand("Moths", 3)
    answer = PromptBatch(
        [{"prompt": p.prompt, "alt_text": p.alt_text} for p in expansion.prompts],
        TokenUsage(input_tokens=100, output_tokens=40),
    )
    commit_raises_once("generation_generationjob")
    with mock.patch.object(DemoLLM, "request_prompts", return_value=answer) as expand:
        assert services.expand_request(request.pk) == []
    request.refresh_from_db()
    assert expand.call_count == 1
    assert request.status == Req.DRAFT and request.jobs.count() == 3
    assert (request.llm_input_tokens, request.llm_output_tokens) == (100, 40)  # once


def test_infrastructure_errors_do_not_use_provider_attempts(demo, thread_consumer, monkeypatch):
    # A disk that refuses twice: not retried in place (only database errors are).
    monkeypatch.setattr(Image, "save", flaky(Image.save, OSError(28, "No space left"), 2))
    request = make_request(1)
    queue_jobs(list(request.jobs.values_list("pk", flat=True)))
    wait_for(lambda: settled(request), 30, message="request settled")
    job = request.jobs.get()
    assert job.status == Job.SUCCEEDED and job.attempts == 1 and job.infra_retries == 2


def test_a_lasting_infrastructure_error_fails_the_job_with_the_real_reason(
    demo, thread_consumer, monkeypatch, settings
):
    settings.KARASU["RETRY"] = {**settings.KARASU["RETRY"], "MAX_INFRASTRUCTURE_RETRIES": 2}

    def disk_full(self, *args, **kwargs):
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(Image, "save", disk_full)
    request = make_request(1)
    queue_jobs(list(request.jobs.values_list("pk", flat=True)))
    wait_for(lambda: settled(request), 30, message="request settled")
    job = request.jobs.get()
    assert job.status == Job.FAILED and "No space left on device" in job.error
    assert job.attempts == 1 and job.infra_retries == 2  # retries used no attempts


def expanded(request) -> bool:
    request.refresh_from_db()
    return request.status not in (Req.QUEUED, Req.EXPANDING)


def test_a_database_blip_after_the_llm_answered_is_retried_in_place(
    demo, thread_consumer, monkeypatch
):
    """The prompts are paid for: writing them is tried again, not the LLM call."""
    llm_calls = []
    request_prompts = DemoLLM.request_prompts

    def counted(self, *args, **kwargs):
        llm_calls.append(1)
        return request_prompts(self, *args, **kwargs)

    monkeypatch.setattr(DemoLLM, "request_prompts", counted)
    monkeypatch.setattr(
        GenerationJob.objects,
        "bulk_create",
        flaky(GenerationJob.objects.bulk_create, OperationalError("database is locked"), 2),
    )
    request = GenerationRequest.objects.create(
        theme="Moths",
        count=3,
        llm="demo",
        image_model="demo",
        status=Req.QUEUED,
        auto_generate=False,
    )
    expand_prompt(request.pk)
    wait_for(lambda: expanded(request), 30, message="prompts written")
    assert request.status == Req.DRAFT and request.jobs.count() == 3 and request.error == ""
    assert llm_calls == [1]


def test_infrastructure_errors_of_an_expansion_use_no_llm_retries(
    queue_backend, demo, thread_consumer, monkeypatch
):
    # Three errors in a row: more than the expansion's 2 retries for the LLM.
    monkeypatch.setattr(
        services,
        "plan_expansion",
        flaky(services.plan_expansion, OperationalError("database is locked"), 3),
    )
    request = GenerationRequest.objects.create(
        theme="Moths", count=2, llm="demo", image_model="demo", status=Req.QUEUED
    )
    expand_prompt(request.pk)
    wait_for(lambda: settled(request), 30, message="request settled")
    assert request.status == Req.COMPLETED and request.jobs_succeeded == 2


def test_a_lasting_infrastructure_error_fails_the_expansion_with_the_real_reason(
    queue_backend, demo, thread_consumer, monkeypatch, settings
):
    settings.KARASU["RETRY"] = {**settings.KARASU["RETRY"], "MAX_INFRASTRUCTURE_RETRIES": 2}
    attempts = []

    def broken(request_id):
        attempts.append(request_id)
        raise OperationalError("could not connect to server")

    monkeypatch.setattr(services, "plan_expansion", broken)
    request = GenerationRequest.objects.create(
        theme="Moths", count=2, llm="demo", image_model="demo", status=Req.QUEUED
    )
    expand_prompt(request.pk)
    wait_for(lambda: expanded(request), 30, message="request failed")
    assert request.status == Req.FAILED
    assert request.error == "infrastructure error: OperationalError: could not connect to server"
    assert len(attempts) == 3  # the first try and 2 infrastructure retries


def test_a_failing_slot_release_never_fails_a_generated_image(demo, thread_consumer, monkeypatch):
    def broken(*args, **kwargs):
        raise OperationalError("database is locked")

    monkeypatch.setattr(HUEY.storage, "release_slot", broken)
    request = make_request(2)
    queue_jobs(list(request.jobs.values_list("pk", flat=True)))
    wait_for(lambda: settled(request), 30, message="request settled")
    assert request.status == Req.COMPLETED


def test_cancel_stops_the_retries_of_running_jobs(demo, call_log, thread_consumer):
    demo(latency=0.6, failure_rate=1.0, max_failure_streak=0)
    request = make_request(2)
    queue_jobs(list(request.jobs.values_list("pk", flat=True)))
    wait_for(
        lambda: request.jobs.filter(status=Job.RUNNING).count() == 2, 10, message="both running"
    )
    services.cancel_request(GenerationRequest.objects.get(pk=request.pk))
    wait_for(
        lambda: not request.jobs.filter(status__in=GenerationJob.OPEN).exists(),
        10,
        message="jobs final",
    )
    time.sleep(1.5)  # past any re-schedule: nothing new starts
    assert set(request.jobs.values_list("status", "attempts")) == {(Job.CANCELLED, 1)}
    assert set(calls_per_key(call_log).values()) == {1}
    assert overlapping_calls(call_log) == []


def test_regenerate_unlinks_every_image_of_the_old_run(demo):
    request = make_request(1, status=Req.COMPLETED, job_status=Job.SUCCEEDED, jobs_succeeded=1)
    job = request.jobs.get()
    from generation.providers import get_image_model as get_provider

    generated = get_provider("demo").generate(job.prompt, seed=1)
    GenerationJob.objects.filter(pk=job.pk).update(status=Job.RUNNING, claim_token="t")
    services.store(job, "t", generated)
    stray = Image.objects.get(generation_job_id=job.pk)
    job.refresh_from_db()
    assert services.regenerate_job(job)
    assert not Image.objects.filter(generation_job_id=job.pk).exists()
    assert Image.objects.filter(pk=stray.pk).exists()  # stays in the library


def test_retrying_an_old_failed_run_of_a_succeeded_job_does_nothing(demo, editor):
    HUEY.storage.flush_all()
    request = make_request(1, status=Req.COMPLETED, job_status=Job.SUCCEEDED, jobs_succeeded=1)
    job = request.jobs.get()
    run = TaskRun.objects.create(
        task_name="generation.tasks.generate_image",
        task_id="old",
        status=TaskRun.Status.FAILED,
        args=[job.pk],
        generation_job=job,
        generation_request=request,
    )
    editor.post(reverse("job_monitor:run_retry", args=[run.pk]))
    job.refresh_from_db()
    assert job.status == Job.SUCCEEDED and queued_tasks("generate_image") == []


def test_nothing_of_a_cancelled_request_is_retried_or_regenerated(demo, editor):
    """The monitor's Retry of a failed run and the request page's Regenerate, like Retry
    failed jobs and requeued dead letters, start nothing for a cancelled request."""
    HUEY.storage.flush_all()
    request = make_request(2, status=Req.CANCELLED, job_status=Job.FAILED, jobs_failed=2)
    failed, other = request.jobs.order_by("index")
    run = TaskRun.objects.create(
        task_name="generation.tasks.generate_image",
        task_id="r1",
        status=TaskRun.Status.FAILED,
        args=[failed.pk],
        generation_job=failed,
        generation_request=request,
    )
    response = editor.post(reverse("job_monitor:run_retry", args=[run.pk]), follow=True)
    assert "nothing of it runs again" in response.content.decode()
    response = editor.post(
        reverse("wagtailsnippets_generation_generationrequest:job_generate", args=[other.pk]),
        follow=True,
    )
    assert "nothing of it runs again" in response.content.decode()
    assert "Regenerate" not in response.content.decode()  # no button that cannot work
    request.refresh_from_db()
    assert request.status == Req.CANCELLED and request.jobs_failed == 2
    assert set(request.jobs.values_list("status", flat=True)) == {Job.FAILED}
    assert queued_tasks("generate_image") == []
    assert not services.regenerate_job(failed)  # the service refuses too, under the lock


def test_spending_actions_need_change_permission_on_requests(demo, limited_editor):
    HUEY.storage.flush_all()
    client = limited_editor("view_taskrun", "change_taskrun")
    request = make_request(1, status=Req.FAILED, job_status=Job.FAILED, jobs_failed=1)
    job = request.jobs.get()
    run = TaskRun.objects.create(
        task_name="generation.tasks.generate_image",
        task_id="r1",
        status=TaskRun.Status.FAILED,
        args=[job.pk],
        generation_job=job,
        generation_request=request,
    )
    urls = [
        reverse("job_monitor:run_retry", args=[run.pk]),
        reverse("job_monitor:request_retry_failed", args=[request.pk]),
        reverse("job_monitor:dead_letters_all", args=["requeue"]),
    ]
    for url in urls:
        # Wagtail's answer to PermissionDenied in the admin: back to the dashboard.
        for response in (client.get(url), client.post(url)):
            assert (response.status_code, response.url) == (302, "/admin/"), url
    job.refresh_from_db()
    assert job.status == Job.FAILED and queued_tasks("generate_image") == []
    # Purging spends nothing: task-run change permission is enough.
    assert client.post(reverse("job_monitor:dead_letters_all", args=["purge"])).status_code == 302


def test_maintenance_does_not_fail_again_a_job_retried_after_its_dead_letter(
    demo, one_delivery, queue_backend, settings
):
    settings.KARASU["RECONCILE"] = {"GRACE_SECONDS": 0}
    request = make_request(1)
    queue_jobs(list(request.jobs.values_list("pk", flat=True)))
    die_holding(HUEY.storage)
    HUEY.storage.claim()  # buried: the job fails
    request.refresh_from_db()
    assert request.jobs_failed == 1
    ids = services.reset_failed_jobs(request)  # the editor retries it
    queue_jobs(ids)
    maintenance.call_local()  # the old dead letter is still in the store
    job = request.jobs.get()
    assert job.status == Job.QUEUED and job.error == ""


def test_burying_a_stale_copy_leaves_the_job_its_twin_is_running(demo, one_delivery):
    HUEY.storage.flush_all()
    request = make_request(1)
    [job_id] = queue_jobs(list(request.jobs.values_list("pk", flat=True)))
    job = GenerationJob.objects.get(pk=job_id)
    # A twin delivery holds a live claim, taken through another message.
    assert services.claim_job(job, "twin", 30, message_id="another-message")
    die_holding(HUEY.storage)
    HUEY.storage.claim()  # the stale copy is buried
    job.refresh_from_db()
    assert job.status == Job.RUNNING and job.claim_token == "twin"


def test_a_deadline_after_the_lease_was_lost_fails_nothing(demo, monkeypatch):
    from huey_tasks.queue import LeasingHuey

    HUEY.storage.flush_all()
    monkeypatch.setattr(HUEY, "beat", lambda: None)  # the test beats by hand
    request = make_request(1)
    [job_id] = queue_jobs(list(request.jobs.values_list("pk", flat=True)))
    task = HUEY.dequeue()
    running = HUEY._running[id(task)]
    running.lost = True  # another worker took the message (and then the job) over
    assert services.claim_job(GenerationJob.objects.get(pk=job_id), "new-holder", 30)
    running.deadline = time.monotonic() - 1
    LeasingHuey.beat(HUEY)
    job = GenerationJob.objects.get(pk=job_id)
    assert job.status == Job.RUNNING and job.claim_token == "new-holder"
    HUEY.storage.flush_all()


def test_revoking_a_stale_run_leaves_the_current_run_alone(demo, editor):
    HUEY.storage.flush_all()
    request = make_request(1)
    job = request.jobs.get()
    stale = TaskRun.objects.create(
        task_name="generation.tasks.generate_image",
        task_id="generate_image-old",
        status=TaskRun.Status.QUEUED,
        args=[job.pk],
        generation_job=job,
        generation_request=request,
    )
    queue_jobs([job.pk])  # the job's current run has another task id
    editor.post(reverse("job_monitor:run_revoke", args=[stale.pk]))
    job.refresh_from_db()
    assert job.status == Job.QUEUED
    current = TaskRun.objects.get(task_id=job.task_id)
    editor.post(reverse("job_monitor:run_revoke", args=[current.pk]))
    job.refresh_from_db()
    assert job.status == Job.CANCELLED and job.error == "revoked from the job monitor"
    HUEY.storage.flush_all()


def test_a_dead_letter_of_a_cancelled_request_is_not_reopened(demo, one_delivery, editor):
    HUEY.storage.flush_all()
    request = make_request(2)
    queue_jobs(list(request.jobs.values_list("pk", flat=True)))
    die_holding(HUEY.storage)
    HUEY.storage.claim()  # one job buried and failed
    services.cancel_request(GenerationRequest.objects.get(pk=request.pk))
    [letter] = HUEY.storage.dead_letters()
    editor.post(reverse("job_monitor:dead_letter", args=[letter.message_id, "requeue"]))
    request.refresh_from_db()
    assert (request.jobs_failed, request.jobs_cancelled) == (1, 1)
    assert set(request.jobs.values_list("status", flat=True)) == {Job.FAILED, Job.CANCELLED}
    HUEY.storage.flush_all()


def test_a_run_whose_job_call_is_in_flight_is_not_reported_revoked(demo, editor):
    """Shown queued, but a worker holds its job's claim: Huey's revoke cannot stop that call
    (nor, as it clears the flag after the execution, the job's retries), so no "revoked"."""
    HUEY.storage.flush_all()
    request = make_request(1)
    [job_id] = queue_jobs(list(request.jobs.values_list("pk", flat=True)))
    job = GenerationJob.objects.get(pk=job_id)
    run = TaskRun.objects.get(task_id=job.task_id)
    assert run.status == TaskRun.Status.QUEUED  # the ledger has not seen the start yet
    assert services.claim_job(job, "in-flight", 30, message_id="the-running-message")
    before = GenerationJob.objects.values().get(pk=job_id)

    response = editor.post(reverse("job_monitor:run_revoke", args=[run.pk]), follow=True)
    assert response.status_code == 200
    body = response.content.decode()
    assert "cannot be revoked: it is under way (its provider call in flight" in body
    assert "Cancelling its request stops any further attempt." in body
    assert " revoked." not in body
    run.refresh_from_db()
    assert run.status == TaskRun.Status.QUEUED
    assert not HUEY.is_revoked(run.task_id)
    assert GenerationJob.objects.values().get(pk=job_id) == before  # status, claim, attempts
    request.refresh_from_db()
    assert request.status == Req.GENERATING and request.jobs_cancelled == 0
    HUEY.storage.flush_all()


def test_a_buried_message_leaves_a_job_whose_holder_still_renews_its_claim(
    demo, one_delivery, queue_backend
):
    """With one delivery allowed, a worker's message lease is lost (its queue-storage calls
    failing through a failover) and the message buried, but the worker still renews the
    job's claim in the database while its call runs: the job is its to finish, not failed
    under it. A claim left to expire is failed at burial as before."""
    request = make_request(2)
    live_job, dead_job = request.jobs.order_by("index")
    queue_jobs([live_job.pk])
    delivery = HUEY.storage.claim(lease_seconds=0.01)
    # Claimed and renewed just now: a full claim ahead, as the heartbeat keeps it.
    assert services.claim_job(
        live_job, "alive", HUEY.storage.lease_seconds * 2, message_id=delivery.message_id
    )
    time.sleep(0.05)
    assert HUEY.storage.claim() is None  # buried on the next claim
    live_job.refresh_from_db()
    assert live_job.status == Job.RUNNING and live_job.claim_token == "alive"

    queue_jobs([dead_job.pk])
    delivery = HUEY.storage.claim(lease_seconds=0.01)
    # Its worker died: the claim's last renewal was a lease before the message ran out.
    assert services.claim_job(
        dead_job, "dead", HUEY.storage.lease_seconds, message_id=delivery.message_id
    )
    time.sleep(0.05)
    assert HUEY.storage.claim() is None
    dead_job.refresh_from_db()
    assert dead_job.status == Job.FAILED and "stopped once" in dead_job.error


def test_an_expansion_under_way_is_not_reported_revoked(demo, editor):
    HUEY.storage.flush_all()
    request = GenerationRequest.objects.create(
        theme="Moths", count=2, llm="demo", image_model="demo", status=Req.QUEUED
    )
    expand_prompt(request.pk)
    run = TaskRun.objects.get(generation_request=request, task_name__endswith="expand_prompt")
    GenerationRequest.objects.filter(pk=request.pk).update(status=Req.EXPANDING)  # started
    response = editor.post(reverse("job_monitor:run_revoke", args=[run.pk]), follow=True)
    assert "cannot be revoked: it is under way" in response.content.decode()
    run.refresh_from_db()
    assert run.status == TaskRun.Status.QUEUED and not HUEY.is_revoked(run.task_id)
    HUEY.storage.flush_all()


def test_a_revoked_queued_expansion_stays_revoked_through_maintenance(
    demo, editor, settings, thread_consumer_factory
):
    """Revoked from the monitor before it ran: the request ends cancelled, and maintenance
    does not restart the expansion (and pay the LLM) the editor stopped."""
    settings.KARASU["RECONCILE"] = {"GRACE_SECONDS": 0}
    HUEY.storage.flush_all()
    request = GenerationRequest.objects.create(
        theme="蛾と月 «moths» 🌙", count=2, llm="demo", image_model="demo", status=Req.QUEUED
    )
    expand_prompt(request.pk)
    run = TaskRun.objects.get(generation_request=request, task_name__endswith="expand_prompt")
    response = editor.post(reverse("job_monitor:run_revoke", args=[run.pk]), follow=True)
    assert f"{run.task_id} revoked." in response.content.decode()
    with thread_consumer_factory(workers=2):  # the worker meets the revoked message
        wait_for(
            lambda: HUEY.storage.queue_size() + HUEY.storage.leased_count() == 0,
            10,
            message="the revoked message settled",
        )
    result = maintenance.call_local()
    assert result["requests_restarted"] == 0
    assert queued_tasks("expand_prompt") == []
    request.refresh_from_db()
    assert request.status == Req.CANCELLED and request.error == "revoked from the job monitor"
    assert request.jobs.count() == 0  # the LLM was never asked
    HUEY.storage.flush_all()


def test_a_late_llm_error_does_not_overwrite_the_reason_of_an_ended_request(demo):
    """Its deadline failed the request; the LLM call that then failed must not replace
    "timed out" with a "(will retry)" for a retry that will do nothing."""
    ended = GenerationRequest.objects.create(
        theme="Moths",
        count=2,
        llm="demo",
        image_model="demo",
        status=Req.FAILED,
        error="timed out: no result within 300 s",
    )
    services.note_request_error(ended.pk, "LLM overloaded (will retry)")
    ended.refresh_from_db()
    assert ended.error == "timed out: no result within 300 s"
    expanding = GenerationRequest.objects.create(
        theme="Moths", count=2, llm="demo", image_model="demo", status=Req.EXPANDING
    )
    services.note_request_error(expanding.pk, "LLM overloaded (will retry)")
    expanding.refresh_from_db()
    assert expanding.error == "LLM overloaded (will retry)"
