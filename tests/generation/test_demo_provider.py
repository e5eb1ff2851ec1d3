"""The demo image provider's test knobs, the call-log helpers, and settings isolation."""

import math
import os
import subprocess
import sys
import threading

import pytest
from django.conf import settings

from generation.providers import (
    PermanentProviderError,
    TransientProviderError,
    get_image_model,
)
from generation.providers.demo import MAX_CONSECUTIVE_FAILURES, DemoImageModel, call_key
from tests.support.provider_calls import (
    Call,
    calls_per_key,
    max_in_flight,
    overlapping_calls,
    read_calls,
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


# Two tests in order: the first changes nested settings in place, the second sees them back.
ORIGINAL_DEMO = {}


def test_nested_karasu_settings_changed_in_place(tmp_path):
    ORIGINAL_DEMO.update(settings.KARASU["IMAGE_MODELS"]["demo"])
    settings.KARASU["IMAGE_MODELS"]["demo"]["LATENCY"] = 99.0
    settings.KARASU["IMAGE_MODELS"]["demo"]["CALL_LOG"] = str(tmp_path / "calls.log")
    settings.KARASU.setdefault("RETRY", {})["MAX_RETRIES"] = 0
    settings.KARASU["IMAGE_MODELS"]["extra"] = {"CLASS": "x"}
    assert get_image_model("demo").latency == 99.0  # cached with the changed options


def test_nested_karasu_settings_are_restored_for_the_next_test():
    if not ORIGINAL_DEMO:  # selected alone (-k): there is nothing to see restored
        pytest.skip("runs after test_nested_karasu_settings_changed_in_place")
    assert settings.KARASU["IMAGE_MODELS"]["demo"] == ORIGINAL_DEMO
    assert "extra" not in settings.KARASU["IMAGE_MODELS"]
    assert "MAX_RETRIES" not in settings.KARASU.get("RETRY", {})
    model = get_image_model("demo")
    assert model.latency == float(ORIGINAL_DEMO["LATENCY"]) and model.call_log == ""


def test_call_is_a_plain_record():
    call = Call("k", 1, 1.0, 2.0, "ok")
    assert (
        not call.open
        and call.overlaps(Call("k", 2, 1.5))
        and not call.overlaps(Call("k", 2, 2.0, 3.0, "ok"))
    )
