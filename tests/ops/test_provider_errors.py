"""Provider errors counted by model and kind through the real task path: fal.ai through the
real fal-client and an OpenAI-compatible LLM with their HTTP faked by respx, the demo model's
content-policy rejections, all run by a real consumer; and counting never changes a job's
outcome."""

import threading

import httpx
import pytest
import respx
from django.core.management import call_command
from django.core.management.base import CommandError
from django.db import OperationalError, close_old_connections

from generation.models import GenerationJob, GenerationRequest
from generation.providers import TransientProviderError, get_llm, reset_cache
from generation.providers.errors import error_for_status
from ops.counters import increment
from ops.models import ProviderErrorCount
from tests.support.consumers import wait_for

pytestmark = [pytest.mark.django_db(transaction=True), pytest.mark.usefixtures("collections")]
FAL_SUBMIT = "https://queue.fal.run/fal-ai/flux/schnell"
OPENAI_URL = "https://llm.example.test/v1"
ERRORS = "karasu_provider_errors_total"


def errors(type="image", provider="demo"):
    return {
        kind: count
        for kind, count in ProviderErrorCount.objects.filter(
            type=type, provider=provider
        ).values_list("kind", "count")
    }


@pytest.fixture
def fal(settings):
    settings.FAL_KEY = "fal-key-id:SECRETSECRETSECRETfalsecret"
    settings.KARASU["IMAGE_MODELS"]["flux-schnell"] = {
        **settings.KARASU["IMAGE_MODELS"]["flux-schnell"],
        "POLL_INTERVAL": 0.01,
        "TIMEOUT": 5,
        "MAX_ATTEMPTS": 1,  # no retries inside fal-client
    }
    reset_cache()
    with respx.mock(assert_all_called=False) as router:
        yield router


def test_error_for_status_marks_429_as_rate_limited():
    assert error_for_status("x", 429, "slow down").rate_limited is True
    for status in (408, 500, 503, 529):
        error = error_for_status("x", status, "busy")
        assert isinstance(error, TransientProviderError) and error.rate_limited is False
    assert TransientProviderError("timed out").rate_limited is False


def test_fal_429s_are_rate_limited_and_a_503_transient(fal, thread_consumer, scrape):
    # The job's four attempts: a 503, then three 429s; then it fails.
    submit = fal.post(FAL_SUBMIT).mock(
        side_effect=[
            httpx.Response(503, json={"detail": "overloaded"}),
            *[httpx.Response(429, json={"detail": "Too many requests"})] * 3,
        ]
    )
    with pytest.raises(CommandError):
        call_command(
            "generate",
            "Crows",
            "--count",
            "1",
            "--image-model",
            "flux-schnell",
            "--wait",
            "--timeout",
            "60",
        )
    job = GenerationJob.objects.get()
    assert job.status == GenerationJob.Status.FAILED and "429" in job.error
    assert submit.call_count == 4
    assert errors(provider="flux-schnell") == {"transient": 1, "rate_limited": 3}

    samples = scrape()
    labels = {"type": "image", "provider": "flux-schnell"}
    assert samples.value(ERRORS, kind="rate_limited", **labels) == 3
    assert samples.value(ERRORS, kind="transient", **labels) == 1
    assert samples.value(ERRORS, kind="permanent", **labels) == 0


def test_content_policy_rejections_are_permanent(demo, thread_consumer, scrape):
    demo(reject_rate=1.0)
    with pytest.raises(CommandError):
        call_command("generate", "Crows", "--count", "3", "--wait", "--timeout", "60")
    assert errors() == {"permanent": 3}  # one call per job: a permanent error is not retried
    samples = scrape()
    assert samples.value(ERRORS, type="image", provider="demo", kind="permanent") == 3
    assert samples.value(ERRORS, type="image", provider="demo", kind="transient") == 0


@pytest.mark.django_db
def test_a_job_refused_before_any_call_is_not_a_provider_error():
    """An unknown model or a deleted source image fails the job; the provider made no error."""
    from generation.providers import UnknownProvider
    from generation.providers.errors import NotCalled
    from generation.signals import report_llm_error, report_provider_error

    report_provider_error("demo", NotCalled("its source image was deleted"))
    report_provider_error("renamed-model", UnknownProvider("unknown image model"))
    report_llm_error(1, UnknownProvider("unknown LLM"))
    assert not ProviderErrorCount.objects.exists()
    report_provider_error("demo", error_for_status("demo", 400, "bad request"))
    assert errors() == {"permanent": 1}


def test_llm_errors_are_counted_under_the_llm(settings, thread_consumer, scrape):
    settings.OPENAI_API_KEY = "sk-test-SECRETSECRETSECRET"
    settings.OPENAI_BASE_URL = OPENAI_URL
    reset_cache()
    with respx.mock(assert_all_called=False) as router:
        completions = router.post(f"{OPENAI_URL}/chat/completions").mock(
            side_effect=[
                httpx.Response(429, json={"error": {"message": "slow down"}}),
                httpx.Response(401, json={"error": {"message": "bad key"}}),
            ]
        )
        call_command("generate", "Crows", "--count", "2", "--llm", "openai")
        wait_for(
            lambda: errors("llm", "openai").get("rate_limited") == 1, 30, message="the 429 counted"
        )
        # A second request: its call is refused (401), a permanent error; the request fails.
        call_command("generate", "Ravens", "--count", "2", "--llm", "openai")
        ravens = GenerationRequest.objects.get(theme="Ravens")
        wait_for(
            lambda: GenerationRequest.objects.get(pk=ravens.pk).status == "failed",
            30,
            message="the refused request to fail",
        )
    assert completions.call_count == 2
    assert errors("llm", "openai") == {"rate_limited": 1, "permanent": 1}
    samples = scrape()
    llm = {"type": "llm", "provider": "openai"}
    assert samples.value(ERRORS, kind="rate_limited", **llm) == 1
    assert samples.value(ERRORS, kind="permanent", **llm) == 1
    assert samples.value(ERRORS, kind="transient", **llm) == 0


def test_openai_rate_limit_is_marked_by_the_provider(settings):
    settings.OPENAI_API_KEY = "sk-test-SECRETSECRETSECRET"
    settings.OPENAI_BASE_URL = OPENAI_URL
    reset_cache()
    with respx.mock() as router:
        router.post(f"{OPENAI_URL}/chat/completions").mock(
            return_value=httpx.Response(
                429, json={"error": {"message": "slow down"}}, headers={"retry-after": "7"}
            )
        )
        with pytest.raises(TransientProviderError) as error:
            get_llm("openai").expand("crows", 2)
    assert error.value.rate_limited is True and error.value.retry_after == 7


def test_a_failing_count_never_changes_the_outcome(demo, thread_consumer, monkeypatch, caplog):
    def broken(*args):
        raise OperationalError("database is locked")

    monkeypatch.setattr("ops.counters.increment", broken)
    # Rejected: the job fails for its own reason, not as an infrastructure error.
    demo(reject_rate=1.0)
    with pytest.raises(CommandError):
        call_command("generate", "Crows", "--count", "1", "--wait", "--timeout", "60")
    job = GenerationJob.objects.get()
    assert job.status == GenerationJob.Status.FAILED
    assert "rejected by content policy" in job.error and "infrastructure" not in job.error
    # Two transient failures, then a success: the image is filed after three calls.
    demo(reject_rate=0, failure_rate=1.0, max_failure_streak=2)
    call_command("generate", "Ravens", "--count", "1", "--wait", "--timeout", "60")
    job = GenerationJob.objects.get(request__theme="Ravens")
    assert job.status == GenerationJob.Status.SUCCEEDED and job.attempts == 3
    assert not ProviderErrorCount.objects.exists()
    assert "Could not count" in caplog.text


def test_concurrent_first_errors_are_all_counted():
    threads, per_thread = 8, 25
    barrier = threading.Barrier(threads)

    def count():
        try:
            barrier.wait()
            for _ in range(per_thread):
                increment("image", "flux-dev", "transient")
        finally:
            close_old_connections()

    workers = [threading.Thread(target=count) for _ in range(threads)]
    for worker in workers:
        worker.start()
    for worker in workers:
        worker.join(60)
    assert errors(provider="flux-dev") == {"transient": threads * per_thread}
