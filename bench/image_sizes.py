"""Filing provider-sized images: throughput and a worker's peak RSS per image size.

One worker process with 20 threads (and 20 demo slots, so every thread can be rendering or
filing at once) files N images through the real pipeline (demo LLM and image model,
embedded SQLite database and queue) at each of 512x512 JPEG (the demo default, ~17 KB),
1024x1024 JPEG (FLUX square_hd, ~120 KB) and 2048x2048 PNG (Nano Banana Pro 2K, ~7 MB).
Prints images/s, the worker's idle and peak RSS (VmRSS before the run, VmHWM after;
target for 2048x2048 PNG: < 1 GB) and how many temporary files the worker still has
open afterwards (target: 0).

    python bench/image_sizes.py [--count 100] [--latency 0] [--threads 20] [--case 2048:png]
"""

from __future__ import annotations

import argparse
import os
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path[0] = str(ROOT)
CASES = [(512, "jpeg"), (1024, "jpeg"), (2048, "png")]


def proc_status_mb(pid: int, field: str) -> float:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith(f"{field}:"):
            return int(line.split()[1]) / 1024
    return float("nan")


def open_files_under(pid: int, directory: str) -> int:
    """Descriptors of ``pid`` on files in ``directory`` (unnamed temporary files included)."""
    count = 0
    for fd in Path(f"/proc/{pid}/fd").iterdir():
        try:
            if os.readlink(fd).startswith(directory + "/"):
                count += 1
        except OSError:
            continue  # closed meanwhile
    return count


def run_once(args, size: int, image_format: str) -> dict:
    data_dir = tempfile.mkdtemp(prefix="karasu-bench-")
    spool_dir = os.path.join(data_dir, "tmp")
    os.mkdir(spool_dir)
    env = dict(
        os.environ,
        DJANGO_SETTINGS_MODULE="cms.settings.dev",
        DEBUG="false",
        KARASU_DATA_DIR=data_dir,
        KARASU_DEMO_LATENCY=str(args.latency),
        KARASU_DEMO_CONCURRENCY=str(args.threads),
        KARASU_DEMO_SIZE=str(size),
        KARASU_DEMO_FORMAT=image_format,
        KARASU_WORKERS=str(args.threads),
        LOG_LEVEL="WARNING",
        TMPDIR=spool_dir,  # the worker's temporary files, counted after the run
    )
    subprocess.run(
        [sys.executable, "manage.py", "migrate", "--noinput", "-v", "0"],
        cwd=ROOT,
        env=env,
        check=True,
    )
    worker = subprocess.Popen(
        [sys.executable, "manage.py", "run_huey", "--no-periodic", "-w", str(args.threads)],
        cwd=ROOT,
        env=env,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    try:
        time.sleep(3)  # let the worker start
        idle_rss = proc_status_mb(worker.pid, "VmRSS")
        out = subprocess.run(
            [sys.executable, "-c", BENCH_CHILD.format(count=args.count, timeout=args.timeout)],
            cwd=ROOT,
            env=env,
            check=True,
            capture_output=True,
            text=True,
        )
        figures = eval(out.stdout.strip().splitlines()[-1])  # noqa: S307 - our own child
        time.sleep(0.5)  # the last task's clean-up
        figures.update(
            idle_rss_mb=idle_rss,
            peak_rss_mb=proc_status_mb(worker.pid, "VmHWM"),
            open_temp_files=open_files_under(worker.pid, spool_dir),
            temp_dir_entries=len(os.listdir(spool_dir)),
        )
    finally:
        worker.terminate()
        worker.wait(30)
        shutil.rmtree(data_dir, ignore_errors=True)  # 100 2K PNGs are ~700 MB
    figures["images_per_second"] = figures["images"] / figures["wall"]
    return figures


# Runs in a child process with the bench's environment: starts the request, waits for it,
# and prints its figures as a Python dict.
BENCH_CHILD = r"""
import django, time
django.setup()
from django.db.models import Avg
from wagtail.images import get_image_model
from generation import services
from generation.models import GenerationRequest
from generation.tasks import expand_prompt

request = GenerationRequest.objects.create(theme="Crows over Kyoto", count={count},
                                           llm="demo", image_model="demo")
started = time.monotonic()
services.start_request(request)
expand_prompt(request.pk)
while True:
    request.refresh_from_db()
    if request.is_terminal or time.monotonic() - started > {timeout}:
        break
    time.sleep(0.05)
wall = time.monotonic() - started
images = get_image_model().objects.filter(generation_request_id=request.pk)
print(dict(wall=wall, status=request.status, images=images.count(),
           mean_bytes=images.aggregate(mean=Avg("file_size"))["mean"] or 0))
"""


def main() -> None:
    parser = argparse.ArgumentParser(description="Karasu image-size benchmark")
    parser.add_argument("--count", type=int, default=100)
    parser.add_argument("--latency", type=float, default=0.0)
    parser.add_argument("--threads", type=int, default=20)
    parser.add_argument("--timeout", type=float, default=900)
    parser.add_argument(
        "--case",
        action="append",
        metavar="SIZE:FORMAT",
        help="e.g. 2048:png (repeatable; default: 512:jpeg 1024:jpeg 2048:png)",
    )
    args = parser.parse_args()

    cases = (
        [
            (int(size), image_format)
            for size, image_format in (case.split(":") for case in args.case)
        ]
        if args.case
        else CASES
    )
    results = [
        (size, image_format, run_once(args, size, image_format)) for size, image_format in cases
    ]
    print(
        f"\n{args.count} images per size, demo latency {args.latency}s, one worker process "
        f"({args.threads} threads, {args.threads} demo slots), embedded SQLite database "
        "and queue\n"
    )
    print(
        f"{'size':16} {'status / images':>22} {'mean file':>10} {'images/s':>9} "
        f"{'idle RSS':>9} {'peak RSS':>9} {'temp files left':>16}"
    )
    for size, image_format, r in results:
        print(
            f"{f'{size}x{size} {image_format.upper()}':16} "
            f"{r['status'] + ' / ' + str(r['images']):>22} "
            f"{r['mean_bytes'] / 1e6:>8.2f}MB {r['images_per_second']:>9.1f} "
            f"{r['idle_rss_mb']:>7.0f}MB {r['peak_rss_mb']:>7.0f}MB "
            f"{r['open_temp_files'] + r['temp_dir_entries']:>16}"
        )
    print("\ntarget: 2048x2048 PNG peak RSS < 1024 MB (the design budgets 2 GB per worker)")


if __name__ == "__main__":
    main()
