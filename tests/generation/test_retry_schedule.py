"""When a failed provider call is tried again: exponential back-off with jitter, and a
provider's Retry-After honoured when it asks for longer (services.retry_delay, and the
schedule an image job's retry really gets)."""

import datetime
import statistics
import time

import pytest
from huey.contrib.djhuey import HUEY

from generation import services
from generation.models import GenerationJob
from generation.providers import reset_cache
from tests.support.consumers import wait_for
from tests.support.factories import make_request

Job = GenerationJob.Status
SAMPLES = 200


def delays(attempt: int, retry_after: float | None, base: float, cap: float) -> list[float]:
    policy_cap = 60.0  # RETRY_AFTER_CAP, the policy default
    return [
        services.retry_delay(attempt, retry_after, base, cap, retry_after_cap=policy_cap)
        for _ in range(SAMPLES)
    ]


def test_the_backoff_doubles_per_attempt_up_to_its_cap_with_jitter():
    for attempt, nominal in [(1, 2.0), (2, 4.0), (3, 8.0), (5, 32.0), (6, 60.0), (12, 60.0)]:
        drawn = delays(attempt, None, base=2.0, cap=60.0)
        # Jitter: anywhere from half to one and a half times the nominal back-off.
        assert all(0.5 * nominal <= delay <= 1.5 * nominal for delay in drawn), (attempt, drawn)
        assert len(set(drawn)) > SAMPLES / 2  # spread, so retries do not come in step
        assert 0.8 * nominal <= statistics.mean(drawn) <= 1.2 * nominal


def test_a_longer_retry_after_is_the_delay():
    # Seven seconds, over the test settings' back-off (0.05 s doubling up to 0.2 s).
    for attempt in (1, 2, 3, 4):
        assert set(delays(attempt, 7.0, base=0.05, cap=0.2)) == {7.0}


def test_a_shorter_retry_after_does_not_shorten_the_backoff():
    drawn = delays(4, 1.0, base=2.0, cap=60.0)  # nominal 16 s
    assert min(drawn) >= 8.0


def _eta_timestamp(task) -> float:
    eta = task.eta
    if eta.tzinfo is None:  # Huey keeps naive times, in UTC when HUEY.utc
        eta = eta.replace(tzinfo=datetime.UTC if HUEY.utc else None)
    return eta.timestamp()


@pytest.mark.django_db(transaction=True)
@pytest.mark.usefixtures("collections")
def test_a_rate_limited_image_job_is_retried_when_the_provider_says(
    settings, demo, thread_consumer
):
    """A 429 with Retry-After: 7 re-schedules the job 7 s on, not after the short back-off
    (0.2 s at most in the test settings)."""
    from generation.tasks import limiter_for, queue_jobs

    settings.KARASU["IMAGE_MODELS"]["rate-limited"] = {
        **settings.KARASU["IMAGE_MODELS"]["demo"],
        "CLASS": "tests.support.providers.RateLimitedDemo",
        "RETRY_AFTER": 7,
    }
    reset_cache()
    limiter_for.cache_clear()
    request = make_request(1, image_model="rate-limited", theme="烏の群れ")
    job = request.jobs.get()
    queued_at = time.time()
    queue_jobs([job.pk])

    def retrying():
        job.refresh_from_db()
        return job.status == Job.RETRYING

    wait_for(retrying, 20, interval=0.05, message="the job retrying after its 429")
    seen_at = time.time()
    assert "429" in job.error and job.attempts == 1

    def scheduled():
        return [task for task in HUEY.scheduled() if task.name.endswith("generate_image")]

    [retry] = wait_for(scheduled, 5, interval=0.05, message="the retry in the schedule")
    assert retry.args == (job.pk,)
    eta = _eta_timestamp(retry)
    assert queued_at + 7.0 - 0.5 <= eta <= seen_at + 7.0 + 0.5, (
        eta - queued_at,
        seen_at - queued_at,
    )
