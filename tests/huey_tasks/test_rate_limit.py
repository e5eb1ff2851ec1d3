"""The requests-per-minute limit holds exactly under concurrency, on every storage.

``RequestsPerMinute`` counts each fixed window under its own key with the storage's atomic
``incr``; Huey's stock ``RateLimit`` resets one shared counter with read, delete, put.
"""

import threading
import time
import uuid
from types import SimpleNamespace

import pytest
from huey.api import RateLimit
from huey.contrib.djhuey import HUEY
from huey.exceptions import RateLimitExceeded

from generation.limits import limiter_for, rate_limit_for
from generation.models import GenerationJob
from generation.providers import get_image_model, reset_cache
from generation.tasks import fair_priority, queue_jobs
from huey_tasks.limiter import (
    DEFAULT_SLOT_WAIT,
    RATE_JITTER,
    ConcurrencyLimiter,
    RequestsPerMinute,
)
from huey_tasks.models import TaskRun
from tests.support.factories import make_request

PERIOD = 60.0
LIMIT = 30
THREADS = 16
TRIES = 50


def window_start(now: float | None = None) -> float:
    """The start of a window well away from now's, so runs never share counters."""
    return (int((now or time.time()) // PERIOD) + 1000) * PERIOD


def hammer(limiter: RequestsPerMinute, moments: list[float]) -> tuple[dict, list[float]]:
    """THREADS threads, each acquiring at each of ``moments``: wins per window, and the
    delays of the refusals."""
    wins: dict[int, list[int]] = {}
    delays: list[float] = []
    lock = threading.Lock()
    barrier = threading.Barrier(THREADS)
    errors = []

    def worker() -> None:
        try:
            barrier.wait()
            for now in moments:
                window = limiter.window(now)
                try:
                    count = limiter.acquire(now=now)
                except RateLimitExceeded as exc:
                    assert exc.retry  # re-scheduled by Huey without using up a retry
                    with lock:
                        delays.append(exc.delay)
                else:
                    with lock:
                        wins.setdefault(window, []).append(count)
        except BaseException as exc:  # reported by the main thread
            errors.append(exc)

    threads = [threading.Thread(target=worker) for _ in range(THREADS)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(120)
    assert not errors, errors
    return wins, delays


def check_exact(storage) -> None:
    limiter = RequestsPerMinute(
        SimpleNamespace(storage=storage), f"t-{uuid.uuid4().hex[:8]}", LIMIT, PERIOD
    )
    start = window_start()
    wins, delays = hammer(limiter, [start + 10 + i * 0.01 for i in range(TRIES)])
    assert list(wins) == [limiter.window(start)]
    assert sorted(wins[limiter.window(start)]) == list(range(1, LIMIT + 1))
    assert len(delays) == THREADS * TRIES - LIMIT


def check_window_edge(storage) -> None:
    """Requests on both sides of a window's edge at once: each window gets its limit."""
    limiter = RequestsPerMinute(
        SimpleNamespace(storage=storage), f"t-{uuid.uuid4().hex[:8]}", LIMIT, PERIOD
    )
    edge = window_start()
    moments = [edge - 0.001 if i % 2 else edge + 0.001 for i in range(TRIES)]
    wins, delays = hammer(limiter, moments)
    assert {window: sorted(counts) for window, counts in wins.items()} == {
        limiter.window(edge) - 1: list(range(1, LIMIT + 1)),
        limiter.window(edge): list(range(1, LIMIT + 1)),
    }
    assert len(delays) == THREADS * TRIES - 2 * LIMIT


def test_exactly_the_limit_per_window_under_concurrency(make_storage):
    storage = make_storage()
    check_exact(storage)
    check_window_edge(storage)


@pytest.mark.django_db
def test_exactly_the_limit_per_window_on_the_projects_queue_storage(queue_backend):
    check_exact(HUEY.storage)
    check_window_edge(HUEY.storage)


def test_refusals_wait_to_the_window_end_plus_jitter(make_storage):
    limiter = RequestsPerMinute(SimpleNamespace(storage=make_storage()), "jitter", 1, PERIOD)
    start = window_start()
    limiter.acquire(now=start)
    delays = []
    for i in range(200):
        now = start + 45 + i * 0.01
        remainder = start + PERIOD - now
        with pytest.raises(RateLimitExceeded) as refused:
            limiter.acquire(now=now)
        assert remainder <= refused.value.delay <= remainder + RATE_JITTER * PERIOD
        delays.append(refused.value.delay - remainder)
    # Spread out, not a stampede at the window's edge (200 draws from [0, 15 s]).
    assert max(delays) - min(delays) > 5
    assert len({round(d, 3) for d in delays}) > 150


def test_old_windows_counters_are_deleted(make_storage):
    storage = make_storage()
    limiter = RequestsPerMinute(SimpleNamespace(storage=storage), "tidy", LIMIT, PERIOD)
    start = window_start()
    window = limiter.window(start)
    for offset in range(3):
        limiter.acquire(now=start + offset * PERIOD)
    # Opening window + 2 deleted window's counter; the previous one is kept for late
    # requests (a thread that read the clock just before the edge).
    assert storage.incr(limiter.key(window), 0) == 0
    assert storage.incr(limiter.key(window + 1), 0) == 1
    assert storage.incr(limiter.key(window + 2), 0) == 1
    # After a lull, this process also deletes the counter of its last window.
    limiter.acquire(now=start + 10 * PERIOD)
    assert storage.incr(limiter.key(window + 2), 0) == 0
    assert storage.incr(limiter.key(window + 10), 0) == 1


def test_a_failed_cleanup_does_not_refuse_the_request(make_storage):
    storage = make_storage()

    class Flaky:
        def __getattr__(self, name):
            return getattr(storage, name)

        def delete_counter(self, key):
            raise ConnectionError("the counter store is away")

    limiter = RequestsPerMinute(SimpleNamespace(storage=Flaky()), "flaky", LIMIT, PERIOD)
    start = window_start()
    assert [limiter.acquire(now=start + i * PERIOD) for i in range(3)] == [1, 1, 1]


def test_arguments_are_checked():
    with pytest.raises(ValueError):
        RequestsPerMinute(HUEY, "x", 0)
    with pytest.raises(ValueError):
        RequestsPerMinute(HUEY, "x", 1, period=0)


# The race in Huey's stock RateLimit, and the same interleaving against RequestsPerMinute.
# Worker B starts its acquisition and is paused (a GIL switch, a slow storage round trip);
# meanwhile worker A uses up the window; then B goes on.
def paused_worker(acquire, paused: threading.Event, resume: threading.Event, allowed: list):
    def run() -> None:
        try:
            acquire()
            allowed.append("B")
        except RateLimitExceeded:
            pass

    thread = threading.Thread(target=run, name="worker-b")
    thread.start()
    assert paused.wait(10), "worker B never reached its pause"
    return thread


def fill_window(acquire, allowed: list) -> None:
    for _ in range(LIMIT + 5):
        try:
            acquire()
            allowed.append("A")
        except RateLimitExceeded:
            pass


@pytest.mark.django_db
def test_hueys_stock_rate_limit_lets_more_through_than_its_limit(queue_backend, monkeypatch):
    # An hour's window so the test never spans two of them.
    stock = RateLimit(HUEY, f"stock-{uuid.uuid4().hex[:8]}", LIMIT, 3600)
    paused, resume, allowed = threading.Event(), threading.Event(), []
    original_get = HUEY.get

    def get(key, peek=False):
        value = original_get(key, peek=peek)
        if key == stock._window_key and threading.current_thread().name == "worker-b":
            paused.set()  # B has read the window marker: not yet this window's
            resume.wait(10)
        return value

    monkeypatch.setattr(HUEY, "get", get)
    b = paused_worker(stock.acquire, paused, resume, allowed)
    fill_window(stock.acquire, allowed)
    assert allowed.count("A") == LIMIT  # alone, A is held to the limit
    resume.set()
    b.join(10)
    # B resets the counter A filled: one request more than the limit in one window.
    assert allowed.count("B") == 1 and len(allowed) == LIMIT + 1
    stock.reset()


def test_requests_per_minute_holds_in_the_same_interleaving(make_storage):
    storage = make_storage()
    paused, resume, allowed = threading.Event(), threading.Event(), []

    class Pausing:
        def __getattr__(self, name):
            return getattr(storage, name)

        def incr(self, key, amount=1):
            if threading.current_thread().name == "worker-b":
                paused.set()  # B has read the clock, and counts only now
                resume.wait(10)
            return storage.incr(key, amount)

    limiter = RequestsPerMinute(SimpleNamespace(storage=Pausing()), "same", LIMIT, PERIOD)
    now = window_start() + 1
    b = paused_worker(lambda: limiter.acquire(now=now), paused, resume, allowed)
    fill_window(lambda: limiter.acquire(now=now), allowed)
    assert allowed.count("A") == LIMIT
    resume.set()
    b.join(10)
    assert allowed.count("B") == 0 and len(allowed) == LIMIT


# Slot waits ------------------------------------------------------------------------------
@pytest.mark.django_db
def test_slot_waits_are_jittered(queue_backend):
    limiter = ConcurrencyLimiter(HUEY, f"jitter-{uuid.uuid4().hex[:8]}", 1)
    held = limiter.try_acquire()
    assert held is not None
    try:
        delays = []
        for _ in range(50):
            with pytest.raises(RateLimitExceeded) as refused:
                with limiter.slot(patience=0):
                    pass
            delays.append(refused.value.delay)
    finally:
        limiter.release(held)
    assert all(DEFAULT_SLOT_WAIT <= d <= 1.5 * DEFAULT_SLOT_WAIT for d in delays)
    assert max(delays) - min(delays) > 0.1 * DEFAULT_SLOT_WAIT


# generate_image ---------------------------------------------------------------------------
@pytest.fixture
def demo_rpm(settings):
    def configure(rpm):
        settings.KARASU["IMAGE_MODELS"]["demo"] = {
            **settings.KARASU["IMAGE_MODELS"]["demo"],
            "LATENCY": 0,
            "FAILURE_RATE": 0,
            "REJECT_RATE": 0,
            "REQUESTS_PER_MINUTE": rpm,
        }
        reset_cache()
        limiter_for.cache_clear()

    yield configure
    reset_cache()
    limiter_for.cache_clear()


def test_rate_limit_for_follows_the_models_setting(demo_rpm):
    demo_rpm(0)
    assert rate_limit_for(get_image_model("demo")) is None
    demo_rpm(7)
    limit = rate_limit_for(get_image_model("demo"))
    assert isinstance(limit, RequestsPerMinute)
    assert (limit.name, limit.limit, limit.period) == ("image:demo", 7, 60.0)
    assert rate_limit_for(get_image_model("demo")) is limit  # one per model and limit


# Transactional: the ledger closes the connection a worker thread gets (not in a test's
# transaction).
@pytest.mark.django_db(transaction=True)
@pytest.mark.usefixtures("collections")
def test_generate_image_over_the_limit_waits_without_using_an_attempt(queue_backend, demo_rpm):
    demo_rpm(2)
    if PERIOD - time.time() % PERIOD < 3:  # keep the three runs in one window
        time.sleep(PERIOD - time.time() % PERIOD + 0.1)
    HUEY.storage.flush_counters()
    request = make_request(3)
    queue_jobs(list(request.jobs.values_list("pk", flat=True)))
    for _ in range(3):
        task = HUEY.dequeue()
        HUEY.execute(task)
    jobs = list(request.jobs.order_by("index"))
    assert [job.status for job in jobs].count(GenerationJob.Status.SUCCEEDED) == 2
    [waiting] = [job for job in jobs if job.status != GenerationJob.Status.SUCCEEDED]
    assert waiting.status == GenerationJob.Status.QUEUED and waiting.attempts == 0
    # Re-scheduled past the window's end, keeping its priority and its retries.
    assert HUEY.storage.schedule_size() == 1
    [scheduled] = HUEY.scheduled()
    assert scheduled.args == (waiting.pk,) and scheduled.retries == 0
    assert scheduled.priority == fair_priority(waiting.index)
    run = TaskRun.objects.get(task_id=scheduled.id)
    # Not a failure, and not a retry either (Huey signals RETRYING right after it).
    assert run.status == TaskRun.Status.RATE_LIMITED
    assert "waiting for a slot" in run.log and not run.error_class
    assert HUEY.storage.slots_in_use(limiter_for("demo").name) == 0
