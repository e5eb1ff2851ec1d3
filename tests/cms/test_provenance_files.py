"""AI provenance inside the files: the XMP marking of generated originals and of every
rendition Wagtail makes of them, read back with readers that did not write it (Pillow,
which reads XMP through libjpeg's segments, its PNG and WebP parsers, libavif and libheif;
a GIF's packet is found by walking its blocks here). An upload's renditions carry none.
"""

from __future__ import annotations

import io

import pillow_heif
import pytest
from django.core.files.uploadedfile import SimpleUploadedFile
from PIL import Image as PILImage
from wagtail.images import get_image_model

from cms.provenance import marking_for
from cms.provenance.containers import HasManifest, UnsupportedImage, embed_xmp
from cms.provenance.xmp import (
    COMPOSITE_WITH_TRAINED_ALGORITHMIC_MEDIA,
    SOURCE_TYPE_URI,
    TRAINED_ALGORITHMIC_MEDIA,
    packet,
)

pillow_heif.register_heif_opener()  # HEIC renditions are read back with libheif

Image = get_image_model()
GENERATOR = "flux-schnell «烏»"  # a model name with more than ASCII in it
PROVENANCE_ID = "2f1c7d3e-8a4b-4c5d-9e6f-0123456789ab"


def xmp_of(data: bytes) -> dict:
    """The rdf:Description of a file's XMP, as Pillow (or, for a GIF, this file) reads
    it; {} when the file has none."""
    if data[:3] == b"GIF":
        return _gif_xmp(data)
    with PILImage.open(io.BytesIO(data)) as image:
        image.load()
        return image.getxmp().get("xmpmeta", {}).get("RDF", {}).get("Description", {})


def _gif_xmp(data: bytes) -> dict:
    """A GIF's XMP application extension, found by walking its blocks (Pillow reads no XMP
    from a GIF), parsed with the XML parser Pillow uses."""
    from defusedxml import ElementTree

    position = 13
    if data[10] & 0x80:
        position += 3 * 2 ** ((data[10] & 0x07) + 1)
    while position < len(data) and data[position] == 0x21:
        label = data[position + 1]
        if label == 0xFF and data[position + 3 : position + 14] == b"XMP DataXMP":
            start = position + 14
            end = data.index(b"<?xpacket end=", start)
            text = data[start : data.index(b"?>", end) + 2]
            root = ElementTree.fromstring(text.split(b"?>", 1)[1].rsplit(b"<?xpacket", 1)[0])
            description = root.find(".//{http://www.w3.org/1999/02/22-rdf-syntax-ns#}Description")
            values = {key.split("}")[1]: value for key, value in description.attrib.items()}
            for child in description:
                values[child.tag.split("}")[1]] = child.text
            return values
        position += 2
        while data[position]:
            position += data[position] + 1
        position += 1
    return {}


def pixels(data: bytes) -> bytes:
    with PILImage.open(io.BytesIO(data)) as image:
        return image.convert("RGBA").tobytes()


def encode(fmt: str, **options) -> bytes:
    picture = PILImage.new("RGBA", (96, 64), (200, 30, 30, 255))
    for x in range(0, 96, 8):  # some detail, so that a broken copy shows in the pixels
        for y in range(64):
            picture.putpixel((x, y), (x * 2, y * 3, 250, 120 if "alpha" in options else 255))
    options.pop("alpha", None)
    if fmt in ("JPEG", "GIF") or options.pop("rgb", False):
        picture = picture.convert("RGB")
    buffer = io.BytesIO()
    picture.save(buffer, fmt, **options)
    return buffer.getvalue()


FORMATS = {
    "jpeg": lambda: encode("JPEG", quality=90),
    "png": lambda: encode("PNG"),
    "webp (lossy, VP8)": lambda: encode("WEBP", quality=90, rgb=True),
    "webp (lossless with alpha, VP8L)": lambda: encode("WEBP", lossless=True, alpha=True),
    "webp (extended, VP8X)": lambda: encode("WEBP", quality=90, alpha=True),
    "avif": lambda: encode("AVIF", quality=80),
    "heic": lambda: encode("HEIF", quality=80),
    "gif": lambda: encode("GIF"),
}


def mark(data: bytes, source_type: str = TRAINED_ALGORITHMIC_MEDIA, **kwargs) -> bytes:
    out = io.BytesIO()
    marking = marking_for(source_type, GENERATOR, PROVENANCE_ID, **kwargs)
    embed_xmp(io.BytesIO(data), out, packet(marking))
    return out.getvalue()


@pytest.mark.parametrize("fmt", FORMATS)
def test_every_format_carries_the_marking_and_the_same_pixels(fmt):
    original = FORMATS[fmt]()
    assert xmp_of(original) == {}
    marked = mark(original, created="2026-12-07T09:30:00+09:00")
    xmp = xmp_of(marked)
    assert xmp["DigitalSourceType"] == SOURCE_TYPE_URI + "trainedAlgorithmicMedia"
    assert xmp["DigitalSourceType"] == (
        "http://cv.iptc.org/newscodes/digitalsourcetype/trainedAlgorithmicMedia"
    )
    assert xmp["AISystemUsed"] == GENERATOR
    assert xmp["CreatorTool"] == "Karasu"
    assert xmp["InstanceID"] == f"xmp.iid:{PROVENANCE_ID}"
    # Nothing was re-encoded: every pixel is as it was.
    assert pixels(marked) == pixels(original)


@pytest.mark.parametrize("fmt", FORMATS)
def test_a_rendition_names_its_original_and_a_second_marking_replaces_the_first(fmt):
    once = mark(FORMATS[fmt]())
    twice = mark(once, COMPOSITE_WITH_TRAINED_ALGORITHMIC_MEDIA, rendition=True)
    xmp = xmp_of(twice)
    assert xmp["DigitalSourceType"].endswith("/compositeWithTrainedAlgorithmicMedia")
    if fmt != "gif":  # a GIF's extension is added, not replaced: Willow writes none
        assert twice.count(b"<x:xmpmeta") == 1
        # The rendition points at its original, whose instance id its C2PA manifest has.
        assert xmp["RenditionOf"]["instanceID"] == f"xmp.iid:{PROVENANCE_ID}"
        assert "InstanceID" not in xmp
    assert pixels(twice) == pixels(FORMATS[fmt]())


def test_files_that_cannot_be_marked_are_refused_not_broken():
    with pytest.raises(UnsupportedImage):
        mark(b"<svg xmlns='http://www.w3.org/2000/svg'/>")
    with pytest.raises(UnsupportedImage):
        mark(FORMATS["jpeg"]()[:40])  # cut off inside its headers
    # A C2PA manifest (JUMBF in APP11) would no longer validate after any change.
    jpeg = FORMATS["jpeg"]()
    jumbf = b"\xff\xeb" + (2 + 10).to_bytes(2, "big") + b"JP\x02\x11" + b"\x00" * 6
    with pytest.raises(HasManifest):
        mark(jpeg[:2] + jumbf + jpeg[2:])


# Renditions of library images ------------------------------------------------------------
@pytest.fixture(autouse=True)
def fresh_rendition_cache():
    """Wagtail caches renditions by image id, and a rolled-back test's ids come again."""
    from django.core.cache import cache

    cache.clear()


RENDITION_FORMATS = ["jpeg", "png", "webp", "avif", "heic", "gif"]


def library_image(data: bytes, name: str, **fields):
    return Image.objects.create(
        title=name, file=SimpleUploadedFile(name, data, content_type="image/jpeg"), **fields
    )


def rendition_bytes(image, spec: str) -> bytes:
    rendition = image.get_rendition(spec)
    with rendition.file.open("rb") as file:
        return file.read()


@pytest.mark.django_db
@pytest.mark.parametrize("output", RENDITION_FORMATS)
@pytest.mark.parametrize("source", ["jpeg", "png"])
def test_every_rendition_of_a_generated_image_is_marked(source, output):
    image = library_image(
        FORMATS[source](),
        f"crow.{source}",
        image_model="nano-banana-edit",
        generation_request_id=7,
        generation_job_id=70,
        digital_source_type=COMPOSITE_WITH_TRAINED_ALGORITHMIC_MEDIA,
        provenance_id=PROVENANCE_ID,
    )
    data = rendition_bytes(image, f"fill-48x32|format-{output}")
    xmp = xmp_of(data)
    assert xmp["DigitalSourceType"] == (
        "http://cv.iptc.org/newscodes/digitalsourcetype/compositeWithTrainedAlgorithmicMedia"
    )
    assert xmp["AISystemUsed"] == "nano-banana-edit"
    assert xmp["CreatorTool"] == "Karasu"
    if output != "gif":
        assert xmp["RenditionOf"]["instanceID"] == f"xmp.iid:{PROVENANCE_ID}"
    with PILImage.open(io.BytesIO(data)) as picture:
        assert picture.size == (48, 32)


@pytest.mark.django_db
def test_several_renditions_made_at_once_are_marked_too():
    image = library_image(
        FORMATS["jpeg"](),
        "crow.jpg",
        image_model="flux-schnell",
        digital_source_type=TRAINED_ALGORITHMIC_MEDIA,
    )
    renditions = image.get_renditions("width-40", "width-40|format-webp", "fill-20x20")
    assert len(renditions) == 3
    for rendition in renditions.values():
        with rendition.file.open("rb") as file:
            assert xmp_of(file.read())["AISystemUsed"] == "flux-schnell"


@pytest.mark.django_db
@pytest.mark.parametrize("output", RENDITION_FORMATS)
def test_an_uploaded_photos_renditions_carry_no_marking(output):
    photo = library_image(FORMATS["jpeg"](), "写真 of a real crow.jpg")
    assert not photo.is_ai_generated
    data = rendition_bytes(photo, f"fill-48x32|format-{output}")
    assert xmp_of(data) == {}
    assert b"trainedAlgorithmicMedia" not in data


@pytest.mark.django_db
def test_a_marking_bug_serves_the_rendition_unmarked_and_logs_it(monkeypatch, caplog):
    """A parser's error (fuzzing found ValueError and OverflowError) must not break the
    page that shows the image: the rendition is served as Willow made it, and logged."""
    import cms.provenance

    image = library_image(
        FORMATS["png"](),
        "烏 — “bug”.png",
        image_model="flux-schnell",
        digital_source_type=TRAINED_ALGORITHMIC_MEDIA,
    )

    def broken(src, dst, packet):
        dst.write(b"half a file")
        raise ValueError("zero-width VP8 frame 🐛")

    spools = []
    spool = cms.provenance._spool

    def recorded(*args, **kwargs):
        spools.append(spool(*args, **kwargs))
        return spools[-1]

    monkeypatch.setattr(cms.provenance, "embed_xmp", broken)
    monkeypatch.setattr(cms.provenance, "_spool", recorded)
    with caplog.at_level("ERROR", logger="cms.provenance"):
        data = rendition_bytes(image, "width-40|format-webp")
    assert spools and all(file.closed for file in spools)  # no temp file left open
    with PILImage.open(io.BytesIO(data)) as picture:
        assert picture.format == "WEBP" and picture.width == 40
    assert xmp_of(data) == {}
    [record] = [r for r in caplog.records if r.name == "cms.provenance"]
    assert record.exc_info and record.exc_info[0] is ValueError
