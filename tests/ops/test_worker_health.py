"""manage.py worker_health: the liveness probe of a worker host."""

import datetime
import subprocess
import sys

import pytest
from django.conf import settings
from django.core.management import call_command
from django.core.management.base import CommandError
from django.utils import timezone

from huey_tasks.ledger import HOST
from huey_tasks.models import WorkerHeartbeat
from tests.support.consumers import consumer_env

pytestmark = pytest.mark.django_db


def beat(seconds_ago: float = 0, host: str = HOST, stopped: bool = False) -> WorkerHeartbeat:
    seen = timezone.now() - datetime.timedelta(seconds=seconds_ago)
    return WorkerHeartbeat.objects.create(
        host=host,
        pid=4242,
        workers=20,
        started_at=seen,
        last_seen=seen,
        stopped_at=seen if stopped else None,
    )


def probe(*args) -> tuple[int, str]:
    """(exit code, output) of the command run in this process."""
    from io import StringIO

    out = StringIO()
    try:
        call_command("worker_health", *args, stdout=out)
    except CommandError as error:
        return error.returncode, str(error)
    return 0, out.getvalue()


def test_a_fresh_heartbeat_on_this_host_is_healthy():
    beat(seconds_ago=5)
    code, output = probe()
    assert code == 0
    assert output.startswith(f"ok: worker {HOST}:4242") and output.count("\n") == 1


@pytest.mark.parametrize(
    "worker",
    [
        dict(seconds_ago=120),  # silent for two minutes
        dict(seconds_ago=1, host="another-host"),  # alive, elsewhere
        dict(seconds_ago=1, stopped=True),  # stopped cleanly
    ],
    ids=["stale", "other-host", "stopped"],
)
def test_no_live_worker_on_this_host_is_unhealthy(worker):
    beat(**worker)
    code, message = probe()
    assert code == 1
    assert message == f"no running worker on {HOST} has sent a heartbeat in the last 60 s"


def test_max_age():
    beat(seconds_ago=90)
    assert probe()[0] == 1
    assert probe("--max-age", "120")[0] == 0
    assert probe("--max-age", "30")[0] == 1


def test_no_heartbeat_at_all():
    assert probe()[0] == 1


@pytest.mark.django_db(transaction=True)
def test_a_real_worker_is_healthy(thread_consumer):
    # The consumer records itself when it starts; a probe right after finds it.
    from tests.support.consumers import wait_for

    wait_for(
        lambda: WorkerHeartbeat.objects.filter(host=HOST, stopped_at=None).exists(),
        10,
        message="the consumer's heartbeat",
    )
    assert probe("--max-age", "15")[0] == 0


@pytest.mark.django_db(transaction=True)
def test_exit_codes_of_the_real_command():
    def run(**env):
        return subprocess.run(
            [sys.executable, "manage.py", "worker_health", "--max-age", "60"],
            cwd=settings.BASE_DIR,
            env=consumer_env(**env),
            capture_output=True,
            text=True,
            timeout=60,
        )

    result = run()
    assert result.returncode == 1
    assert result.stderr.strip().splitlines() == [
        f"CommandError: no running worker on {HOST} has sent a heartbeat in the last 60 s"
    ]
    beat(seconds_ago=2)
    result = run()
    assert result.returncode == 0, result.stderr
    assert result.stdout.startswith("ok: worker") and not result.stderr


def test_database_unreachable_is_one_line_without_a_traceback(tmp_path):
    result = subprocess.run(
        [sys.executable, "manage.py", "worker_health"],
        cwd=settings.BASE_DIR,
        capture_output=True,
        text=True,
        timeout=60,
        env=consumer_env(KARASU_SUITE_DATABASE_URL=f"sqlite:///{tmp_path}/missing/db.sqlite3"),
    )
    assert result.returncode == 2
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and "cannot read worker heartbeats" in lines[0], result.stderr
    assert "Traceback" not in result.stderr
