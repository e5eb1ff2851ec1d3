"""Provider-sized images: the demo's SIZE and FORMAT knobs, downloads streamed to temporary
files, and ingest that files them without reading them whole or leaving any file behind."""

from __future__ import annotations

import hashlib
import os
import socket
import stat
import tempfile
import tracemalloc

import httpx
import pytest
import respx
from django.core.exceptions import ImproperlyConfigured
from PIL import Image as PILImage
from wagtail.images import get_image_model
from wagtail.models import Collection

from generation.ingest import ingest
from generation.models import GenerationJob, GenerationRequest
from generation.providers import GeneratedImage, PermanentProviderError
from generation.providers import get_image_model as get_provider
from generation.providers.base import SPOOL_BYTES, ImageBody
from generation.providers.demo import DemoImageModel, image_size
from generation.providers.download import download_image
from tests.support.images import noise_png

Image = get_image_model()
IMAGE_URL = "https://v3.fal.media/files/crow/result.png"
PUBLIC = "34.120.0.1"
CHUNK = 64 * 1024
BIG_EDGE = 720  # a noise PNG of 720x720 is ~1.5 MB: past the 1 MB spool threshold


@pytest.fixture
def spool_dir(tmp_path, monkeypatch):
    """Temporary files go here, so the tests can see whether any is left."""
    directory = tmp_path / "spool"
    directory.mkdir()
    monkeypatch.setattr(tempfile, "tempdir", str(directory))
    return directory


def leftovers(directory) -> list[str]:
    """Entries in ``directory`` plus this process's descriptors still open on files in it
    (an unnamed temporary file has no entry, only a descriptor)."""
    prefix = f"{directory}/"
    open_files = []
    for fd in os.listdir("/proc/self/fd"):
        try:
            target = os.readlink(f"/proc/self/fd/{fd}")
        except OSError:
            continue  # the listing's own descriptor, closed meanwhile
        if target.startswith(prefix):
            open_files.append(target)
    return sorted(os.listdir(directory)) + open_files


@pytest.fixture(scope="module")
def big_png() -> bytes:
    data = noise_png(BIG_EDGE)
    assert len(data) > SPOOL_BYTES
    return data


def streamed(data: bytes, content_type: str = "image/png", edge: int = BIG_EDGE):
    """A GeneratedImage written chunk by chunk, as a download or the demo writes it."""
    body = ImageBody()
    for start in range(0, len(data), CHUNK):
        body.write(data[start : start + CHUNK])
    return GeneratedImage(body, content_type, edge, edge, seed=1, provider_request_id="req-1")


# The demo's knobs -------------------------------------------------------------------------
def test_the_settings_default_to_todays_512_jpeg(settings):
    entry = settings.KARASU["IMAGE_MODELS"]["demo"]
    assert (entry["SIZE"], entry["FORMAT"]) == (512, "jpeg")
    generated = get_provider("demo").generate("a crow at dawn", aspect_ratio="16:9")
    assert (generated.width, generated.height, generated.content_type) == (640, 360, "image/jpeg")
    assert not generated.on_disk and generated.size < 64 * 1024


@pytest.mark.parametrize(
    ("aspect_ratio", "at_512", "at_1024"),
    [
        ("1:1", (512, 512), (1024, 1024)),
        ("4:3", (576, 432), (1152, 864)),
        ("3:4", (432, 576), (864, 1152)),
        ("16:9", (640, 360), (1280, 720)),
        ("9:16", (360, 640), (720, 1280)),
    ],
)
def test_other_aspect_ratios_scale_from_size(aspect_ratio, at_512, at_1024):
    assert image_size(aspect_ratio) == image_size(aspect_ratio, 512) == at_512
    generated = DemoImageModel("demo", SIZE=1024).generate("a crow", aspect_ratio=aspect_ratio)
    with PILImage.open(generated.open()) as picture:
        assert picture.format == "JPEG"
        assert picture.size == (generated.width, generated.height) == at_1024


def test_png_output_is_a_png():
    generated = DemoImageModel("demo", SIZE=256, FORMAT="PNG").generate("a crow at dawn")
    assert (generated.content_type, generated.extension) == ("image/png", "png")
    with PILImage.open(generated.open()) as picture:
        assert (picture.format, picture.size) == ("PNG", (256, 256))


def test_the_same_prompt_and_seed_render_the_same_bytes_at_any_size():
    model = DemoImageModel("demo", SIZE=1024)
    first = model.generate("a crow at dawn", seed=7)
    assert DemoImageModel("demo", SIZE=1024).generate("a crow at dawn", seed=7).data == first.data
    assert model.generate("a heron at dusk", seed=7).data != first.data


def test_a_2048_png_weighs_what_a_real_one_does_and_is_written_to_disk(spool_dir):
    model = DemoImageModel("demo", SIZE=2048, FORMAT="png")
    tracemalloc.start()
    try:
        generated = model.generate("a crow at dawn over Kyoto")
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    assert generated.size > 3 * 1024 * 1024  # several MB: the noise does not compress away
    # The encoded PNG went to the file as it was written, never accumulated as bytes.
    assert peak < 3 * SPOOL_BYTES < generated.size
    assert generated.on_disk
    info = os.fstat(generated.file.fileno())
    assert stat.S_ISREG(info.st_mode) and info.st_size == generated.size
    assert info.st_nlink == 0  # no name: nothing is left behind even if the worker dies
    with PILImage.open(generated.open()) as picture:
        assert (picture.format, picture.size) == ("PNG", (2048, 2048))
    assert generated.sha1 == hashlib.sha1(generated.data).hexdigest()
    generated.close()
    assert generated.closed and leftovers(spool_dir) == []


@pytest.mark.parametrize("knobs", [{"SIZE": 10}, {"SIZE": 100_000}, {"FORMAT": "gif"}])
def test_unusable_knobs_are_refused(knobs):
    with pytest.raises(ImproperlyConfigured):
        DemoImageModel("demo", **knobs)


# Streaming downloads ----------------------------------------------------------------------
class Chunks(httpx.SyncByteStream):
    """A body sent in network-sized chunks, without a Content-Length; counts what was read."""

    def __init__(self, data: bytes):
        self.data, self.sent = data, 0

    def __iter__(self):
        for start in range(0, len(self.data), CHUNK):
            self.sent += 1
            yield self.data[start : start + CHUNK]


@pytest.fixture
def router(monkeypatch):
    monkeypatch.setattr(
        socket,
        "getaddrinfo",
        lambda host, port, *a, **k: [(socket.AF_INET, socket.SOCK_STREAM, 6, "", (PUBLIC, port))],
    )
    with respx.mock(assert_all_called=False) as router:
        yield router


def serve(router, data: bytes, content_type: str = "image/png") -> Chunks:
    stream = Chunks(data)
    router.get(host=PUBLIC).mock(
        return_value=httpx.Response(200, headers={"content-type": content_type}, stream=stream)
    )
    return stream


def download(**kwargs):
    kwargs.setdefault("max_bytes", 25 * 1024 * 1024)
    return download_image(IMAGE_URL, allowed_hosts=["*.fal.media"], max_pixels=40_000_000, **kwargs)


def test_a_large_download_streams_to_a_temporary_file(router, spool_dir):
    data = noise_png(1200)  # ~4.3 MB
    serve(router, data)
    tracemalloc.start()
    try:
        body, content_type, width, height = download()
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    assert (content_type, width, height) == ("image/png", 1200, 1200)
    # Read, hashed, counted and verified chunk by chunk: never held whole in memory.
    assert peak < 2 * SPOOL_BYTES < len(data)
    assert body.on_disk and body.size == len(data)
    info = os.fstat(body.open().fileno())
    assert stat.S_ISREG(info.st_mode) and info.st_size == len(data)
    assert body.sha1 == hashlib.sha1(data).hexdigest() and body.read() == data
    body.close()
    assert leftovers(spool_dir) == []


def test_a_small_download_stays_in_memory(router, spool_dir):
    data = noise_png(64)
    serve(router, data)
    body = download().body
    assert not body.on_disk and body.read() == data and leftovers(spool_dir) == []


def test_the_size_cap_holds_while_streaming_and_leaves_nothing(router, spool_dir):
    data = noise_png(1200)
    stream = serve(router, data)
    with pytest.raises(PermanentProviderError, match=r"download too large \(> 2097152 bytes\)"):
        download(max_bytes=2 * 1024 * 1024)
    assert stream.sent < len(data) / CHUNK  # it stopped reading at the cap
    assert leftovers(spool_dir) == []


def test_a_large_body_that_is_no_image_leaves_nothing(router, spool_dir):
    serve(router, os.urandom(3 * SPOOL_BYTES))
    with pytest.raises(PermanentProviderError, match="not a valid image"):
        download()
    assert leftovers(spool_dir) == []


# Ingest -----------------------------------------------------------------------------------
@pytest.fixture
def job(db, collections) -> GenerationJob:
    request = GenerationRequest.objects.create(
        theme="Crows over Kyoto",
        count=1,
        llm="demo",
        image_model="demo",
        collection=Collection.objects.get(name="Generated images"),
    )
    return GenerationJob.objects.create(request=request, index=0, prompt="A crow at dawn", seed=1)


def stored_sha1(image) -> str:
    with image.file.open("rb") as file:
        return hashlib.sha1(file.read()).hexdigest()


def stored_size(image) -> int:
    return image.file.size


def provider_bytes(image) -> bytes:
    """The stored original without the XMP chunk that marks it as generated
    (cms/provenance puts it right after IHDR): the provider's bytes, byte for byte."""
    with image.file.open("rb") as file:
        stored = file.read()
    length = int.from_bytes(stored[33:37], "big")
    assert stored[37:58] == b"iTXtXML:com.adobe.xmp"
    return stored[:33] + stored[33 + 12 + length :]


def test_ingest_files_the_streamed_bytes_and_closes_the_file(job, big_png, spool_dir):
    generated = streamed(big_png)
    assert generated.on_disk
    image, created = ingest(job, generated)
    assert created and generated.closed and leftovers(spool_dir) == []
    # Stored: the provider's bytes with their provenance, measured as stored.
    assert provider_bytes(image) == big_png
    assert image.file_hash == stored_sha1(image)
    assert (image.file_size, image.width, image.height) == (stored_size(image), BIG_EDGE, BIG_EDGE)
    assert image.file.name.startswith("original_images/")
    assert image.file.name.endswith(f"-job{job.pk}.png")
    image.refresh_from_db()
    assert (image.width, image.height, image.file_size) == (BIG_EDGE, BIG_EDGE, stored_size(image))


def test_a_streamed_and_an_in_memory_image_file_the_same_bytes(job, big_png, spool_dir):
    other = GenerationJob.objects.create(request=job.request, index=1, prompt="A crow at dusk")
    from_file, _ = ingest(job, streamed(big_png))
    from_bytes, _ = ingest(other, GeneratedImage(big_png, "image/png", BIG_EDGE, BIG_EDGE))
    # Each is marked with its own document id; under that, the bytes are the same.
    assert provider_bytes(from_file) == provider_bytes(from_bytes) == big_png
    assert from_file.file_hash == stored_sha1(from_file)
    assert from_bytes.file_hash == stored_sha1(from_bytes)
    assert from_file.file_size == from_bytes.file_size


def test_a_demo_png_is_filed_from_its_temporary_file(job, spool_dir):
    generated = DemoImageModel("demo", SIZE=1024, FORMAT="png").generate(job.prompt, seed=1)
    assert generated.on_disk
    expected = generated.sha1
    image, created = ingest(job, generated)
    assert created and image.file_hash == stored_sha1(image)
    assert hashlib.sha1(provider_bytes(image)).hexdigest() == expected
    with PILImage.open(image.file.path) as picture:
        assert picture.size == (1024, 1024)
    assert leftovers(spool_dir) == []


def superseded(job, generated):
    assert ingest(job, generated, confirm=lambda image: False) == (None, False)
    assert not Image.objects.filter(generation_job_id=job.pk).exists()


def lost_the_race(job, generated):
    winner, _ = ingest(job, GeneratedImage(noise_png(8), "image/png", 8, 8))
    assert ingest(job, generated, check_existing=False) == (winner, False)


def already_filed(job, generated):
    first, _ = ingest(job, GeneratedImage(noise_png(8), "image/png", 8, 8))
    assert ingest(job, generated) == (first, False)


def failed(job, generated):
    def confirm(image):
        raise RuntimeError("database went away")

    with pytest.raises(RuntimeError):
        ingest(job, generated, confirm=confirm)
    assert not Image.objects.filter(generation_job_id=job.pk).exists()


@pytest.mark.parametrize("outcome", [superseded, lost_the_race, already_filed, failed])
def test_every_other_outcome_closes_the_temporary_file_too(job, big_png, spool_dir, outcome):
    generated = streamed(big_png)
    assert generated.on_disk and leftovers(spool_dir)  # its descriptor, while it is open
    outcome(job, generated)
    assert generated.closed and leftovers(spool_dir) == []


def test_an_in_memory_image_survives_a_superseded_ingest_to_be_filed_again(job):
    # services.store may be called again with the same small result (see test_job_claims).
    generated = GeneratedImage(noise_png(32), "image/png", 32, 32)
    assert ingest(job, generated, confirm=lambda image: False) == (None, False)
    image, created = ingest(job, generated)
    assert created and image.file_hash == stored_sha1(image)
    assert provider_bytes(image) == generated.data
