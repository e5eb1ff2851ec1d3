"""The pipeline end to end: one request of 500 images, demo latency 0.5 s, concurrency 16,
one worker process (20 threads), embedded defaults (SQLite database and queue).

Prints wall time, the provider-bound ideal (expansion + ceil(500/16) x 0.5 s), efficiency
(ideal / wall, target >= 0.9), fan-out time (target < 1 s), the worker's peak RSS (target
< 300 MB) and the p95 server time of the admin request listing sampled while the batch
runs (target < 300 ms). Runs twice, with and without the TaskRun ledger, to show what the
ledger costs (target: < 10%).

    python bench/pipeline.py [--count 500] [--latency 0.5] [--concurrency 16]
"""

from __future__ import annotations

import argparse
import math
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
# Threads beyond the provider's slots file finished images while the slots keep generating.
EXTRA_THREADS = 4
sys.path[0] = str(ROOT)


def worker_peak_rss_mb(pid: int) -> float:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmHWM:"):
            return int(line.split()[1]) / 1024
    return float("nan")


def run_once(args, ledger: bool) -> dict:
    data_dir = tempfile.mkdtemp(prefix="karasu-bench-")
    env = dict(
        os.environ,
        DJANGO_SETTINGS_MODULE="cms.settings.dev",
        DEBUG="false",
        KARASU_DATA_DIR=data_dir,
        KARASU_DEMO_LATENCY=str(args.latency),
        KARASU_DEMO_CONCURRENCY=str(args.concurrency),
        KARASU_WORKERS=str(args.concurrency + EXTRA_THREADS),
        KARASU_LEDGER="true" if ledger else "false",
        LOG_LEVEL="WARNING",
    )
    subprocess.run([sys.executable, "manage.py", "migrate", "--noinput", "-v", "0"],
                   cwd=ROOT, env=env, check=True)
    code = BENCH_CHILD.format(count=args.count, samples_every=args.sample_every)
    worker = subprocess.Popen(
        [sys.executable, "manage.py", "run_huey", "--no-periodic",
         "-w", str(args.concurrency + EXTRA_THREADS)],
        cwd=ROOT, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
    )
    try:
        time.sleep(2)  # let the worker start
        out = subprocess.run([sys.executable, "-c", code], cwd=ROOT, env=env, check=True,
                             capture_output=True, text=True)
        figures = eval(out.stdout.strip().splitlines()[-1])  # noqa: S307 - our own child
        figures["peak_rss_mb"] = worker_peak_rss_mb(worker.pid)
    finally:
        worker.terminate()
        worker.wait(30)
    figures["ideal"] = figures["expand_seconds"] + math.ceil(
        args.count / args.concurrency
    ) * args.latency
    figures["efficiency"] = figures["ideal"] / figures["wall"]
    return figures


# Runs in a child process with the bench's environment: starts the request, samples the
# admin listing while it runs, and prints its figures as a Python dict.
BENCH_CHILD = r"""
import django, statistics, threading, time
django.setup()
from django.contrib.auth import get_user_model
from django.test import Client
from django.test.utils import setup_test_environment
from generation import services
from generation.models import GenerationRequest
from huey_tasks.tasks import expand_prompt

setup_test_environment()
user = get_user_model().objects.create_superuser("bench", "b@example.com", "pw")
client = Client()
client.force_login(user)
listing = "/admin/snippets/generation/generationrequest/"
client.get(listing)
request = GenerationRequest.objects.create(theme="Crows over Kyoto", count={count},
                                           llm="demo", image_model="demo")
samples, done = [], threading.Event()

def sample():
    while not done.is_set():
        start = time.perf_counter()
        response = client.get(listing)
        assert response.status_code == 200
        samples.append((time.perf_counter() - start) * 1000)
        done.wait({samples_every})

sampler = threading.Thread(target=sample)
started = time.monotonic()
services.start_request(request)
result = expand_prompt(request.pk)
sampler.start()
while True:
    request.refresh_from_db()
    if request.is_terminal:
        break
    time.sleep(0.05)
wall = time.monotonic() - started
done.set()
sampler.join()
expansion = result.get(blocking=True, timeout=30)
samples.sort()
print(dict(
    wall=wall, status=request.status, images=request.jobs_succeeded,
    expand_seconds=expansion["expand_seconds"], fan_out_seconds=expansion["fan_out_seconds"],
    listing_p95_ms=samples[max(0, int(0.95 * len(samples)) - 1)],
    listing_samples=len(samples),
))
"""


def main() -> None:
    parser = argparse.ArgumentParser(description="Karasu pipeline benchmark")
    parser.add_argument("--count", type=int, default=500)
    parser.add_argument("--latency", type=float, default=0.5)
    parser.add_argument("--concurrency", type=int, default=16)
    parser.add_argument("--sample-every", type=float, default=0.25)
    args = parser.parse_args()

    with_ledger = run_once(args, ledger=True)
    without_ledger = run_once(args, ledger=False)
    print(f"\n{args.count} images, demo latency {args.latency}s, concurrency "
          f"{args.concurrency}, one worker process, embedded SQLite database and queue\n")
    rows = [
        ("status / images", "{status} / {images}"),
        ("wall time", "{wall:.2f} s"),
        ("provider-bound ideal", "{ideal:.2f} s"),
        ("efficiency (ideal / wall)", "{efficiency:.3f}   (target >= 0.9)"),
        ("expansion", "{expand_seconds:.3f} s"),
        ("fan-out", "{fan_out_seconds:.3f} s   (target < 1 s)"),
        ("worker peak RSS", "{peak_rss_mb:.0f} MB   (target < 300 MB)"),
        ("admin listing p95", "{listing_p95_ms:.0f} ms over {listing_samples} samples"
                              "   (target < 300 ms)"),
    ]
    print(f"{'':28} {'with ledger':>34}   {'without ledger':>34}")
    for label, template in rows:
        print(f"{label:28} {template.format(**with_ledger):>34}   "
              f"{template.format(**without_ledger):>34}")
    cost = with_ledger["wall"] / without_ledger["wall"] - 1
    print(f"\nledger cost: {cost * 100:+.1f}% wall time (target < 10%)")


if __name__ == "__main__":
    main()
