"""The media tests' fixtures: fake AWS credentials, a local S3 (tests/support/local_s3.py)
and media on a fresh bucket of it."""

from __future__ import annotations

from types import SimpleNamespace

import pytest

from cms.storage import media_storage
from tests.support.local_s3 import AWS_ENV, AWS_UNSET, REGION, started_s3


@pytest.fixture
def aws_env(monkeypatch):
    """Fake credentials in the environment, where boto3 looks for them; nothing else."""
    for name in AWS_UNSET:
        monkeypatch.delenv(name, raising=False)
    for name, value in AWS_ENV.items():
        monkeypatch.setenv(name, value)
    return dict(AWS_ENV)


@pytest.fixture(scope="module")
def local_s3():
    server = started_s3()
    yield server
    server.stop()


@pytest.fixture
def s3_media(local_s3, aws_env, settings):
    """Media on a fresh bucket of the local S3 for one test, as MEDIA_S3_* would set it.

    ``configure(**options)`` switches to other options (another bucket, endpoint, a public
    URL). Django drops its storages when STORAGES changes, and the image models' fields
    use the default storage lazily, so everything follows; the test's end puts the local
    disk back the same way.
    """
    media = SimpleNamespace(server=local_s3, bucket=local_s3.create_bucket())

    def configure(bucket: str | None = None, endpoint_url: str | None = None, **options):
        options.setdefault("region", REGION)
        options.setdefault("max_attempts", 1)  # fail at once: the tests retry the jobs
        settings.STORAGES = {
            **settings.STORAGES,
            "default": media_storage(
                bucket or media.bucket, endpoint_url=endpoint_url or local_s3.url, **options
            ),
        }

    media.configure = configure
    configure()
    return media
