"""A fal request is paid once: the pipeline against a fake fal queue API on 127.0.0.1
(tests/support/fal_queue.py), through the real fal-client, with billing counted on the
provider's side. Whatever fails after the submission (a status error, a timeout, a
download, a media write), the job's next attempt resumes the same request."""

import datetime

import fal_client
import fal_client.client
import pytest
from django.core.files.storage import FileSystemStorage
from huey.contrib.djhuey import HUEY
from wagtail.images import get_image_model

from generation.limits import limiter_for
from generation.models import GenerationJob, GenerationRequest
from generation.providers import ProviderCall, TransientProviderError, reset_cache
from generation.providers import get_image_model as get_provider
from generation.retrying import retry_policy
from generation.services import retry_delay
from generation.tasks import queue_jobs
from tests.support.consumers import wait_for
from tests.support.factories import make_request, settled
from tests.support.fal_queue import FakeFalQueue

pytestmark = [pytest.mark.django_db(transaction=True), pytest.mark.usefixtures("collections")]
Job = GenerationJob.Status
Req = GenerationRequest.Status
Image = get_image_model()
FAL_KEY = "fal-key-id:SECRETSECRETSECRETfalsecret"
MODEL = "flux-schnell"
THEME = "京都の烏 “at dusk” — غراب 🐦"


@pytest.fixture
def fal_queue(settings, monkeypatch):
    queue = FakeFalQueue(latency=0.3, key=FAL_KEY)
    # fal-client reads this at call time (submit and get_handle): plain http to 127.0.0.1.
    monkeypatch.setattr(fal_client.client, "QUEUE_URL_FORMAT", queue.url)
    queue.route_cdn(monkeypatch)
    settings.FAL_KEY = FAL_KEY

    def configure(**options):
        settings.KARASU["IMAGE_MODELS"][MODEL] = {
            **settings.KARASU["IMAGE_MODELS"][MODEL],
            **{key.upper(): value for key, value in options.items()},
        }
        reset_cache()
        limiter_for.cache_clear()

    configure(poll_interval=0.05, timeout=5, download_wait=0.01, max_attempts=2, concurrency=4)
    queue.configure = configure
    yield queue
    queue.close()
    reset_cache()
    limiter_for.cache_clear()


def run_one(thread_consumer, job_count: int = 1):
    request = make_request(job_count, theme=THEME, image_model=MODEL)
    queue_jobs(list(request.jobs.values_list("pk", flat=True)))
    wait_for(lambda: settled(request), 60, message="request settled")
    return request, request.jobs.order_by("index").first()


def assert_paid_once(queue, request, job):
    assert request.status == Req.COMPLETED, job.error
    assert job.status == Job.SUCCEEDED and job.image_id is not None
    assert queue.submitted() == {job.prompt: 1}  # one submission at the provider...
    assert queue.bills() == {job.prompt: 1}  # ...and one bill
    assert queue.cancels == []  # nothing given up
    (request_id,) = queue.submissions
    assert job.provider_request_id == request_id and job.provider_endpoint == MODEL_ENDPOINT
    assert job.image.provider_request_id == request_id
    assert Image.objects.filter(generation_request_id=request.pk).count() == 1


MODEL_ENDPOINT = "fal-ai/flux/schnell"


def test_a_clean_call_submits_once_and_stores_the_request(fal_queue, thread_consumer):
    request, job = run_one(thread_consumer)
    assert_paid_once(fal_queue, request, job)
    assert job.attempts == 1 and fal_queue.unauthorised == 0
    assert job.image.seed == job.seed  # sent with the request, echoed in fal's result


def test_a_status_error_after_fal_clients_retries_resumes(fal_queue, thread_consumer):
    # 429 twice: fal-client retries once (MAX_ATTEMPTS 2), then the error reaches the job.
    fal_queue.fail("status", times=2, status=429, detail="Too many requests")
    request, job = run_one(thread_consumer)
    assert_paid_once(fal_queue, request, job)
    assert job.attempts == 2


def test_a_hostile_retry_after_reruns_the_job_at_the_cap_not_in_years(
    fal_queue, thread_consumer, settings
):
    """A 429 with ``Retry-After: 99999999``: the job's retry is scheduled RETRY_AFTER_CAP
    seconds ahead (60 by default; 1 here), not three years, and it runs then."""
    settings.KARASU["RETRY"] = {**settings.KARASU["RETRY"], "RETRY_AFTER_CAP": 1.0}
    # Twice: a submission is not retried by the client, so the job sees both 429s.
    fal_queue.fail(
        "submit", times=2, status=429, headers={"retry-after": "99999999"}, detail="Slow down"
    )
    request = make_request(1, theme=THEME, image_model=MODEL)
    job = request.jobs.get()
    queue_jobs([job.pk])

    def scheduled_retry():
        for data in HUEY.storage.scheduled_items():
            task = HUEY.deserialize_task(data)
            if task.name.endswith("generate_image") and task.args == (job.pk,):
                return task
        return None

    retry = wait_for(scheduled_retry, 30, interval=0.02, message="the job's retry scheduled")
    now = datetime.datetime.now(datetime.UTC).replace(tzinfo=None)  # Huey's etas: naive UTC
    assert (retry.eta - now).total_seconds() <= 1.0
    wait_for(lambda: settled(request), 30, message="the retry to run")
    job.refresh_from_db()
    assert job.status == Job.SUCCEEDED and job.attempts == 3
    assert fal_queue.calls["submit"] == 3 and fal_queue.bills() == {job.prompt: 1}


def test_retry_delay_honours_a_retry_after_up_to_its_cap():
    # Longer than the backoff: honoured; past the cap: the cap.
    assert retry_delay(1, 5.0, 0.05, 0.2, retry_after_cap=60.0) == 5.0
    assert retry_delay(1, 99999999.0, 0.05, 0.2, retry_after_cap=60.0) == 60.0
    assert retry_delay(1, float("inf"), 0.05, 0.2, retry_after_cap=60.0) == 60.0
    # No cap given: never past the backoff's own cap either.
    assert retry_delay(1, 99999999.0, 2.0, 60.0) == 60.0
    # Shorter than the backoff, or none: the backoff (4 s with its jitter, 2 to 6 s).
    assert 2.0 <= retry_delay(3, 0.01, 1.0, 60.0, retry_after_cap=60.0) <= 6.0
    assert 2.0 <= retry_delay(3, None, 1.0, 60.0) <= 6.0
    assert retry_policy()["RETRY_AFTER_CAP"] == 60.0  # the default (not set by the test settings)


def test_a_result_error_resumes(fal_queue, thread_consumer):
    fal_queue.fail("result", times=1, status=500, detail="upstream hiccup")
    request, job = run_one(thread_consumer)
    assert_paid_once(fal_queue, request, job)
    assert job.attempts == 2


def test_a_timeout_keeps_the_request_and_the_retry_resumes_it(fal_queue, thread_consumer):
    fal_queue.latency = 1.0
    fal_queue.configure(timeout=0.4)  # the first attempts give up waiting, not the request
    request, job = run_one(thread_consumer)
    assert_paid_once(fal_queue, request, job)
    assert job.attempts >= 2


def test_a_download_failure_is_retried_in_place(fal_queue, thread_consumer):
    fal_queue.fail("file", times=1, status=503)
    request, job = run_one(thread_consumer)
    assert_paid_once(fal_queue, request, job)
    assert job.attempts == 1 and fal_queue.calls["file"] == 2


def test_a_download_failing_past_its_retries_resumes_next_attempt(fal_queue, thread_consumer):
    fal_queue.fail("file", times=3, status=503)  # every in-place try of the first attempt
    request, job = run_one(thread_consumer)
    assert_paid_once(fal_queue, request, job)
    assert job.attempts == 2 and fal_queue.calls["file"] == 4


def test_a_media_write_failure_resumes_the_same_request(fal_queue, thread_consumer, monkeypatch):
    """The disk refuses the image three times (every in-place try): the job is deferred
    (not an attempt), and its next run collects the same request again, no second call."""
    failures = [OSError(28, "No space left on device")] * 3
    real_save = FileSystemStorage._save

    def save(storage, name, content):
        if failures and not name.startswith("karasu-probes/"):
            raise failures.pop()
        return real_save(storage, name, content)

    monkeypatch.setattr(FileSystemStorage, "_save", save)
    request, job = run_one(thread_consumer)
    assert_paid_once(fal_queue, request, job)
    assert (job.attempts, job.infra_retries) == (1, 1)
    assert fal_queue.calls["result"] >= 2  # collected twice, paid once


def test_a_request_fal_no_longer_knows_is_submitted_again(fal_queue, thread_consumer):
    request = make_request(1, theme=THEME, image_model=MODEL)
    job = request.jobs.get()
    old = get_provider(MODEL).submit(job.prompt, seed=job.seed)
    fal_queue.expire(old.request_id)  # its result's retention passed: 404 on resume
    GenerationJob.objects.filter(pk=job.pk).update(
        provider_request_id=old.request_id, provider_endpoint=old.endpoint
    )
    queue_jobs([job.pk])
    wait_for(lambda: settled(request), 60, message="request settled")
    job.refresh_from_db()
    assert job.status == Job.SUCCEEDED and job.attempts == 1
    assert fal_queue.submitted() == {job.prompt: 2}
    new = next(r for r in fal_queue.submissions if r != old.request_id)
    assert job.provider_request_id == new and job.image.provider_request_id == new
    assert fal_queue.cancels == []


def test_a_request_fal_failed_is_submitted_anew_and_billed_once(fal_queue, thread_consumer):
    fal_queue.fail_next_submission("GPU worker crashed", "internal_server_error")
    request, job = run_one(thread_consumer)
    assert request.status == Req.COMPLETED and job.attempts == 2
    assert fal_queue.submitted() == {job.prompt: 2}
    assert fal_queue.bills() == {job.prompt: 1}  # fal bills no failed output


def test_a_content_policy_refusal_fails_without_resubmitting(fal_queue, thread_consumer):
    fal_queue.fail_next_submission("NSFW content detected", "content_policy_violation")
    request, job = run_one(thread_consumer)
    assert job.status == Job.FAILED and "content policy" in job.error
    assert fal_queue.submitted() == {job.prompt: 1} and job.attempts == 1


def test_the_request_is_cancelled_only_when_the_job_gives_up(fal_queue, thread_consumer):
    """Every status call fails: each of the 4 attempts resumes the one request (never a
    second submission), and only the final failure cancels it at fal, unbilled."""
    fal_queue.latency = 30.0
    fal_queue.fail("status", times=1000, status=500, detail="status service down")
    request, job = run_one(thread_consumer)
    assert job.status == Job.FAILED and job.attempts == 4
    assert fal_queue.submitted() == {job.prompt: 1}
    # Once, at the end (right after the job is marked failed).
    wait_for(lambda: fal_queue.cancels, 10, message="the request cancelled")
    assert fal_queue.cancels == list(fal_queue.submissions)
    assert fal_queue.bills() == {}
    job.refresh_from_db()
    assert job.provider_request_id == ""  # given up: a "retry failed" submits anew


def test_a_new_process_resumes_through_fal_clients_handle(fal_queue):
    """Resuming needs only the stored id and endpoint: a model built afresh (another
    worker) rebuilds fal's URLs from owner/app, as fal-client's get_handle does."""
    call = get_provider(MODEL).submit(f"{THEME} 2", seed=5)
    reset_cache()
    image = get_provider(MODEL).result(ProviderCall(call.request_id, MODEL_ENDPOINT))
    assert (image.width, image.height, image.seed) == (64, 48, 5)
    assert fal_queue.submitted() == {f"{THEME} 2": 1}


def test_a_cancelled_request_cancels_its_call_at_fal(fal_queue, thread_consumer):
    """The editor cancels while the call waits; the wait fails (a status error), and instead
    of another attempt the job is cancelled and so is its request at fal, unbilled."""
    from generation import services

    fal_queue.latency = 30.0
    request = make_request(1, theme=THEME, image_model=MODEL)
    queue_jobs(list(request.jobs.values_list("pk", flat=True)))
    wait_for(lambda: fal_queue.calls["status"] >= 1, 30, message="the call under way")
    services.cancel_request(request)
    fal_queue.fail("status", times=1, status=500, detail="status service down")
    wait_for(
        lambda: request.jobs.filter(status=Job.CANCELLED).exists(), 30, message="job cancelled"
    )
    job = request.jobs.get()
    assert job.attempts == 1 and fal_queue.submitted() == {job.prompt: 1}
    wait_for(lambda: fal_queue.cancels, 10, message="the request cancelled")
    assert fal_queue.cancels == list(fal_queue.submissions)
    assert fal_queue.bills() == {}


def test_a_request_stored_after_the_job_was_read_is_resumed_not_submitted_again(fal_queue):
    """Worker B reads the job; worker A, frozen past its claim, wakes and stores the request
    it had submitted; A's claim runs out and B claims the job. B must collect A's request,
    not submit from the job it read before the request was stored."""
    from generation import services

    request = make_request(1, theme=THEME, image_model=MODEL)
    job_read_by_b = services.runnable_job(request.jobs.get().pk)
    model = get_provider(MODEL)

    a = services.runnable_job(job_read_by_b.pk)
    assert services.claim_job(a, "token-a", 60)
    assert services.record_call(a.pk, "token-a", model.submit(a.prompt, seed=a.seed))
    GenerationJob.objects.filter(pk=a.pk).update(
        claim_expires_at=datetime.datetime(2000, 1, 1, tzinfo=datetime.UTC)
    )

    assert services.claim_job(job_read_by_b, "token-b", 60)
    services.generate(job_read_by_b, model, "token-b").close()
    assert fal_queue.submitted() == {a.prompt: 1}  # collected, not paid again


def test_a_submission_whose_reply_is_lost_is_not_sent_again_by_the_client(fal_queue):
    """fal accepts a submission but its reply comes after the client's timeout. The
    submission is not resent within the call (each resend is another paid image): the call
    fails as transient, with one submission at the provider, billed once."""
    fal_queue.configure(http_timeout=0.5, max_attempts=3)
    fal_queue.delay_submit_replies(1.5, times=3)
    model = get_provider(MODEL)
    with pytest.raises(TransientProviderError) as raised:
        model.submit(THEME, seed=7)
    wait_for(lambda: fal_queue.bills(), 5, message="the accepted submission billed")
    assert fal_queue.submitted() == {THEME: 1}
    assert fal_queue.bills() == {THEME: 1}
    assert "reply was lost" in raised.value.reason


def test_a_request_whose_id_could_not_be_stored_is_cancelled(fal_queue, monkeypatch):
    """The database never answered the write of the submitted request's id: the attempt
    gives up, and the request it can no longer collect is cancelled at fal."""
    from django.db import OperationalError
    from django.db.models import QuerySet

    from generation import services

    update = QuerySet.update

    def database_gone_for_request_ids(queryset, **fields):
        if fields.get("provider_request_id"):
            raise OperationalError("server closed the connection unexpectedly")
        return update(queryset, **fields)

    monkeypatch.setattr("generation.retrying.OUTSIDE_TASK_ATTEMPTS", 2)
    monkeypatch.setattr(QuerySet, "update", database_gone_for_request_ids)
    request = make_request(1, theme=THEME, image_model=MODEL)
    job = services.runnable_job(request.jobs.get().pk)
    assert services.claim_job(job, "token", 60)
    with pytest.raises(OperationalError):
        services.generate(job, get_provider(MODEL), "token")
    assert list(fal_queue.submissions) and fal_queue.cancels == list(fal_queue.submissions)
