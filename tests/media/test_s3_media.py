"""Media on S3-compatible object storage (MEDIA_S3_*), against a local S3 endpoint.

The endpoint is moto's S3 server on 127.0.0.1 (tests/support/local_s3.py), standing in for a
real S3: originals, renditions, the request page and the image library go through
django-storages and boto3 over HTTP exactly as they would to AWS, MinIO or R2.
"""

from __future__ import annotations

import io
import json
import logging
import os
import re
import subprocess
import sys
import time
import uuid
from pathlib import Path

import httpx
import pytest
from botocore.exceptions import EndpointConnectionError
from django.conf import settings
from django.core.exceptions import ImproperlyConfigured
from django.core.files.images import ImageFile
from django.core.files.storage import default_storage, storages
from django.core.management import call_command
from django.db import OperationalError
from django.urls import reverse
from huey.contrib.djhuey import HUEY
from huey.exceptions import RetryTask
from PIL import Image as PILImage
from storages.backends.s3 import S3Storage
from wagtail.images import get_image_model

from cms import s3_storage
from cms.redaction import redact_secrets
from cms.s3_storage import MediaS3Storage
from cms.storage import CACHE_CONTROL, media_storage, public_url_parts
from generation import services
from generation.ingest import ingest
from generation.limits import limiter_for
from generation.models import GenerationJob, GenerationRequest
from generation.outages import INFRASTRUCTURE_ERRORS
from generation.providers import get_image_model as get_provider
from generation.providers import reset_cache
from generation.tasks import generate_image, queue_jobs
from tests.support.admin import NS
from tests.support.consumers import consumer_env, start_consumer, stop, wait_for
from tests.support.factories import make_request, settled
from tests.support.images import png
from tests.support.local_s3 import AWS_ENV, CREDENTIALS, REGION, started_s3

Image = get_image_model()
Job = GenerationJob.Status
Req = GenerationRequest.Status
SECRET = CREDENTIALS["AWS_SECRET_ACCESS_KEY"]
CDN = "https://cdn.example.test/media"

db = pytest.mark.django_db(transaction=True)


def file_image(job: GenerationJob):
    """Generate ``job``'s picture with the demo model and file it (no queue)."""
    image, created = ingest(job, get_provider("demo").generate(job.prompt, seed=job.seed))
    assert created
    return image


def image_sources(html: str) -> set[str]:
    return set(re.findall(r'<img[^>]* src="([^"]+)"', html))


def bucket_url(media) -> str:
    return f"{media.server.url}/{media.bucket}/"


# Settings -------------------------------------------------------------------------------
def test_without_a_bucket_media_stays_on_the_local_disk():
    assert media_storage() == {"BACKEND": "django.core.files.storage.FileSystemStorage"}
    assert media_storage("") == media_storage()
    # The suite itself: local media, whatever MEDIA_S3_* the machine has (cms/settings/test).
    assert settings.STORAGES["default"]["BACKEND"].endswith("FileSystemStorage")


def test_a_bucket_switches_media_to_s3_with_safe_options():
    config = media_storage("karasu-media", endpoint_url="http://minio:9000", region="eu-1")
    assert config["BACKEND"] == "cms.s3_storage.MediaS3Storage"
    options = config["OPTIONS"]
    assert options["bucket_name"] == "karasu-media"
    assert options["endpoint_url"] == "http://minio:9000"
    assert options["region_name"] == "eu-1"
    assert options["file_overwrite"] is False  # uploads of one name never replace each other
    assert options["default_acl"] is None  # the bucket's policy decides
    assert options["querystring_auth"] is True  # private bucket: signed URLs
    assert "custom_domain" not in options
    assert options["object_parameters"] == {"CacheControl": CACHE_CONTROL}
    # No credentials among the options: boto3 reads them from the environment.
    assert not {"access_key", "secret_key", "security_token"} & set(options)
    client = options["client_config"]
    assert (client.connect_timeout, client.read_timeout) == (5.0, 60.0)
    assert client.retries == {"mode": "standard", "max_attempts": 3}
    assert client.signature_version == "s3v4"
    assert client.s3 == {"addressing_style": "path"}  # MinIO, RGW and R2 all take it
    assert client.request_checksum_calculation == "when_required"

    aws = media_storage("karasu-media", region="eu-west-1")["OPTIONS"]
    assert aws["endpoint_url"] is None and aws["client_config"].s3 == {"addressing_style": "auto"}
    assert aws["client_config"].request_checksum_calculation is None  # botocore's default


def test_a_public_url_gives_unsigned_urls_on_its_host_and_path():
    options = media_storage("karasu-media", public_url=CDN + "/")["OPTIONS"]
    assert options["custom_domain"] == "cdn.example.test/media"
    assert options["url_protocol"] == "https:"
    assert options["querystring_auth"] is False
    assert public_url_parts("http://127.0.0.1:9000/bucket") == ("http:", "127.0.0.1:9000/bucket")


@pytest.mark.parametrize(
    "url",
    ["cdn.example.test", "ftp://cdn.example.test", "https://", "https://cdn.example.test/?x=1"],
)
def test_a_public_url_must_be_an_http_url(url):
    with pytest.raises(ImproperlyConfigured, match="MEDIA_S3_PUBLIC_URL"):
        media_storage("karasu-media", public_url=url)


def test_an_addressing_style_must_be_one_boto3_knows():
    assert media_storage("b", addressing_style="virtual")["OPTIONS"]["client_config"].s3 == {
        "addressing_style": "virtual"
    }
    with pytest.raises(ImproperlyConfigured, match="MEDIA_S3_ADDRESSING_STYLE"):
        media_storage("b", addressing_style="vhost")


SHOW_STORAGES = """
import json
from django.conf import settings
default = settings.STORAGES["default"]
options = {k: v for k, v in default.get("OPTIONS", {}).items() if k != "client_config"}
print(json.dumps({"default": default["BACKEND"], "options": options,
                  "static": settings.STORAGES["staticfiles"]["BACKEND"]}))
"""


def settings_in_subprocess(module: str, **environ: str) -> dict:
    """STORAGES as a fresh process builds them from its environment at startup."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("MEDIA_S3_")}
    env.update(DJANGO_SETTINGS_MODULE=module, SECRET_KEY="karasu-settings-test", **environ)
    # Set but empty overrides whatever a developer's .env file says.
    for name in (
        "MEDIA_S3_BUCKET",
        "MEDIA_S3_ENDPOINT_URL",
        "MEDIA_S3_REGION",
        "MEDIA_S3_PUBLIC_URL",
        "MEDIA_S3_ADDRESSING_STYLE",
    ):
        env.setdefault(name, "")
    result = subprocess.run(
        [sys.executable, "-c", SHOW_STORAGES],
        cwd=settings.BASE_DIR,
        env=env,
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert result.returncode == 0, result.stderr
    return json.loads(result.stdout.strip().splitlines()[-1])


def test_production_settings_build_storages_from_the_environment():
    local = settings_in_subprocess("cms.settings.production")
    assert local["default"] == "django.core.files.storage.FileSystemStorage"
    assert local["static"].endswith("ManifestStaticFilesStorage")

    s3 = settings_in_subprocess(
        "cms.settings.production",
        MEDIA_S3_BUCKET="karasu-media",
        MEDIA_S3_ENDPOINT_URL="https://account.r2.cloudflarestorage.com",
        MEDIA_S3_REGION="auto",
        MEDIA_S3_PUBLIC_URL="https://media.example.com",
        AWS_SECRET_ACCESS_KEY=SECRET,
    )
    assert s3["default"] == "cms.s3_storage.MediaS3Storage"
    assert s3["static"].endswith("ManifestStaticFilesStorage")  # production's, kept
    assert s3["options"] == {
        "bucket_name": "karasu-media",
        "endpoint_url": "https://account.r2.cloudflarestorage.com",
        "region_name": "auto",
        "file_overwrite": False,
        "default_acl": None,
        "querystring_auth": False,
        "object_parameters": {"CacheControl": CACHE_CONTROL},
        "url_protocol": "https:",
        "custom_domain": "media.example.com",
    }
    assert SECRET not in json.dumps(s3)


def test_the_test_settings_keep_media_local_unless_a_media_test_opts_in():
    environ = {"MEDIA_S3_BUCKET": "someones-real-bucket"}
    assert settings_in_subprocess("cms.settings.test", **environ)["default"].endswith(
        "FileSystemStorage"
    )
    assert settings_in_subprocess("cms.settings.test", KARASU_TEST_MEDIA_S3="1", **environ)[
        "default"
    ].endswith("S3Storage")


def test_the_storage_takes_credentials_from_the_environment(aws_env):
    storage = MediaS3Storage(**media_storage("karasu-media", region=REGION)["OPTIONS"])
    assert storage.access_key == AWS_ENV["AWS_ACCESS_KEY_ID"]
    assert storage.secret_key == SECRET


def test_aws_secrets_from_the_environment_are_redacted(aws_env, monkeypatch):
    monkeypatch.setenv("AWS_SESSION_TOKEN", "karasu-session-token-0123456789")
    text = redact_secrets(f"signing with {SECRET} and karasu-session-token-0123456789")
    assert text == "signing with [redacted] and [redacted]"
    monkeypatch.setenv("AWS_SESSION_TOKEN", "short")  # not worth blanking text for
    assert redact_secrets("a short word") == "a short word"


# The image models on S3 -------------------------------------------------------------------
def test_image_and_rendition_files_follow_the_configured_storage(s3_media):
    # Both fields hold Django's lazy default storage (not a storage built at model load),
    # which STORAGES, read at startup or changed by a test, decides.
    assert isinstance(storages["default"], MediaS3Storage)
    for model in (Image, Image.get_rendition_model()):
        storage = model._meta.get_field("file").storage
        assert storage is default_storage
        assert storage.url("x.jpg").startswith(bucket_url(s3_media) + "x.jpg?")
    assert default_storage.bucket_name == s3_media.bucket


def test_a_signed_url_is_reused_for_five_minutes(s3_media, monkeypatch):
    storage = storages["default"]
    first = storage.url("original_images/crow.jpg")
    time.sleep(1.1)  # signatures carry the time to the second: a new one would differ now
    assert S3Storage.url(storage, "original_images/crow.jpg") != first
    assert storage.url("original_images/crow.jpg") == first  # so a browser keeps its copy
    assert storage.url("original_images/other.jpg") != first
    assert storage.url("original_images/crow.jpg", expire=60) != first  # asked for: fresh

    # Well inside its hour, so still valid when temporary credentials are renewed.
    later = time.monotonic() + s3_storage.REUSE_SECONDS + 1
    monkeypatch.setattr(s3_storage.time, "monotonic", lambda: later)
    renewed = storage.url("original_images/crow.jpg")
    assert renewed != first and "X-Amz-Signature=" in renewed


@db
def test_uploads_of_one_name_never_overwrite_each_other(s3_media, collections):
    first = Image.objects.create(
        title="first", file=ImageFile(io.BytesIO(png(colour="teal")), name="same.png")
    )
    second = Image.objects.create(
        title="second", file=ImageFile(io.BytesIO(png(colour="teal")), name="same.png")
    )
    assert first.file.name == "original_images/same.png"
    assert second.file.name != first.file.name
    assert s3_media.server.keys(s3_media.bucket, "original_images/") == sorted(
        [first.file.name, second.file.name]
    )


@db
def test_a_demo_request_is_filed_into_the_bucket_end_to_end(
    s3_media, demo, collections, thread_consumer, editor, capsys
):
    call_command("generate", "Crows over Kyoto", "--count", "3", "--wait", "--timeout", "60")
    request = GenerationRequest.objects.get()
    assert request.status == Req.COMPLETED
    images = list(Image.objects.filter(generation_request_id=request.pk))
    assert len(images) == 3
    bucket, server = s3_media.bucket, s3_media.server

    # Originals: in the bucket, under Wagtail's names, not on the local disk.
    originals = server.keys(bucket, "original_images/")
    assert sorted(image.file.name for image in images) == originals
    for image in images:
        stored = server.get(bucket, image.file.name)
        assert stored["ContentLength"] == image.file_size
        assert stored["ContentType"] == "image/jpeg"
        assert stored["CacheControl"] == CACHE_CONTROL
        assert not (Path(settings.MEDIA_ROOT) / image.file.name).exists()

    # A signed URL of the private bucket serves the original.
    image = images[0]
    url = image.file.url
    assert url.startswith(bucket_url(s3_media) + "original_images/")
    assert "X-Amz-Signature=" in url
    assert httpx.get(url).content == server.get(bucket, image.file.name)["Body"].read()

    # A rendition: made from the original in the bucket, stored beside it.
    rendition = image.get_rendition("max-100x100")
    assert rendition.file.name in server.keys(bucket, "images/")
    assert rendition.url.startswith(bucket_url(s3_media) + "images/")
    with PILImage.open(io.BytesIO(httpx.get(rendition.url).content)) as served:
        assert max(served.size) == 100

    # The request page: 200, with its thumbnails made and stored in the bucket.
    page = editor.get(reverse(f"{NS}:inspect", args=[request.pk]))
    assert page.status_code == 200
    html = page.content.decode()
    thumbnails = [key for key in server.keys(bucket, "images/") if "fill-240x240" in key]
    assert len(thumbnails) == 3
    for key in thumbnails:
        assert f"{bucket_url(s3_media)}{key}?" in html
    # Its live part, redrawn every few seconds, keeps the same image URLs (no refetching),
    # signed a second or more later.
    time.sleep(1.1)
    live = editor.get(reverse(f"{NS}:live", args=[request.pk]))
    assert live.status_code == 200
    sources = image_sources(html)
    assert len({s for s in sources if s.startswith(bucket_url(s3_media) + "images/")}) == 3
    assert image_sources(live.content.decode()) == sources

    # The image library lists them, with thumbnails from the bucket too.
    library = editor.get(reverse("wagtailimages:index"))
    assert library.status_code == 200
    assert library.content.decode().count(bucket_url(s3_media) + "images/") >= 3
    edit = editor.get(reverse("wagtailimages:edit", args=[image.pk]))
    assert edit.status_code == 200


@db
def test_a_public_url_gives_cdn_urls(s3_media, demo, collections, editor):
    s3_media.configure(public_url=CDN)
    job = make_request(1).jobs.get()
    image = file_image(job)
    assert image.file.name in s3_media.server.keys(s3_media.bucket)
    assert image.file.url == f"{CDN}/{image.file.name}"  # unsigned, on the CDN
    rendition = image.get_rendition("fill-240x240")
    assert rendition.url == f"{CDN}/{rendition.file.name}"
    assert rendition.file.name in s3_media.server.keys(s3_media.bucket, "images/")
    library = editor.get(reverse("wagtailimages:index"))
    assert library.status_code == 200
    html = library.content.decode()
    assert f"{CDN}/images/" in html and s3_media.server.url not in html


@db
def test_a_variation_reads_its_source_image_from_the_bucket(s3_media, demo, collections):
    image = file_image(make_request(1).jobs.get())
    source = services.load_source_image(image.pk)
    stored = s3_media.server.get(s3_media.bucket, image.file.name)["Body"].read()
    assert source.data == stored and source.content_type == "image/jpeg"

    # Gone from the bucket: a media error, so the job is retried rather than failed.
    s3_media.server.client().delete_object(Bucket=s3_media.bucket, Key=image.file.name)
    with pytest.raises(INFRASTRUCTURE_ERRORS):
        services.load_source_image(image.pk)


# Failures ---------------------------------------------------------------------------------
@pytest.fixture
def outage(s3_media):
    """Media on S3 that fails: its endpoint is down, or its bucket does not exist.

    Returns (the error the upload meets, a way to end the outage, (server, bucket))."""
    created = []

    def start(kind: str):
        if kind == "endpoint down":
            server = started_s3()
            created.append(server)
            bucket = server.create_bucket()
            server.stop()  # nothing answers on its port now
            s3_media.configure(bucket=bucket, endpoint_url=server.url)
            return "EndpointConnectionError", server.start, (server, bucket)
        server, bucket = s3_media.server, f"karasu-missing-{uuid.uuid4().hex[:8]}"
        s3_media.configure(bucket=bucket)
        return "NoSuchBucket", lambda: server.create_bucket(bucket), (server, bucket)

    yield start
    for server in created:
        server.stop()


@db
@pytest.mark.parametrize("kind", ["endpoint down", "bucket missing"])
def test_a_failed_upload_defers_the_job_and_it_succeeds_once_media_is_back(
    outage, demo, collections, kind
):
    error, recover, (server, bucket) = outage(kind)
    job = make_request(1).jobs.get()

    with pytest.raises(RetryTask):  # re-scheduled: an infrastructure error, not a failure
        generate_image.call_local(job.pk)
    job.refresh_from_db()
    assert job.status == Job.RETRYING
    assert (job.attempts, job.infra_retries) == (0, 1)  # the provider attempt was given back
    assert job.error.startswith("infrastructure error: ") and error in job.error
    assert job.error.endswith("(will retry)") and SECRET not in job.error
    assert not Image.objects.filter(generation_job_id=job.pk).exists()  # no orphan row

    recover()
    generate_image.call_local(job.pk)
    job.refresh_from_db()
    assert job.status == Job.SUCCEEDED and job.error == ""
    assert (job.attempts, job.infra_retries) == (1, 1)
    assert Image.objects.filter(generation_job_id=job.pk).count() == 1
    assert server.keys(bucket, "original_images/") == [job.image.file.name]


@db
def test_a_lasting_bucket_error_keeps_the_job_waiting_with_its_reason_uncounted(
    outage, demo, collections, thread_consumer, settings, caplog
):
    """Once a write has failed, each attempt first probes the storage; while the probe
    fails nothing is paid for, and the job waits it out, uncounted, saying why."""
    caplog.set_level(logging.WARNING, logger="generation.outages")
    settings.KARASU["RETRY"] = {**settings.KARASU["RETRY"], "MAX_INFRASTRUCTURE_RETRIES": 2}
    error, recover, _ = outage("bucket missing")
    request = make_request(1)
    queue_jobs(list(request.jobs.values_list("pk", flat=True)))
    job = request.jobs.get()

    def waiting() -> bool:
        job.refresh_from_db()
        return job.error.startswith("waiting: infrastructure error: MediaUnavailable")

    def resting() -> bool:
        """Between two probes: each probe claims the job (running, an attempt counted) and
        gives the claim and the attempt back."""
        return waiting() and job.status == Job.RETRYING

    def probes() -> int:
        waits = f"Job {job.pk} waits "
        return sum(
            waits in message and "for the media storage" in message
            for message in (record.getMessage() for record in caplog.records)
        )

    wait_for(waiting, 30, message="the job to wait for the media storage")
    # More probes than the infrastructure retries allow: none of them counted or failed it.
    wait_for(lambda: probes() > 3, 30, message="more probes than infrastructure retries")
    wait_for(resting, 10, message="the job to rest between two probes")
    assert "the media storage does not take writes (NoSuchBucket: " in job.error
    assert "The specified bucket does not exist" in job.error and SECRET not in job.error
    assert job.attempts == 0 and job.infra_retries <= 1  # the upload that failed, at most
    assert not Image.objects.filter(generation_job_id=job.pk).exists()

    recover()
    wait_for(lambda: settled(request), 60, message="request settled once the bucket exists")
    job.refresh_from_db()
    assert job.status == Job.SUCCEEDED and job.error == ""
    assert Image.objects.filter(generation_job_id=job.pk).count() == 1


@db
def test_a_bucket_that_refuses_writes_is_not_paid_for_again_and_again(
    s3_media, demo, collections, thread_consumer, settings, monkeypatch
):
    """Each job pays before it files: once a write fails, no paid call until one succeeds."""
    from generation.media import MEDIA
    from generation.providers.demo import DemoImageModel

    calls = []
    real_submit = DemoImageModel.submit

    def counted(self, *args, **kwargs):
        calls.append(MEDIA.failure)  # what the worker knew of the storage when it paid
        if len(calls) == 2:
            # The call made while the first image uploads returns once that upload has
            # failed, however long a loaded machine takes to build its boto3 client.
            wait_for(lambda: MEDIA.failure, 30, interval=0.05, message="the first upload failed")
        return real_submit(self, *args, **kwargs)

    monkeypatch.setattr(DemoImageModel, "submit", counted)
    # One call at a time: only the call already under way when the first upload fails
    # pays too (it waits for that failure, above).
    settings.KARASU["IMAGE_MODELS"]["demo"].update(CONCURRENCY=1, LATENCY=1.0)
    reset_cache()
    limiter_for.cache_clear()
    s3_media.configure(bucket="karasu-no-such-bucket")
    request = make_request(6)
    queue_jobs(list(request.jobs.values_list("pk", flat=True)))

    def all_waiting() -> bool:
        errors = list(request.jobs.values_list("error", flat=True))
        return all(error.startswith("waiting: ") for error in errors)

    # Jobs that paid before the failure was known ended their run with a counted retry;
    # every later attempt found the storage still refusing writes and waits, uncounted.
    wait_for(all_waiting, 60, interval=0.2, message="every job to wait for the storage")
    time.sleep(2 * settings.HUEY["outage_backoff_max"])  # more probes, no more calls
    # Two paid calls (the one that found the bucket missing, and the one already started);
    # without the check before each call, 6 jobs × 6 tries.
    assert len(calls) <= 2, calls
    assert calls == [""] * len(calls)  # no call was made once a failed write was known
    # Read until every job is between two probes: a job claimed for its next look has its
    # error cleared for the moment its claim takes, before it is deferred again.
    wait_for(
        lambda: all(
            "NoSuchBucket" in error for error in request.jobs.values_list("error", flat=True)
        ),
        10,
        interval=0.05,
        message="every job waiting for the missing bucket",
    )
    assert not request.jobs.filter(status=Job.FAILED).exists()

    # The bucket fixed, every image is filed without anyone retrying: the jobs that paid
    # before collect the requests they stored, the others pay once. Six images, six calls.
    s3_media.configure()
    settings.KARASU["IMAGE_MODELS"]["demo"].update(CONCURRENCY=8, LATENCY=0)
    reset_cache()
    limiter_for.cache_clear()
    wait_for(lambda: settled(request), 60, message="request settled once the bucket exists")
    assert request.status == GenerationRequest.Status.COMPLETED
    assert len(calls) == 6 and not MEDIA.failure
    assert s3_media.server.keys(s3_media.bucket, "karasu-probes/") == []


@db
def test_an_insert_failing_after_the_upload_leaves_no_object(
    s3_media, demo, collections, monkeypatch
):
    def locked(self, *args, **kwargs):
        raise OperationalError("database is locked")

    monkeypatch.setattr(Image, "save", locked)
    job = make_request(1).jobs.get()
    with pytest.raises(OperationalError):
        ingest(job, get_provider("demo").generate(job.prompt, seed=1))
    assert not Image.objects.filter(generation_job_id=job.pk).exists()
    assert s3_media.server.keys(s3_media.bucket) == []  # uploaded, then deleted


@db
def test_when_the_cleanup_fails_too_the_first_error_is_the_one_raised(
    s3_media, demo, collections, monkeypatch, caplog
):
    server = started_s3()
    try:
        bucket = server.create_bucket()
        s3_media.configure(bucket=bucket, endpoint_url=server.url)

        def locked_and_storage_gone(self, *args, **kwargs):
            server.stop()
            raise OperationalError("database is locked")

        monkeypatch.setattr(Image, "save", locked_and_storage_gone)
        job = make_request(1).jobs.get()
        with caplog.at_level(logging.WARNING):
            # The database error is retried in place (generation/retrying.py); the retry
            # meets the storage gone, and that is raised, not the failed cleanup's error.
            with pytest.raises(EndpointConnectionError):
                ingest(job, get_provider("demo").generate(job.prompt, seed=1))
        assert "Writing a paid result failed (database is locked)" in caplog.text
        assert "the file of an image that was not filed" in caplog.text
        assert not Image.objects.filter(generation_job_id=job.pk).exists()
    finally:
        server.stop()


# The real thing: settings from the environment, in fresh processes ------------------------
@db
def test_generate_command_and_worker_file_images_into_the_bucket_from_the_environment(
    local_s3, collections, tmp_path
):
    """`manage.py generate --wait` and a `run_huey` worker, both configured by MEDIA_S3_*
    at startup as in production; the demo providers (no keys in the environment)."""
    bucket = local_s3.create_bucket()
    environ = {
        **AWS_ENV,
        "KARASU_TEST_MEDIA_S3": "1",
        "MEDIA_S3_BUCKET": bucket,
        "MEDIA_S3_ENDPOINT_URL": local_s3.url,
        "MEDIA_S3_REGION": REGION,
        "MEDIA_S3_PUBLIC_URL": "",
        "ANTHROPIC_API_KEY": "",
        "OPENAI_API_KEY": "",
        "FAL_KEY": "",
        "KARASU_DEMO_FAILURE_RATE": "0",
        "KARASU_DEMO_REJECT_RATE": "0",
    }
    HUEY.storage.flush_all()
    worker = start_consumer(tmp_path / "worker.log", workers=4, **environ)
    try:
        result = subprocess.run(
            [
                sys.executable,
                "manage.py",
                "generate",
                "Crows over Kyoto",
                "--count",
                "2",
                "--wait",
                "--timeout",
                "90",
            ],
            cwd=settings.BASE_DIR,
            env=consumer_env(**environ),
            capture_output=True,
            text=True,
            timeout=120,
        )
    finally:
        stop(worker)
        HUEY.storage.flush_all()
    log = (tmp_path / "worker.log").read_text()
    assert result.returncode == 0, result.stdout + result.stderr + log
    assert "2 succeeded, 0 failed" in result.stdout
    request = GenerationRequest.objects.get()
    images = list(Image.objects.filter(generation_request_id=request.pk))
    assert len(images) == 2
    assert sorted(image.file.name for image in images) == local_s3.keys(bucket, "original_images/")
    for image in images:
        assert f"-job{image.generation_job_id}.jpg" in image.file.name
        assert not (Path(settings.MEDIA_ROOT) / image.file.name).exists()
    assert SECRET not in log
