import contextlib
import threading

import pytest
from huey.contrib.djhuey import HUEY

from generation.limits import limiter_for
from generation.models import GenerationJob, GenerationRequest
from generation.providers import reset_cache
from tests.support.consumers import wait_for


@pytest.fixture
def call_log(tmp_path):
    return tmp_path / "provider-calls.log"


@pytest.fixture
def demo(settings, call_log):
    """Tune the demo image provider for one test; every call is written to ``call_log``."""

    def configure(**knobs):
        settings.KARASU["IMAGE_MODELS"]["demo"] = {
            **settings.KARASU["IMAGE_MODELS"]["demo"],
            **{key.upper(): value for key, value in knobs.items()},
        }
        reset_cache()
        limiter_for.cache_clear()

    configure(
        latency=0,
        failure_rate=0,
        reject_rate=0,
        concurrency=8,
        call_log=str(call_log),
        max_failure_streak=2,
    )
    yield configure
    reset_cache()
    limiter_for.cache_clear()


@pytest.fixture
def thread_consumer_factory():
    """Start a real consumer (thread workers) on the queue as it is, for part of a test."""

    @contextlib.contextmanager
    def start(workers: int = 8):
        consumer = HUEY.create_consumer(workers=workers, periodic=False)
        consumer._set_signal_handlers = lambda: None  # only the main thread may
        runner = threading.Thread(target=consumer.run, daemon=True)
        runner.start()
        wait_for(
            lambda: (
                len(consumer.worker_threads) == workers
                and all(thread.is_alive() for _, thread in consumer.worker_threads)
            ),
            10,
            interval=0.01,
            message="consumer started",
        )
        try:
            yield consumer
        finally:
            consumer.stop(graceful=True)
            runner.join(30)

    return start


@pytest.fixture
def reliability_report(request):
    """``report(scenario, requests, call_log)``: what happened to every job of a scenario.

    With KARASU_RELIABILITY_REPORT set (bench/reliability.py), each figure is appended to
    that file as a JSON line; the README's reliability table is made from them.
    """
    import json
    import os

    from wagtail.images import get_image_model

    from tests.support.provider_calls import calls_paid_twice, overlapping_calls

    def report(scenario: str, requests, call_log=None, deaths=None) -> dict:
        jobs = GenerationJob.objects.filter(request__in=requests)
        images = get_image_model().objects.filter(
            generation_request_id__in=[r.pk for r in requests]
        )
        succeeded = jobs.filter(status=GenerationJob.Status.SUCCEEDED)
        backend = getattr(request.node, "callspec", None)
        backend = backend.params.get("queue_backend") if backend else None
        if backend and f"({backend})" not in scenario:
            scenario = f"{scenario} ({backend})"
        figures = {
            "scenario": scenario,
            "jobs": jobs.count(),
            "succeeded": succeeded.count(),
            "failed with a reason": jobs.filter(status=GenerationJob.Status.FAILED)
            .exclude(error="")
            .count(),
            # Final without a result or a reason: the work vanished.
            "lost": succeeded.filter(image=None).count()
            + jobs.filter(status=GenerationJob.Status.FAILED, error="").count(),
            "stuck": jobs.filter(status__in=GenerationJob.OPEN).count()
            + sum(
                1
                for r in requests
                if GenerationRequest.objects.get(pk=r.pk).status not in GenerationRequest.TERMINAL
            ),
            "duplicate images": images.count()
            - images.values("generation_job_id").distinct().count()
            + images.filter(generation_job_id=None).count(),
            # Two calls for one job in flight at once (a killed worker's call ends at its death).
            "duplicate provider calls": len(overlapping_calls(call_log, deaths=deaths))
            if call_log
            else 0,
            # A job's image paid for again: its first result was lost (e.g. its worker was
            # killed between the call and filing), so the job called once more.
            "paid twice": calls_paid_twice(call_log) if call_log else 0,
        }
        path = os.environ.get("KARASU_RELIABILITY_REPORT")
        if path:
            with open(path, "a") as handle:
                handle.write(json.dumps({**figures, "test": request.node.nodeid}) + "\n")
        return figures

    return report
