"""`manage.py generate`: a real subprocess for bad input, the command with a consumer for --wait."""

import subprocess
import sys

import pytest
from django.conf import settings
from django.core.management import call_command
from wagtail.images import get_image_model

from generation.models import GenerationRequest
from tests.support.consumers import consumer_env

pytestmark = [pytest.mark.django_db(transaction=True), pytest.mark.usefixtures("collections")]


@pytest.mark.parametrize(
    "args, message",
    [
        (["Crows", "--count", "0"], "count: Ensure this value is greater than or equal to 1."),
        (["Crows", "--count", "501"], "count: Ensure this value is less than or equal to 500."),
        (["  ", "--count", "3"], "theme: This field is required."),
        (["Crows", "--count", "3", "--image-model", "dall-e"], "image_model: Select a valid"),
        (["Crows", "--count", "3", "--llm", "gpt-99"], "llm: Select a valid choice"),
        (["Crows", "--count", "3", "--collection", "Nope"], "unknown collection 'Nope'"),
    ],
)
def test_invalid_input_exits_non_zero_with_one_line_and_creates_nothing(args, message):
    result = subprocess.run(
        [sys.executable, "manage.py", "generate", *args],
        cwd=settings.BASE_DIR,
        env=consumer_env(),
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert result.returncode != 0
    lines = [line for line in result.stderr.splitlines() if line.strip()]
    assert len(lines) == 1, result.stderr
    assert message in lines[0]
    assert "Traceback" not in result.stderr
    assert not GenerationRequest.objects.exists()


def test_wait_shows_progress_and_exits_zero_when_every_job_succeeded(thread_consumer, capsys):
    call_command("generate", "Crows at dusk", "--count", "4", "--wait", "--timeout", "60")
    out, err = capsys.readouterr()
    request = GenerationRequest.objects.get()
    assert request.status == GenerationRequest.Status.COMPLETED
    assert get_image_model().objects.filter(generation_request_id=request.pk).count() == 4
    assert "4 succeeded, 0 failed" in out
    assert "4/4" in err  # the progress bar reached the total


def test_wait_fails_when_jobs_fail(thread_consumer, settings):
    from generation.providers import reset_cache

    settings.KARASU["IMAGE_MODELS"]["demo"] = {
        **settings.KARASU["IMAGE_MODELS"]["demo"],
        "REJECT_RATE": 1.0,
    }
    reset_cache()
    try:
        from django.core.management.base import CommandError

        with pytest.raises(CommandError, match="0 succeeded, 2 failed"):
            call_command("generate", "Crows", "--count", "2", "--wait", "--timeout", "60")
    finally:
        reset_cache()
