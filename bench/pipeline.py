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

Huey's stock storages cannot run this pipeline (no leases, no slots), so there is no stock
column here; bench/queue.py compares the queues themselves.
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
calls = [float(line.split()[3]) for line in open({call_log!r}) if line.startswith("start ")]
print(dict(
    status=first.status, images=first.jobs_succeeded, wall=last_image(first),
    drained=drained, first_call=min(calls) - first.created_at.timestamp(),
    second_wall=last_image(second) if second else None,
    second_status=second.status if second else None,
))
"""


def run_once(*, count: int, latency: float, concurrency: int, workers: int, threads: int,
             second: int = 0, delay: float = 0.0) -> dict:
    data_dir = tempfile.mkdtemp(prefix="karasu-bench-")
    call_log = os.path.join(data_dir, "calls.log")
    env = dict(
        os.environ, DJANGO_SETTINGS_MODULE="cms.settings.dev", DEBUG="false",
        KARASU_DATA_DIR=data_dir, KARASU_DEMO_LATENCY=str(latency),
        KARASU_DEMO_CONCURRENCY=str(concurrency), KARASU_WORKERS=str(threads),
        KARASU_DEMO_CALL_LOG=call_log, LOG_LEVEL="WARNING",
    )
    subprocess.run([sys.executable, "manage.py", "migrate", "--noinput", "-v", "0"],
                   cwd=ROOT, env=env, check=True)
    procs = [
        subprocess.Popen([sys.executable, "manage.py", "run_huey", "--no-periodic",
                          "-w", str(threads)], cwd=ROOT, env=env,
                         stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        for _ in range(workers)
    ]
    try:
        time.sleep(3)  # the workers are up and idle before the request is created
        code = CHILD.format(count=count, second=second, delay=delay, call_log=call_log)
        out = subprocess.run([sys.executable, "-c", code], cwd=ROOT, env=env, check=True,
                             capture_output=True, text=True)
        figures = eval(out.stdout.strip().splitlines()[-1])  # noqa: S307 - our own child
        figures["peak_rss_mb"] = max(peak_rss_mb(p.pid) for p in procs)
    finally:
        for proc in procs:
            proc.terminate()
        for proc in procs:
            proc.wait(30)
    return figures


def summary(values: list[float], fmt: str = "{:.2f}") -> str:
    """Median and spread (min–max) of repeated runs."""
    median = statistics.median(values)
    return f"{fmt.format(median)} ({fmt.format(min(values))}–{fmt.format(max(values))})"


def main() -> None:
    parser = argparse.ArgumentParser(description="Karasu pipeline benchmark")
    parser.add_argument("--count", type=int, default=500)
    parser.add_argument("--latency", type=float, default=0.5)
    parser.add_argument("--concurrency", type=int, default=16)
    parser.add_argument("--workers", type=int, default=2, help="processes, throughput run")
    parser.add_argument("--threads", type=int, default=20, help="threads per worker")
    parser.add_argument("--runs", type=int, default=3)
    parser.add_argument("--only", choices=["throughput", "provider", "fairness"])
    args = parser.parse_args()
    rows = []

    if args.only in (None, "throughput"):
        runs = [run_once(count=args.count, latency=0, concurrency=args.concurrency,
                         workers=args.workers, threads=args.threads)
                for _ in range(args.runs)]
        rate = [r["images"] / r["wall"] for r in runs]
        rows.append((f"images/s, zero latency, {args.workers} workers x {args.threads} "
                     "threads", summary(rate, "{:.1f}") + " /s", "goal >= 90/s"))
        rows.append(("  worker peak RSS", summary([r["peak_rss_mb"] for r in runs], "{:.0f}")
                     + " MB", ""))

    if args.only in (None, "provider"):
        runs = [run_once(count=args.count, latency=args.latency, concurrency=args.concurrency,
                         workers=1, threads=args.concurrency + 4)
                for _ in range(args.runs)]
        ideal = math.ceil(args.count / args.concurrency) * args.latency
        rows += [
            (f"{args.count} images at {args.latency} s, {args.concurrency} slots, 1 worker: "
             "created -> last image", summary([r["wall"] for r in runs]) + " s",
             f"ideal {ideal:.2f} s"),
            ("  efficiency (ideal / wall)", summary([ideal / r["wall"] for r in runs],
                                                    "{:.3f}"), "goal >= 0.95"),
            ("  created -> queue drained", summary([r["drained"] for r in runs]) + " s", ""),
            ("  created -> first provider call", summary([r["first_call"] for r in runs])
             + " s", "goal <= 0.3 s"),
            ("  all images filed", ", ".join(f"{r['status']} {r['images']}" for r in runs), ""),
        ]

    if args.only in (None, "fairness"):
        runs = [run_once(count=400, latency=args.latency, concurrency=8, workers=1,
                         threads=12, second=8, delay=3.0)
                for _ in range(args.runs)]
        rows += [
            ("8 images submitted 3 s after a 400-image batch (8 slots): time to done",
             summary([r["second_wall"] for r in runs]) + " s", "goal <= 5 s"),
            ("  the batch: created -> last image", summary([r["wall"] for r in runs]) + " s",
             f"alone: ideal {math.ceil(400 / 8) * args.latency:.1f} s"),
        ]

    print(f"\nembedded SQLite database and queue, {args.runs} runs each: median (min–max)\n")
    width = max(len(label) for label, _, _ in rows)
    for label, value, note in rows:
        print(f"{label:{width}}  {value:>26}  {note}")


if __name__ == "__main__":
    main()
