"""The demo image provider's test knobs, the call-log helpers, and settings isolation."""

import math
import os
import subprocess
import sys
import threading
import time

import pytest
from django.conf import settings

from generation.providers import (
    HandedBack,
    PermanentProviderError,
    ProviderCall,
    RequestFailed,
    RequestGone,
    TransientProviderError,
    get_image_model,
)
from generation.providers.demo import (
    EXPIRES_AFTER,
    MAX_CONSECUTIVE_FAILURES,
    DemoImageModel,
    call_key,
)
from tests.support.provider_calls import (
    Call,
    calls_paid_twice,
    calls_per_key,
    max_in_flight,
    overlapping_calls,
    paid_submissions,
    read_calls,
    resumed_calls,
)

# Hand-written: two processes (100, 200), jobs a, b, c, d. b has two calls that overlap in
# process 100; c was called twice, one after the other; d's call never ended.
LOG = """\
start a 100 10.0 c1
start b 100 10.5 c2
end a 100 11.0 ok c1
start b 100 10.8 c3
start c 200 11.0 c4
end b 100 12.0 transient c2
end c 200 12.0 transient c4
start c 200 12.0 c5
end b 100 12.5 ok c3
start d 200 12.2 c6
end c 200 13.0 ok c5
"""


@pytest.fixture
def log(tmp_path):
    path = tmp_path / "calls.log"
    path.write_text(LOG)
    return path


def test_read_calls_pairs_starts_and_ends(log):
    calls = read_calls(log)
    assert [(call.key, call.start, call.end, call.outcome) for call in calls] == [
        ("a", 10.0, 11.0, "ok"),
        ("b", 10.5, 12.0, "transient"),
        ("b", 10.8, 12.5, "ok"),
        ("c", 11.0, 12.0, "transient"),
        ("c", 12.0, 13.0, "ok"),
        ("d", 12.2, math.inf, None),
    ]
    assert calls[-1].open and {call.pid for call in calls} == {100, 200}
    # A process known dead closes its open calls at its death.
    assert read_calls(log, deaths={200: 14.0})[-1].end == 14.0


def test_calls_per_key(log):
    assert calls_per_key(log) == {"a": 1, "b": 2, "c": 2, "d": 1}


def test_overlapping_calls_finds_only_same_key_overlaps(log):
    overlaps = overlapping_calls(log)
    assert [(key, first.call_id, second.call_id) for key, first, second in overlaps] == [
        ("b", "c2", "c3")
    ]  # c's calls touch at 12.0 but do not overlap; a, b, c, d overlap only each other


def test_an_open_call_overlaps_every_later_call_of_its_key(tmp_path):
    path = tmp_path / "calls.log"
    path.write_text("start k 1 5.0\nstart k 2 100.0\nend k 2 101.0 ok\n")
    assert [key for key, *_ in overlapping_calls(path)] == ["k"]  # open until +inf
    assert overlapping_calls(path, deaths={1: 6.0}) == []  # process 1 died at 6.0


def test_max_in_flight(log):
    # At 11.0 a ends as c starts: b, b, c are in flight; at 12.2: b(c3), c(c5), d.
    assert max_in_flight(log) == 3


def test_lines_without_call_ids_pair_first_in_first_out(tmp_path):
    path = tmp_path / "calls.log"
    path.write_text("start k 1 1.0\nstart k 1 2.0\nend k 1 3.0 ok\nend k 1 4.0 ok\n")
    assert [(call.start, call.end) for call in read_calls(path)] == [(1.0, 3.0), (2.0, 4.0)]
    assert len(overlapping_calls(path)) == 1


@pytest.mark.parametrize(
    "text",
    [
        "start a 1\n",
        "end a 1 2.0 ok\n",
        "start a 1 2.0 x\nend a 1 3.0 maybe x\n",
        "start a 1 2.0 xstart b 1 2.0 y\n",
        "start a 1 2.0 x\nend b 1 3.0 ok x\n",
    ],
)
def test_malformed_or_interleaved_lines_are_refused(tmp_path, text):
    path = tmp_path / "calls.log"
    path.write_text(text)
    with pytest.raises(ValueError, match="bad call log line"):
        read_calls(path)


def fails_in_a_row(model: DemoImageModel, prompt: str, calls: int) -> list[bool]:
    outcomes = []
    for _ in range(calls):
        try:
            model.generate(prompt)
            outcomes.append(False)
        except TransientProviderError:
            outcomes.append(True)
    return outcomes


def test_failure_streak_is_capped_by_default():
    model = DemoImageModel("demo", FAILURE_RATE=1.0)
    assert model.max_failure_streak == MAX_CONSECUTIVE_FAILURES == 2
    assert fails_in_a_row(model, "a crow on a wire", 6) == [True, True, False] * 2


def test_failure_streak_cap_is_configurable():
    model = DemoImageModel("demo", FAILURE_RATE=1.0, MAX_FAILURE_STREAK=1)
    assert fails_in_a_row(model, "a crow on a wire", 4) == [True, False] * 2


@pytest.mark.parametrize("off", [0, None, ""])
def test_failure_streak_cap_can_be_switched_off(off):
    model = DemoImageModel("demo", FAILURE_RATE=1.0, MAX_FAILURE_STREAK=off)
    assert model.max_failure_streak is None
    assert fails_in_a_row(model, "a crow on a wire", 10) == [True] * 10


def test_call_log_records_every_call_with_its_outcome(tmp_path):
    path = tmp_path / "calls.log"
    model = DemoImageModel(
        "demo", LATENCY=0.05, CALL_LOG=str(path), MAX_FAILURE_STREAK=1, FAILURE_RATE=1.0
    )
    prompt = "a heron in the rain"
    with pytest.raises(TransientProviderError):
        model.generate(prompt)
    assert model.generate(prompt).data  # the streak cap lets the second call through
    model.reject_rate = 1.0
    with pytest.raises(PermanentProviderError):
        model.generate("a rejected prompt")

    calls = read_calls(path)
    assert [(call.key, call.outcome) for call in calls] == [
        (call_key(prompt), "transient"),
        (call_key(prompt), "ok"),
        (call_key("a rejected prompt"), "permanent"),
    ]
    assert all(call.pid == os.getpid() for call in calls)
    # The latency is inside the interval: it is the provider's in-flight time.
    assert all(call.end - call.start >= 0.05 for call in calls)
    assert calls[0].end <= calls[1].start


def test_call_log_off_by_default(tmp_path):
    model = DemoImageModel("demo")
    assert model.call_log == ""
    model.generate("a lantern at dusk")
    assert list(tmp_path.iterdir()) == []


def test_call_log_of_concurrent_threads_parses_and_overlaps_across_keys(tmp_path):
    path = tmp_path / "calls.log"
    model = DemoImageModel("demo", LATENCY=0.1, CALL_LOG=str(path))
    threads = [
        threading.Thread(target=model.generate, args=(f"prompt number {i}",)) for i in range(6)
    ]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert calls_per_key(path) == {call_key(f"prompt number {i}"): 1 for i in range(6)}
    assert overlapping_calls(path) == []
    assert max_in_flight(path) == 6  # all six slept at the same time


def test_call_log_lines_from_several_processes_never_interleave(tmp_path):
    path = tmp_path / "calls.log"
    # Rejected at once (no rendering): many short appends racing from four processes.
    script = (
        "import sys\n"
        "from generation.providers import PermanentProviderError\n"
        "from generation.providers.demo import DemoImageModel\n"
        "model = DemoImageModel('demo', REJECT_RATE=1.0, CALL_LOG=sys.argv[1])\n"
        "for i in range(300):\n"
        "    try:\n"
        "        model.generate(f'{sys.argv[2]} prompt {i}')\n"
        "    except PermanentProviderError:\n"
        "        pass\n"
    )
    workers = [
        subprocess.Popen([sys.executable, "-c", script, str(path), f"p{n}"], cwd=settings.BASE_DIR)
        for n in range(4)
    ]
    assert [worker.wait(60) for worker in workers] == [0] * 4
    calls = read_calls(path)  # raises on any torn or interleaved line
    assert len(calls) == 1200 and all(call.outcome == "permanent" for call in calls)
    assert len({call.pid for call in calls}) == 4
    assert set(calls_per_key(path).values()) == {1}


def test_nested_karasu_settings_are_restored_for_the_next_test(request, tmp_path):
    """Every test runs inside karasu_settings_restored (the autouse fixture), which puts
    nested settings changed in place back, and forgets the clients built with them."""
    import copy

    from tests.support.karasu_settings import karasu_settings_restored

    assert "restore_karasu_settings" in request.fixturenames
    karasu = settings.KARASU
    original = copy.deepcopy(karasu)
    with karasu_settings_restored():
        settings.KARASU["IMAGE_MODELS"]["demo"]["LATENCY"] = 99.0
        settings.KARASU["IMAGE_MODELS"]["demo"]["CALL_LOG"] = str(tmp_path / "calls.log")
        settings.KARASU.setdefault("RETRY", {})["MAX_RETRIES"] = 0
        settings.KARASU["IMAGE_MODELS"]["extra"] = {"CLASS": "x"}
        assert get_image_model("demo").latency == 99.0  # cached with the changed options
    assert settings.KARASU is karasu and karasu == original
    model = get_image_model("demo")
    demo = original["IMAGE_MODELS"]["demo"]
    assert model.latency == float(demo["LATENCY"])
    assert model.call_log == str(demo.get("CALL_LOG") or "")


def test_call_is_a_plain_record():
    call = Call("k", 1, 1.0, 2.0, "ok")
    assert (
        not call.open
        and call.overlaps(Call("k", 2, 1.5))
        and not call.overlaps(Call("k", 2, 2.0, 3.0, "ok"))
    )


# The demo queue: submissions, resumes from other processes, and paid counting -----------
RESUME_LOG = """\
start a 100 10.0 r1
start b 100 10.1 r2
start c 100 10.2 r3
resume a 200 14.0 r1
end a 200 15.0 ok r1
resume a 200 16.0 r1
end a 200 16.5 ok r1
start b 200 14.0 r4
end b 200 15.0 ok r4
end c 100 11.0 transient r3
start c 100 11.5 r5
end c 100 12.0 ok r5
"""


def test_resumed_calls_are_one_paid_submission_and_kills_are_paid(tmp_path):
    """a: submitted by 100, resumed (twice) by 200 after 100 died: one paid call. b: 100's
    submission was cut off by its death and 200 submitted again: paid twice. c: the
    provider failed the first submission (not billed), the second was paid."""
    path = tmp_path / "calls.log"
    path.write_text(RESUME_LOG)
    calls = {call.call_id: call for call in read_calls(path, deaths={100: 13.0})}
    assert (calls["r1"].pid, calls["r1"].end, calls["r1"].outcome) == (100, 15.0, "ok")
    assert calls["r1"].resumed_by == (200, 200)
    assert calls["r2"].open and calls["r2"].end == 13.0 and calls["r2"].paid
    assert not calls["r3"].paid
    assert calls_per_key(path) == {"a": 1, "b": 2, "c": 2}
    assert paid_submissions(path) == {"a": 1, "b": 2, "c": 1}
    assert calls_paid_twice(path) == 1
    assert [call.call_id for call in resumed_calls(path)] == ["r1"]


@pytest.mark.parametrize(
    "text",
    [
        "start a 1 2.0 x\nresume b 2 3.0 x\n",  # resumed under another key
        "resume a 2 3.0 x\n",  # never submitted
        "start a 1 2.0 x\nend a 2 3.0 ok x\n",  # ended by a process that never resumed it
    ],
)
def test_resume_lines_must_match_their_submission(tmp_path, text):
    path = tmp_path / "calls.log"
    path.write_text(text)
    with pytest.raises(ValueError, match="bad call log line"):
        read_calls(path)


RESUME_SCRIPT = """\
import os, sys
import django
os.environ["DJANGO_SETTINGS_MODULE"] = "cms.settings.test"
django.setup()
from generation.providers.demo import DemoImageModel
model = DemoImageModel("demo", LATENCY=float(sys.argv[3]), CALL_LOG=sys.argv[1],
                       STATE_DIR=sys.argv[2])
call = model.submit(sys.argv[4], aspect_ratio="16:9", seed=7)
print(call.request_id, flush=True)
model.result(call)  # killed while it waits
"""


def test_another_process_resumes_a_submission_whose_worker_was_killed(tmp_path):
    """The provider's state outlives the worker: the result is ready at submission time +
    latency for whoever asks, and asking again is a resume, not a second paid call."""
    path, state = tmp_path / "calls.log", tmp_path / "state"
    prompt = "「京都の烏」 at dusk — كروان 🐦"
    worker = subprocess.Popen(
        [sys.executable, "-c", RESUME_SCRIPT, str(path), str(state), "1.0", prompt],
        cwd=settings.BASE_DIR,
        stdout=subprocess.PIPE,
        text=True,
    )
    request_id = worker.stdout.readline().strip()
    worker.kill()
    worker.wait(10)
    submitted = read_calls(path)[0].start
    model = DemoImageModel("demo", LATENCY=1.0, CALL_LOG=str(path), STATE_DIR=str(state))
    image = model.result(ProviderCall(request_id, "demo"))
    assert (image.width, image.height, image.seed) == (640, 360, 7)
    assert image.provider_request_id == request_id
    assert (
        image.data
        == DemoImageModel("demo", STATE_DIR=str(state))
        .generate(prompt, aspect_ratio="16:9", seed=7)
        .data
    )  # the same picture as an uncut call
    (call,) = [c for c in read_calls(path) if c.call_id == request_id]
    assert (call.pid, call.resumed_by, call.outcome) == (worker.pid, (os.getpid(),), "ok")
    assert call.key == call_key(prompt) and call.end >= submitted + 1.0
    assert calls_paid_twice(path) == 0


def test_unknown_and_expired_requests_are_gone(tmp_path, monkeypatch):
    model = DemoImageModel("demo", STATE_DIR=str(tmp_path))
    with pytest.raises(RequestGone, match="unknown"):
        model.result(ProviderCall("demo-" + "0" * 32, "demo"))
    with pytest.raises(RequestGone):
        model.result(ProviderCall("../../etc/passwd", "demo"))
    call = model.submit("a crow on a wire")
    import generation.providers.demo_images as demo_module

    clock = demo_module.time.time() + EXPIRES_AFTER + 1
    monkeypatch.setattr(demo_module.time, "time", lambda: clock)
    with pytest.raises(RequestGone, match="expired"):
        model.result(call)


def test_a_stopping_wait_hands_back_at_once_and_resumes_later(tmp_path):
    path = tmp_path / "calls.log"
    model = DemoImageModel("demo", LATENCY=0.6, CALL_LOG=str(path), STATE_DIR=str(tmp_path))
    call = model.submit("a kingfisher, “mid-dive”")
    started = time.monotonic()
    with pytest.raises(HandedBack):
        model.result(call, stop=lambda: time.monotonic() - started > 0.1)
    assert time.monotonic() - started < 0.3  # not the whole latency
    assert model.result(call).data  # resumed: the same request, ready at its time
    (only,) = read_calls(path)
    assert only.resumed_by == (os.getpid(),) and only.outcome == "ok"


def test_a_failed_request_is_not_paid_and_a_timeout_keeps_it(tmp_path):
    path = tmp_path / "calls.log"
    model = DemoImageModel(
        "demo",
        LATENCY=0.3,
        FAILURE_RATE=1.0,
        MAX_FAILURE_STREAK=1,
        CALL_LOG=str(path),
        STATE_DIR=str(tmp_path),
    )
    failing = model.submit("a heron in the rain")
    with pytest.raises(TransientProviderError, match="kept"):
        model.result(failing, deadline=time.monotonic() + 0.05)
    with pytest.raises(RequestFailed):
        model.result(failing)
    assert model.generate("a heron in the rain").data  # the streak cap lets it through
    assert paid_submissions(path) == {call_key("a heron in the rain"): 1}
