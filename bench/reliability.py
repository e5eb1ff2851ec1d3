"""The reliability table: run each failure scenario of the test suite for real and print,
per scenario, what happened to every job.

    .venv/bin/python bench/reliability.py            # the SQLite queue
    TEST_MONGODB_URI=mongodb://... bench/reliability.py   # MongoDB rows too

The scenarios are the suite's own tests (real worker processes killed and frozen, a real
consumer under injected storage and database faults, concurrent editor clicks); each test
appends its figures to a report file, which this prints as a table.

*paid twice* is counted on the provider's side: the demo image model logs a ``start`` line
per submission (a paid call, whether or not its worker lived to collect it) and a
``resume`` line when a later worker collects a submitted request instead of paying again
(tests/support/provider_calls.py). Pass test names (``-k`` expressions) to run only some
rows: ``bench/reliability.py -k "sigkill or sigterm or frozen_mid"``.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import tempfile
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
SCENARIOS = [
    "tests/reliability/test_worker_processes.py::test_sigkill_mid_batch_settles_every_job",
    "tests/reliability/test_worker_processes.py::test_a_worker_frozen_mid_batch_files_nothing_twice",
    "tests/reliability/test_worker_processes.py::"
    "test_sigterm_with_a_short_grace_hands_calls_back_for_the_next_worker",
    "tests/reliability/test_fault_injection.py",
    "tests/reliability/test_job_claims.py::test_concurrent_clicks_end_to_end",
    # A private PostgreSQL cluster stopped mid-batch (skipped without PostgreSQL's binaries).
    "tests/reliability/test_database_outage.py",
]
COLUMNS = [
    "jobs",
    "succeeded",
    "failed with a reason",
    "lost",
    "stuck",
    "duplicate images",
    "duplicate provider calls",
    "paid twice",
]


def main(argv: list[str]) -> int:
    with tempfile.TemporaryDirectory() as folder:
        report = Path(folder) / "report.jsonl"
        env = {**os.environ, "KARASU_RELIABILITY_REPORT": str(report)}
        result = subprocess.run(
            [sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider", *SCENARIOS, *argv],
            cwd=ROOT,
            env=env,
        )
        rows = (
            [json.loads(line) for line in report.read_text().splitlines()]
            if (report.exists())
            else []
        )
    print()
    print("| scenario | " + " | ".join(COLUMNS) + " |")
    print("| --- |" + " ---: |" * len(COLUMNS))
    for row in rows:
        print(f"| {row['scenario']} | " + " | ".join(str(row[c]) for c in COLUMNS) + " |")
    return result.returncode


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
