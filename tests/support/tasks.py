"""Tasks used only by the queue tests: each records when it starts and when it completes."""

import os
import time

from huey.contrib.djhuey import task


def _append(path: str, line: str) -> None:
    with open(path, "a") as handle:
        handle.write(line + "\n")
        handle.flush()
        os.fsync(handle.fileno())


@task()
def record_run(log_path: str, key: str, seconds: float = 0.0) -> str:
    _append(log_path, f"start {key} {os.getpid()}")
    time.sleep(seconds)
    _append(log_path, f"done {key} {os.getpid()}")
    return key


@task(retries=2, retry_delay=0)
def fail_then_succeed(log_path: str, key: str, failures: int) -> str:
    previous = open(log_path).read().count(f"attempt {key}") if os.path.exists(log_path) else 0
    _append(log_path, f"attempt {key}")
    if previous < failures:
        raise RuntimeError(f"planned failure {previous + 1}")
    return key


@task()
def cancel_me(log_path: str) -> None:
    from huey.exceptions import CancelExecution

    _append(log_path, "cancelling")
    raise CancelExecution(retry=False)


@task()
def always_fail(message: str) -> None:
    raise ValueError(message)


@task()
def add(a: int, b: int) -> int:
    return a + b


@task()
def interrupted_once(log_path: str, key: str) -> str:
    """Stopped inside its own thread the first time it runs, as a process worker's task is
    by SIGINT (KeyboardInterrupt); runs to its end the next time. Its lines carry the time."""
    previous = open(log_path).read().count(f"start {key} ") if os.path.exists(log_path) else 0
    _append(log_path, f"start {key} {os.getpid()} {time.time()}")
    if not previous:
        raise KeyboardInterrupt
    _append(log_path, f"done {key} {os.getpid()} {time.time()}")
    return key


@task(context=True)
def hand_back_once(log_path: str, task=None) -> None:
    """Hands its message back (as a task that found the database down does) the first time,
    and runs to its end the second."""
    from huey.contrib.djhuey import HUEY

    previous = open(log_path).read().count("attempt") if os.path.exists(log_path) else 0
    _append(log_path, "attempt")
    if previous == 0:
        HUEY.hand_back_later(task)
        task.hand_back_delay = 3.0  # back in 3 s: time for a test to look at it meanwhile
