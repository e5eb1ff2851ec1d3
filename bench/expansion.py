"""A big request against an LLM at real speed (scaled): how soon the images start, when the
prompts are all written, how close the last image comes to the ideal, what the LLM bills.

The LLM is Claude through the real anthropic SDK, served by the stand-in Messages API of
tests/support/fake_anthropic.py in this process, at ``--speed`` times real speed (real: 0.4 s
to the first token, 70 output tokens/s, 140 tokens per prompt with its alt text). Images
come from the demo model at ``--latency`` s and ``--concurrency`` slots; one `run_huey`
worker with ``--threads`` threads, embedded SQLite database and queue.

Figures per run (median and spread over ``--runs``):

- created -> first LLM call, -> first image call, -> all prompts written, -> last image;
- efficiency: ideal / wall, where ideal = the time to write one prompt + ceil(N/C) x L;
- LLM output tokens billed (counted by the server, failed calls included) / needed;
- images paid twice (demo CALL_LOG start lines beyond one per prompt).

    python bench/expansion.py [--count 500] [--speed 10] [--latency 0.5] [--concurrency 16]
                              [--threads 32] [--runs 3] [--fail-call N] [--compare REV]

``--fail-call N``: the N-th LLM call generates half its tokens, then fails (overloaded).
``--compare REV`` runs a checkout of REV too, interleaved, side by side (bench/pipeline.py).
"""

from __future__ import annotations

import argparse
import math
import os
import subprocess
import sys
import time
from collections import Counter
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path[0] = str(ROOT)

from bench.pipeline import bench_env, run_child, summary, worktree  # noqa: E402
from tests.support.fake_anthropic import PROMPT_TOKENS, FakeLLMServer, Fault  # noqa: E402

REAL_FIRST_TOKEN = 0.4
REAL_TOKENS_PER_SECOND = 70.0

# Runs in a child process with the bench's environment: creates the request, waits for it
# to end and prints its figures (the database's own timestamps) as a Python dict.
CHILD = r"""
import django, time
django.setup()
from django.db.models import Max, Min
from generation import actions
from generation.models import GenerationRequest

request = GenerationRequest.objects.create(theme={theme!r}, count={count}, llm="claude",
                                           image_model="demo")
actions.generate(request)
deadline = time.time() + {timeout}
while time.time() < deadline:
    request.refresh_from_db()
    if request.is_terminal:
        break
    time.sleep(0.05)
ends = request.jobs.aggregate(end=Max("finished_at"))
created = request.created_at.timestamp()
print(dict(
    status=request.status, images=request.jobs_succeeded, jobs=request.jobs_total,
    created=created, error=request.error[:200],
    written=(request.expansion_finished_at.timestamp() - created)
    if request.expansion_finished_at else None,
    last_image=(ends["end"].timestamp() - created) if ends["end"] else None,
    output_tokens=request.llm_output_tokens,
))
"""


def run_once(
    *,
    root: Path,
    count: int,
    speed: float,
    latency: float,
    concurrency: int,
    threads: int,
    fail_call: int | None,
    timeout: float,
    profile: str | None = None,
) -> dict:
    faults = {fail_call: Fault(529, midway=True)} if fail_call else {}
    server = FakeLLMServer(
        tokens_per_second=REAL_TOKENS_PER_SECOND * speed,
        first_token=REAL_FIRST_TOKEN / speed,
        faults=faults,
    )
    data_dir, call_log, env = bench_env(
        latency,
        concurrency,
        threads,
        ANTHROPIC_API_KEY="sk-ant-bench",
        ANTHROPIC_BASE_URL=server.url,
    )
    subprocess.run(
        [sys.executable, "manage.py", "migrate", "--noinput", "-v", "0"],
        cwd=root,
        env=env,
        check=True,
    )
    worker = subprocess.Popen(
        [sys.executable, "manage.py", "run_huey", "--no-periodic", "-w", str(threads)],
        cwd=root,
        env=env,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    try:
        time.sleep(5)  # the worker is up, idle, its providers imported
        if profile:  # py-spy samples the worker until it exits (idle threads left out)
            output = os.path.join(data_dir, "worker.py-spy.txt")
            spy = subprocess.Popen(
                [
                    profile,
                    "record",
                    "--format",
                    "raw",
                    "-o",
                    output,
                    "--rate",
                    "100",
                    "--nonblocking",
                    "--gil",
                    "--pid",
                    str(worker.pid),
                ],
                stdout=subprocess.DEVNULL,
                stderr=subprocess.DEVNULL,
            )
            print(f"profile: {output}", file=sys.stderr)
        code = CHILD.format(theme="京都の路地裏で雨宿りするカラス", count=count, timeout=timeout)
        figures = run_child(code, root, env)
    finally:
        worker.terminate()
        worker.wait(60)
        if profile:
            spy.wait(60)
        server.close()
    created = figures["created"]
    starts = (
        [
            line.split()
            for line in Path(call_log).read_text().splitlines()
            if line.startswith("start ")
        ]
        if os.path.exists(call_log)
        else []
    )
    per_prompt = Counter(fields[1] for fields in starts)
    figures.update(
        first_llm_call=(server.first_call_at - created) if server.first_call_at else None,
        first_image=(min(float(f[3]) for f in starts) - created) if starts else None,
        billed=server.billed_output_tokens,
        needed=count * PROMPT_TOKENS,
        llm_calls=len(server.calls),
        paid_twice=sum(n - 1 for n in per_prompt.values()),
    )
    return figures


def main() -> None:
    parser = argparse.ArgumentParser(description="Karasu expansion benchmark")
    parser.add_argument("--count", type=int, default=500)
    parser.add_argument("--speed", type=float, default=10.0, help="times real LLM speed")
    parser.add_argument("--latency", type=float, default=0.5)
    parser.add_argument("--concurrency", type=int, default=16)
    parser.add_argument("--threads", type=int, default=32)
    parser.add_argument("--runs", type=int, default=3)
    parser.add_argument("--fail-call", type=int, default=None)
    parser.add_argument("--timeout", type=float, default=600)
    parser.add_argument("--compare", metavar="REV", help="also run a checkout of REV")
    parser.add_argument("--py-spy", metavar="PATH", help="profile the worker with py-spy")
    args = parser.parse_args()
    roots = [ROOT] + ([worktree(args.compare)] if args.compare else [])
    config = dict(
        count=args.count,
        speed=args.speed,
        latency=args.latency,
        concurrency=args.concurrency,
        threads=args.threads,
        fail_call=args.fail_call,
        timeout=args.timeout,
        profile=args.py_spy,
    )
    results: list[list[dict]] = [[] for _ in roots]
    try:
        for _ in range(args.runs):  # interleaved: a busy moment falls on both sides
            for i, root in enumerate(roots):
                results[i].append(run_once(root=root, **config))
                print(results[i][-1], file=sys.stderr)
    finally:
        for root in roots[1:]:
            subprocess.run(["git", "worktree", "remove", "--force", str(root)], cwd=ROOT)
    one_prompt = (REAL_FIRST_TOKEN + PROMPT_TOKENS / REAL_TOKENS_PER_SECOND) / args.speed
    ideal = one_prompt + math.ceil(args.count / args.concurrency) * args.latency
    scale = args.speed
    rows = [
        (
            "created -> first LLM call",
            lambda r: r["first_llm_call"],
            "{:.2f}",
            " s",
            f"goal <= {15 / scale:.1f} s",
        ),
        ("created -> first image call", lambda r: r["first_image"], "{:.2f}", " s", ""),
        (
            "created -> all prompts written",
            lambda r: r["written"],
            "{:.2f}",
            " s",
            f"goal <= {180 / scale:.0f} s",
        ),
        (
            "created -> last image",
            lambda r: r["last_image"],
            "{:.2f}",
            " s",
            f"ideal {ideal:.2f} s",
        ),
        (
            "efficiency (ideal / wall)",
            lambda r: ideal / r["last_image"] if r["last_image"] else None,
            "{:.3f}",
            "",
            "goal >= 0.85",
        ),
        (
            "LLM output tokens billed / needed",
            lambda r: r["billed"] / r["needed"],
            "{:.3f}",
            "",
            "goal <= 1.15",
        ),
        ("LLM calls", lambda r: r["llm_calls"], "{:.0f}", "", ""),
        ("images paid twice", lambda r: r["paid_twice"], "{:.0f}", "", "goal 0"),
    ]
    headers = ["this checkout"] + ([args.compare] if args.compare else [])
    print(
        f"\n{args.count} images, Claude at {args.speed:g}x real speed (fake Messages API), "
        f"demo images at {args.latency} s x {args.concurrency} slots, 1 worker x "
        f"{args.threads} threads; {args.runs} runs each: median (min–max)\n"
    )
    width = max(len(label) for label, *_ in rows)
    print(f"{'':{width}}  " + "  ".join(f"{h:>26}" for h in headers))
    for label, figure, fmt, unit, note in rows:
        values = [summary([figure(r) for r in runs], fmt) + unit for runs in results]
        print(f"{label:{width}}  " + "  ".join(f"{v:>26}" for v in values) + f"  {note}")
    outcomes = [", ".join("{status} {images}".format(**r) for r in runs) for runs in results]
    print(f"{'status, images':{width}}  " + "  ".join(f"{o:>26}" for o in outcomes))


if __name__ == "__main__":
    main()
