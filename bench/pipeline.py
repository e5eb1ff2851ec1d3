"""The pipeline end to end, as a user sees it: from the moment a request is created to its
last image (and to the queue drained, Wagtail's follow-up tasks included), on the embedded
defaults (SQLite database and queue), with real `run_huey` worker processes.

Three figures, each run ``--runs`` times (median and spread):

- throughput: images filed per second with zero provider latency, ``--workers`` processes;
- provider-bound: ``--count`` images at ``--latency`` s and ``--concurrency`` slots, one
  worker, against the ideal ceil(count / concurrency) x latency (the provider alone: no
  expansion, no start-up), and how long after the request the first provider call starts;
- fairness: 8 images submitted 3 s after a 400-image batch (8 slots): their time to done.

    python bench/pipeline.py [--count 500] [--latency 0.5] [--concurrency 16]
                             [--workers 2] [--threads 20] [--runs 3] [--only NAME]
                             [--compare REV]

``--compare REV`` runs every configuration on a checkout of another revision too (a git
worktree, e.g. the commit before a change), interleaved with this one, and prints the two
side by side. Huey's stock storages cannot run this pipeline (no leases, no slots), so the
side-by-side is with an earlier Karasu; bench/queue.py compares the queues themselves.
"""

from __future__ import annotations

import argparse
import math
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path[0] = str(ROOT)


def peak_rss_mb(pid: int) -> float:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmHWM:"):
            return int(line.split()[1]) / 1024
    return float("nan")


# Runs in a child process with the bench's environment: creates the requests (the second
# one after ``delay`` seconds, if any), waits for every image and for the queue to drain,
# and prints its figures as a Python dict. Times are the database's own timestamps.
CHILD = r"""
import django, time
django.setup()
from django.db.models import Max
from huey.contrib.djhuey import HUEY
from generation import actions
from generation.models import GenerationRequest

def start(count, theme):
    request = GenerationRequest.objects.create(theme=theme, count=count, llm="demo",
                                               image_model="demo")
    actions.generate(request)
    return request

def done(request):
    request.refresh_from_db()
    return request.is_terminal

def last_image(request):
    end = request.jobs.aggregate(end=Max("finished_at"))["end"]
    return (end - request.created_at).total_seconds()

first = start({count}, "Crows over Kyoto")
second = None
if {second}:
    time.sleep({delay})
    second = start({second}, "Herons at dawn")
while not (done(first) and (second is None or done(second))):
    time.sleep(0.02)
storage = HUEY.storage
while storage.queue_size() + storage.schedule_size() + storage.leased_count():
    time.sleep(0.05)
drained = time.time() - first.created_at.timestamp()
try:  # an older revision may not log its calls
    calls = [float(line.split()[3]) for line in open({call_log!r}) if line.startswith("start ")]
except OSError:
    calls = []
print(dict(
    status=first.status, images=first.jobs_succeeded, wall=last_image(first),
    drained=drained, first_call=min(calls) - first.created_at.timestamp() if calls else None,
    second_wall=last_image(second) if second else None,
    second_status=second.status if second else None,
))
"""


def bench_env(
    latency: float, concurrency: int, threads: int, **extra: str
) -> tuple[str, str, dict[str, str]]:
    """A fresh data folder, its demo call log, and the environment of a bench's processes:
    the embedded defaults, the demo model at ``latency`` s and ``concurrency`` slots."""
    data_dir = tempfile.mkdtemp(prefix="karasu-bench-")
    call_log = os.path.join(data_dir, "calls.log")
    env = dict(
        os.environ,
        DJANGO_SETTINGS_MODULE="cms.settings.dev",
        DEBUG="false",
        KARASU_DATA_DIR=data_dir,
        KARASU_DEMO_LATENCY=str(latency),
        KARASU_DEMO_CONCURRENCY=str(concurrency),
        KARASU_WORKERS=str(threads),
        KARASU_DEMO_CALL_LOG=call_log,
        LOG_LEVEL="WARNING",
        **extra,
    )
    return data_dir, call_log, env


def run_child(code: str, root: Path, env: dict[str, str]) -> dict:
    """Run a bench's child script in ``root`` and return the figures it printed last (a
    Python dict)."""
    out = subprocess.run(
        [sys.executable, "-c", code],
        cwd=root,
        env=env,
        check=True,
        capture_output=True,
        text=True,
    )
    return eval(out.stdout.strip().splitlines()[-1])  # noqa: S307 - our own child


def run_once(
    *,
    root: Path = ROOT,
    count: int,
    latency: float,
    concurrency: int,
    workers: int,
    threads: int,
    second: int = 0,
    delay: float = 0.0,
) -> dict:
    data_dir, call_log, env = bench_env(latency, concurrency, threads)
    subprocess.run(
        [sys.executable, "manage.py", "migrate", "--noinput", "-v", "0"],
        cwd=root,
        env=env,
        check=True,
    )
    procs = [
        subprocess.Popen(
            [sys.executable, "manage.py", "run_huey", "--no-periodic", "-w", str(threads)],
            cwd=root,
            env=env,
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
        )
        for _ in range(workers)
    ]
    try:
        time.sleep(3)  # the workers are up and idle before the request is created
        code = CHILD.format(count=count, second=second, delay=delay, call_log=call_log)
        figures = run_child(code, root, env)
        figures["peak_rss_mb"] = max(peak_rss_mb(p.pid) for p in procs)
    finally:
        for proc in procs:
            proc.terminate()
        for proc in procs:
            proc.wait(30)
    return figures


def summary(values: list, fmt: str = "{:.2f}") -> str:
    """Median and spread (min–max) of repeated runs."""
    values = [v for v in values if v is not None]
    if not values:
        return "n/a"
    median = statistics.median(values)
    return f"{fmt.format(median)} ({fmt.format(min(values))}–{fmt.format(max(values))})"


def interleaved(roots: list[Path], runs: int, **config) -> list[list[dict]]:
    """``runs`` runs of one configuration on each checkout, alternating between them so
    that a busy moment of the machine does not fall on one side only."""
    results: list[list[dict]] = [[] for _ in roots]
    for _ in range(runs):
        for i, root in enumerate(roots):
            results[i].append(run_once(root=root, **config))
    return results


def worktree(rev: str) -> Path:
    path = Path(tempfile.mkdtemp(prefix="karasu-compare-")) / "checkout"
    subprocess.run(
        ["git", "worktree", "add", "--detach", "-q", str(path), rev], cwd=ROOT, check=True
    )
    return path


def main() -> None:
    parser = argparse.ArgumentParser(description="Karasu pipeline benchmark")
    parser.add_argument("--count", type=int, default=500)
    parser.add_argument("--latency", type=float, default=0.5)
    parser.add_argument("--concurrency", type=int, default=16)
    parser.add_argument("--workers", type=int, default=2, help="processes, throughput run")
    parser.add_argument("--threads", type=int, default=20, help="threads per worker")
    parser.add_argument("--runs", type=int, default=3)
    parser.add_argument("--only", choices=["throughput", "provider", "fairness"])
    parser.add_argument("--compare", metavar="REV", help="also run a checkout of REV")
    args = parser.parse_args()
    roots = [ROOT] + ([worktree(args.compare)] if args.compare else [])
    try:
        rows = measure(args, roots)
    finally:
        for root in roots[1:]:
            subprocess.run(["git", "worktree", "remove", "--force", str(root)], cwd=ROOT)
    headers = ["this checkout"] + ([args.compare] if args.compare else [])
    print(f"\nembedded SQLite database and queue, {args.runs} runs each: median (min–max)\n")
    width = max(len(label) for label, _, _ in rows)
    print(f"{'':{width}}  " + "  ".join(f"{h:>24}" for h in headers))
    for label, values, note in rows:
        print(f"{label:{width}}  " + "  ".join(f"{v:>24}" for v in values) + f"  {note}")


def measure(args, roots: list[Path]) -> list[tuple[str, list[str], str]]:
    rows = []

    def row(label, runs_per_root, figure, fmt="{:.2f}", unit="", note=""):
        rows.append(
            (
                label,
                [summary([figure(r) for r in runs], fmt) + unit for runs in runs_per_root],
                note,
            )
        )

    if args.only in (None, "throughput"):
        runs = interleaved(
            roots,
            args.runs,
            count=args.count,
            latency=0,
            concurrency=args.concurrency,
            workers=args.workers,
            threads=args.threads,
        )
        row(
            f"images/s, zero latency, {args.workers} workers x {args.threads} threads",
            runs,
            lambda r: r["images"] / r["wall"],
            "{:.1f}",
            " /s",
            "goal >= 90/s",
        )
        row(
            "  counting to the queue drained (Wagtail's follow-up tasks too)",
            runs,
            lambda r: r["images"] / r["drained"],
            "{:.1f}",
            " /s",
        )
        row("  worker peak RSS", runs, lambda r: r["peak_rss_mb"], "{:.0f}", " MB")

    if args.only in (None, "provider"):
        runs = interleaved(
            roots,
            args.runs,
            count=args.count,
            latency=args.latency,
            concurrency=args.concurrency,
            workers=1,
            threads=args.concurrency + 4,
        )
        ideal = math.ceil(args.count / args.concurrency) * args.latency
        row(
            f"{args.count} images at {args.latency} s, {args.concurrency} slots, 1 worker: "
            "created -> last image",
            runs,
            lambda r: r["wall"],
            unit=" s",
            note=f"ideal {ideal:.2f} s",
        )
        row(
            "  efficiency (ideal / wall)",
            runs,
            lambda r: ideal / r["wall"],
            "{:.3f}",
            note="goal >= 0.95",
        )
        row("  created -> queue drained", runs, lambda r: r["drained"], unit=" s")
        row(
            "  created -> first provider call",
            runs,
            lambda r: r["first_call"],
            unit=" s",
            note="goal <= 0.3 s",
        )
        rows.append(
            (
                "  all images filed",
                [", ".join(str(r["images"]) for r in runs_) for runs_ in runs],
                "",
            )
        )

    if args.only in (None, "fairness"):
        runs = interleaved(
            roots,
            args.runs,
            count=400,
            latency=args.latency,
            concurrency=8,
            workers=1,
            threads=12,
            second=8,
            delay=3.0,
        )
        row(
            "8 images submitted 3 s after a 400-image batch (8 slots): time to done",
            runs,
            lambda r: r["second_wall"],
            unit=" s",
            note="goal <= 5 s",
        )
        row(
            "  the batch: created -> last image",
            runs,
            lambda r: r["wall"],
            unit=" s",
            note=f"alone: ideal {math.ceil(400 / 8) * args.latency:.1f} s",
        )
    return rows


if __name__ == "__main__":
    main()
