"""Originals of AI-generated images filed before marking existed: `mark_generated_images`
marks (and signs) them, and drops their unmarked renditions, which come back marked."""

from __future__ import annotations

import hashlib
import io

import pytest
from django.core.cache import cache
from django.core.files.uploadedfile import SimpleUploadedFile
from django.core.management import CommandError, call_command
from PIL import Image as PILImage
from wagtail.images import get_image_model

from tests.support.c2pa import read_manifest_store, throwaway_certificates
from tests.support.images import jpeg

pytestmark = pytest.mark.django_db
Image = get_image_model()


def xmp_of(data: bytes) -> dict:
    with PILImage.open(io.BytesIO(data)) as picture:
        return picture.getxmp().get("xmpmeta", {}).get("RDF", {}).get("Description", {})


def read(file_field) -> bytes:
    with file_field.open("rb") as file:
        return file.read()


def test_old_generated_originals_are_marked_signed_and_their_renditions_made_again(settings):
    cache.clear()
    certificates = throwaway_certificates()
    # Filed before marking: no digital source type yet, so its rendition is unmarked ...
    old = Image.objects.create(
        title="烏 filed last year",
        file=SimpleUploadedFile("old.jpg", jpeg((120, 80)), content_type="image/jpeg"),
        image_model="flux-schnell",
        generation_request_id=3,
    )
    photo = Image.objects.create(
        title="写真", file=SimpleUploadedFile("photo.jpg", jpeg(), content_type="image/jpeg")
    )
    stale = old.get_rendition("width-60")
    assert xmp_of(read(stale.file)) == {}
    # ... then the migration gave it one (generation 0010).
    Image.objects.filter(pk=old.pk).update(digital_source_type="trainedAlgorithmicMedia")
    settings.KARASU["C2PA"] = {
        "CERTIFICATE": certificates.chain.decode(),
        "PRIVATE_KEY": certificates.private_key.decode(),
    }

    call_command("mark_generated_images", stdout=io.StringIO())

    old.refresh_from_db()
    data = read(old.file)
    assert xmp_of(data)["DigitalSourceType"].endswith("/trainedAlgorithmicMedia")
    assert old.provenance_marked and old.is_signed
    assert read_manifest_store(data, trust=certificates.root)[1] == "Trusted"
    assert (old.file_size, old.file_hash) == (len(data), hashlib.sha1(data).hexdigest())
    # The unmarked rendition is gone; the next one is marked.
    assert not old.renditions.filter(pk=stale.pk).exists()
    cache.clear()
    assert xmp_of(read(old.get_rendition("width-60").file))["AISystemUsed"] == "flux-schnell"
    # An upload is left alone, and a second run has nothing to do.
    photo.refresh_from_db()
    assert not photo.provenance_marked and xmp_of(read(photo.file)) == {}
    out = io.StringIO()
    call_command("mark_generated_images", "--dry-run", stdout=out)
    assert "0 AI-generated originals are not marked." in out.getvalue()


def test_unsigned_signs_marked_originals_and_leaves_provider_signed_ones(settings):
    """Images filed before a certificate was configured are marked but unsigned:
    `--unsigned` signs them (their marked renditions stay); a provider-signed original,
    which Karasu never marks, and an already signed one are left as they are."""
    import uuid

    from cms.provenance import marking_for
    from cms.provenance.signing import Credentials, key_algorithm, sign

    cache.clear()
    certificates = throwaway_certificates()
    provider = io.BytesIO()
    sign(
        io.BytesIO(jpeg((90, 60))),
        provider,
        marking_for("trainedAlgorithmicMedia", "the provider's model", None),
        Credentials(
            certificates.chain,
            certificates.private_key,
            key_algorithm(certificates.private_key),
        ),
        title="provider.jpg",
    )

    def generated(title: str, data: bytes, **fields):
        return Image.objects.create(
            title=title,
            file=SimpleUploadedFile("gen.jpg", data, content_type="image/jpeg"),
            image_model="flux-schnell",
            digital_source_type="trainedAlgorithmicMedia",
            provenance_id=uuid.uuid4(),
            **fields,
        )

    unsigned = generated("烏 “unsigned”", jpeg((120, 80)), provenance_marked=True)
    rendition = unsigned.get_rendition("width-60")
    provider_signed = generated(
        "烏 provider-signed",
        provider.getvalue(),
        provenance_note="Kept as the provider made it, with its own C2PA manifest.",
    )
    already = generated(
        "烏 signed", jpeg((50, 40)), provenance_marked=True, c2pa_manifest="urn:c2pa:x"
    )
    names = {image.pk: image.file.name for image in (provider_signed, already)}

    out = io.StringIO()
    with pytest.raises(CommandError, match="No C2PA certificate"):
        call_command("mark_generated_images", "--unsigned", stdout=out)
    call_command("mark_generated_images", "--unsigned", "--dry-run", stdout=out)
    assert "1 AI-generated originals are marked but not signed." in out.getvalue()
    settings.KARASU["C2PA"] = {
        "CERTIFICATE": certificates.chain.decode(),
        "PRIVATE_KEY": certificates.private_key.decode(),
    }
    call_command("mark_generated_images", "--unsigned", stdout=io.StringIO())

    unsigned.refresh_from_db()
    data = read(unsigned.file)
    store, state = read_manifest_store(data, trust=certificates.root)
    assert state == "Trusted" and unsigned.c2pa_manifest == store["active_manifest"]
    assert unsigned.provenance_marked and xmp_of(data)["AISystemUsed"] == "flux-schnell"
    assert (unsigned.file_size, unsigned.file_hash) == (len(data), hashlib.sha1(data).hexdigest())
    assert unsigned.renditions.filter(pk=rendition.pk).exists()  # marked already: kept
    for image in (provider_signed, already):
        image.refresh_from_db()
        assert image.file.name == names[image.pk]
    assert read(provider_signed.file) == provider.getvalue()
    assert already.c2pa_manifest == "urn:c2pa:x"
