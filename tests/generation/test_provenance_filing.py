"""A generated image's original, as filed by a job: marked in XMP, signed with a C2PA
manifest when a certificate is configured (a throwaway chain made by the test), read back
with Pillow and with c2pa-python's Reader. A variation's manifest has its source as an
ingredient. A signing error never loses the image: it is filed marked, and the job and the
image say why it is not signed.
"""

from __future__ import annotations

import hashlib
import io
import json
import logging
import re

import c2pa
import pytest
from django.core.cache import cache
from django.core.files.uploadedfile import SimpleUploadedFile
from django.urls import reverse
from PIL import Image as PILImage
from wagtail.images import get_image_model

from generation.models import GenerationJob
from generation.tasks import generate_image
from tests.support.admin import page_url
from tests.support.c2pa import read_manifest_store, throwaway_certificates
from tests.support.factories import make_request
from tests.support.images import jpeg

pytestmark = [pytest.mark.django_db, pytest.mark.usefixtures("collections")]
Image = get_image_model()
Job = GenerationJob.Status
GENERATED = "http://cv.iptc.org/newscodes/digitalsourcetype/trainedAlgorithmicMedia"
COMPOSITE = "http://cv.iptc.org/newscodes/digitalsourcetype/compositeWithTrainedAlgorithmicMedia"
THEME = "烏 over Kyoto — “dawn” ✨"


@pytest.fixture
def signing(settings):
    """C2PA signing configured with a throwaway certificate chain."""
    certificates = throwaway_certificates()
    settings.KARASU["C2PA"] = {
        "CERTIFICATE": certificates.chain.decode(),
        "PRIVATE_KEY": certificates.private_key.decode(),
    }
    return certificates


def run_one(request) -> tuple[GenerationJob, object, bytes]:
    """Run the request's first job as a worker would, and return it, its image and the
    image's stored original."""
    job = request.jobs.get(index=0)
    generate_image.call_local(job.pk)
    job.refresh_from_db()
    assert job.status == Job.SUCCEEDED, job.error
    image = Image.objects.get(pk=job.image_id)
    with image.open_file() as file:
        return job, image, file.read()


def xmp_of(data: bytes) -> dict:
    with PILImage.open(io.BytesIO(data)) as picture:
        return picture.getxmp()["xmpmeta"]["RDF"]["Description"]


def actions(manifest: dict) -> list[dict]:
    [assertion] = [a for a in manifest["assertions"] if a["label"].startswith("c2pa.actions")]
    return assertion["data"]["actions"]


@pytest.mark.parametrize("image_format", ["jpeg", "png"])
def test_without_a_certificate_the_original_is_marked_and_nothing_is_signed(demo, image_format):
    demo(format=image_format)
    job, image, data = run_one(make_request(1, theme=THEME))
    xmp = xmp_of(data)
    assert xmp["DigitalSourceType"] == GENERATED
    assert xmp["AISystemUsed"] == "demo"
    assert xmp["CreatorTool"] == "Karasu"
    assert xmp["InstanceID"] == f"xmp.iid:{image.provenance_id}"
    assert image.digital_source_type == "trainedAlgorithmicMedia"
    assert image.provenance_marked and not image.is_signed
    assert image.provenance_note == "" and job.error == ""
    # Wagtail's size and hash are the stored (marked) file's.
    assert (image.file_size, image.file_hash) == (len(data), hashlib.sha1(data).hexdigest())
    with pytest.raises(c2pa.C2paError):
        read_manifest_store(data)


@pytest.mark.parametrize("given_as", ["inline", "files"])
def test_with_a_certificate_the_original_is_signed_and_its_manifest_validates(
    demo, settings, tmp_path, given_as
):
    certificates = throwaway_certificates()
    if given_as == "inline":
        settings.KARASU["C2PA"] = {
            "CERTIFICATE": certificates.chain.decode(),
            "PRIVATE_KEY": certificates.private_key.decode(),
        }
    else:
        (tmp_path / "chain.pem").write_bytes(certificates.chain)
        (tmp_path / "key.pem").write_bytes(certificates.private_key)
        settings.KARASU["C2PA"] = {
            "CERTIFICATE_FILE": str(tmp_path / "chain.pem"),
            "PRIVATE_KEY_FILE": str(tmp_path / "key.pem"),
        }
    job, image, data = run_one(make_request(1, theme=THEME))
    store, state = read_manifest_store(data, trust=certificates.root)
    assert state == "Trusted"  # valid, and signed by a chain to the root the reader trusts
    assert store["active_manifest"] == image.c2pa_manifest
    manifest = store["manifests"][image.c2pa_manifest]
    assert manifest["claim_generator_info"][0]["name"] == "Karasu"
    assert manifest["instance_id"] == f"xmp.iid:{image.provenance_id}"
    [created] = actions(manifest)
    assert created["action"] == "c2pa.created"
    assert created["digitalSourceType"] == GENERATED
    assert created["softwareAgent"]["name"] == "demo"  # the model that made it
    # Untrusted, the signature still validates.
    assert read_manifest_store(data)[1] == "Valid"
    # The XMP marking is in the signed file too, and the job has nothing to say.
    assert xmp_of(data)["DigitalSourceType"] == GENERATED
    assert image.provenance_marked and job.error == ""
    assert (image.file_size, image.file_hash) == (len(data), hashlib.sha1(data).hexdigest())


def test_a_variation_is_signed_as_edited_with_its_source_as_ingredient(demo, signing):
    source = Image.objects.create(
        title="本物のカラス — a real crow",
        file=SimpleUploadedFile("crow.jpg", jpeg((300, 200)), content_type="image/jpeg"),
    )
    request = make_request(1, theme=THEME, source_image=source, image_model="demo")
    assert request.is_variation
    job, image, data = run_one(request)
    assert image.digital_source_type == "compositeWithTrainedAlgorithmicMedia"
    assert xmp_of(data)["DigitalSourceType"] == COMPOSITE
    store, state = read_manifest_store(data, trust=signing.root)
    assert state == "Trusted"
    manifest = store["manifests"][store["active_manifest"]]
    [ingredient] = manifest["ingredients"]
    # Named neutrally: an editor's title is not published in the file.
    assert ingredient["title"] == f"karasu-image-{source.pk}"
    assert "本物のカラス" not in json.dumps(store, ensure_ascii=False)
    assert ingredient["relationship"] == "parentOf"
    opened, edited = actions(manifest)
    assert opened["action"] == "c2pa.opened"
    assert edited["action"] == "c2pa.edited"
    assert edited["digitalSourceType"] == COMPOSITE
    assert edited["softwareAgent"]["name"] == "demo"


def test_a_variation_of_a_signed_image_carries_its_sources_manifest(demo, signing):
    _, first, _ = run_one(make_request(1, theme=THEME))
    assert first.is_signed
    _, variation, data = run_one(make_request(1, theme="Again", source_image=first))
    store, state = read_manifest_store(data, trust=signing.root)
    assert state == "Trusted"
    manifest = store["manifests"][store["active_manifest"]]
    [ingredient] = manifest["ingredients"]
    # The source's own manifest comes along: the chain of provenance stays whole.
    assert ingredient["active_manifest"] == first.c2pa_manifest
    assert first.c2pa_manifest in store["manifests"]


BROKEN_CERTIFICATE = (
    "-----BEGIN CERTIFICATE-----\nbm90IGEgY2VydGlmaWNhdGU=\n-----END CERTIFICATE-----\n"
)


@pytest.mark.parametrize(
    "config, reason",
    [
        ({"CERTIFICATE": BROKEN_CERTIFICATE}, "the certificate is invalid"),
        ({"PRIVATE_KEY_MISSING": True}, "without its private key"),
        ({"CERTIFICATE_FILE": "/nonexistent/烏.pem"}, "cannot read KARASU_C2PA_CERTIFICATE_FILE"),
    ],
)
def test_a_signing_error_files_the_image_marked_and_the_job_says_why(
    demo, settings, editor, caplog, config, reason
):
    certificates = throwaway_certificates()
    c2pa_settings = {
        "CERTIFICATE": certificates.chain.decode(),
        "PRIVATE_KEY": certificates.private_key.decode(),
        **config,
    }
    if c2pa_settings.pop("PRIVATE_KEY_MISSING", False):
        del c2pa_settings["PRIVATE_KEY"]
    if "CERTIFICATE_FILE" in config:
        del c2pa_settings["CERTIFICATE"]
    settings.KARASU["C2PA"] = c2pa_settings
    request = make_request(1, theme=THEME)
    with caplog.at_level(logging.WARNING, logger="cms.provenance"):
        job, image, data = run_one(request)
    # Filed, with its marking, and unsigned.
    assert xmp_of(data)["DigitalSourceType"] == GENERATED
    assert image.provenance_marked and not image.is_signed
    with pytest.raises(c2pa.C2paError):
        read_manifest_store(data)
    # Logged, and shown on the job and the image.
    assert reason in image.provenance_note and image.provenance_note.startswith("Not signed")
    assert job.error == image.provenance_note
    assert any("signing" in record.getMessage() for record in caplog.records)
    page = editor.get(page_url(request)).content.decode()
    assert "Not signed" in page and reason in page
    # The job succeeded: its note is information, not shown as a failure.
    note = re.search(r'<p class="help-block ([\w-]+)" data-job-note>([^<]*)</p>', page)
    assert note and note[1] == "help-info" and "Not signed" in note[2]
    edit = editor.get(reverse("wagtailimages:edit", args=[image.pk])).content.decode()
    assert 'data-provenance="note"' in edit and "Not signed" in edit


def test_a_providers_own_c2pa_manifest_is_kept_intact(demo, signing, monkeypatch):
    """A model whose files come signed by their provider: any change would break that
    manifest, so the file is filed as it came, and says so; its renditions are marked."""
    from cms.provenance import marking_for
    from cms.provenance.signing import Credentials, key_algorithm, sign
    from generation.providers import GeneratedImage
    from generation.providers.demo import DemoImageModel

    provider_signed = io.BytesIO()
    credentials = Credentials(
        signing.chain, signing.private_key, key_algorithm(signing.private_key)
    )
    sign(
        io.BytesIO(jpeg((320, 240))),
        provider_signed,
        marking_for("trainedAlgorithmicMedia", "the provider's model", None),
        credentials,
        title="provider.jpg",
    )
    body = provider_signed.getvalue()
    monkeypatch.setattr(
        DemoImageModel,
        "result",
        lambda self, call, **kwargs: GeneratedImage(body, "image/jpeg", 320, 240, seed=1),
    )
    job, image, data = run_one(make_request(1, theme=THEME))
    assert data == body  # byte for byte: the provider's manifest still validates
    store, state = read_manifest_store(data, trust=signing.root)
    assert state == "Trusted"
    assert actions(store["manifests"][store["active_manifest"]])[0]["softwareAgent"] == {
        "name": "the provider's model"
    }
    assert not image.provenance_marked and not image.is_signed
    assert "its own C2PA manifest" in image.provenance_note
    assert job.error == image.provenance_note
    cache.clear()  # Wagtail caches renditions by image id, which a rolled-back test reuses
    rendition = image.get_rendition("width-100|format-webp")
    with rendition.file.open("rb") as file:
        assert xmp_of(file.read())["DigitalSourceType"] == GENERATED


def test_a_marking_bug_files_the_paid_image_unmarked_and_the_job_says_so(
    demo, signing, monkeypatch, caplog
):
    """A bug in the XMP code (fuzzing found ValueError and OverflowError in a parser) must
    not lose an image that was paid for: it is filed as it came, unsigned, and the job
    succeeds with a note; the traceback is logged."""
    import cms.provenance

    def broken(src, dst, packet):
        dst.write(b"half a file")
        raise OverflowError("AVIF box size 🐛")

    monkeypatch.setattr(cms.provenance, "embed_xmp", broken)
    with caplog.at_level(logging.ERROR, logger="cms.provenance"):
        job, image, data = run_one(make_request(1, theme=THEME))
    assert job.image_id == image.pk and job.attempts == 1
    with PILImage.open(io.BytesIO(data)) as picture:
        picture.load()  # the whole image, as the provider made it
        assert "xmp" not in picture.info
    assert not image.provenance_marked and not image.is_signed
    assert "Not marked" in image.provenance_note and "OverflowError" in image.provenance_note
    assert job.error == image.provenance_note
    [record] = [r for r in caplog.records if r.name == "cms.provenance"]
    assert record.exc_info and record.exc_info[0] is OverflowError


def test_the_signed_manifest_does_not_carry_the_prompt(demo, signing):
    """docs/provenance.md promises the prompt is not written: a prompt may hold what an
    editor would not publish. The manifest's title is neutral, like a file name."""
    job, image, data = run_one(make_request(1, theme=THEME))
    assert "烏 over Kyoto" in job.prompt  # the demo model's prompt is built from the theme
    store, _ = read_manifest_store(data, trust=signing.root)
    manifest = store["manifests"][image.c2pa_manifest]
    assert manifest["title"] == f"karasu-{image.provenance_id}.jpg"
    text = json.dumps(store, ensure_ascii=False)
    assert job.prompt not in text and "Kyoto" not in text and "“dawn”" not in text
    # Nor anywhere in the file's bytes (the XMP, the manifest store).
    assert job.prompt.encode() not in data and "“dawn”".encode() not in data


@pytest.mark.parametrize("fmt, media_type", [("AVIF", "image/avif"), ("HEIF", "image/heic")])
def test_a_variation_of_an_avif_or_heic_photo_declares_its_real_type(
    demo, signing, fmt, media_type
):
    """The source is given to c2pa as what it is, not as a JPEG, so the ingredient's
    format is right (and its hash is of the file c2pa parsed as that format)."""
    import pillow_heif

    pillow_heif.register_heif_opener()
    buffer = io.BytesIO()
    PILImage.new("RGB", (64, 48), (30, 90, 200)).save(buffer, fmt)
    source = Image.objects.create(
        title="写真 🐦",
        file=SimpleUploadedFile(f"crow.{fmt.lower()}", buffer.getvalue()),
    )
    _, image, data = run_one(make_request(1, theme=THEME, source_image=source))
    assert image.is_signed, image.provenance_note
    store, state = read_manifest_store(data, trust=signing.root)
    assert state == "Trusted"
    [ingredient] = store["manifests"][store["active_manifest"]]["ingredients"]
    assert ingredient["format"] == media_type
