"""The production settings: they refuse to start without a secret key and pass Django's
deployment checks."""

import subprocess
import sys

from django.conf import settings


def test_production_settings_refuse_to_start_without_secret_key(tmp_path):
    env = {"PATH": "/usr/bin:/bin", "KARASU_DATA_DIR": str(tmp_path), "SECRET_KEY": ""}
    result = subprocess.run(
        [sys.executable, "-c", "import cms.settings.production"],
        cwd=settings.BASE_DIR,
        env=env,
        capture_output=True,
        text=True,
    )
    assert result.returncode != 0
    assert "SECRET_KEY is not set" in result.stderr


def test_production_settings_pass_check_deploy(tmp_path):
    env = {
        "PATH": "/usr/bin:/bin",
        "KARASU_DATA_DIR": str(tmp_path),
        "DJANGO_SETTINGS_MODULE": "cms.settings.production",
        "SECRET_KEY": "x" * 64 + "-long-random-production-key",
        "ALLOWED_HOSTS": "karasu.example.com",
    }
    result = subprocess.run(
        [sys.executable, "manage.py", "check", "--deploy", "--fail-level", "WARNING"],
        cwd=settings.BASE_DIR,
        env=env,
        capture_output=True,
        text=True,
    )
    assert result.returncode == 0, result.stderr + result.stdout
