"""What AI provenance costs: the XMP marking of a rendition, and the marking and C2PA
signing of an original as it is filed.

Renditions: Wagtail's own rendition of a generated image (KarasuImage.generate_rendition_file,
Willow's resize and encode), timed as an upload (unmarked) and as a generated image
(marked), and the marking step alone (cms.provenance.mark_rendition), for JPEG, PNG, WebP
and AVIF at a thumbnail (fill-240x240) and a page width (width-1200), and a large one: a
width-2048 PNG of the 2048x2048 PNG original (~7 MB, above FILE_UPLOAD_MAX_MEMORY_SIZE, so
its marked copy is spooled to a file on disk). Originals: the demo
model's 1024x1024 JPEG (~120 KB) and 2048x2048 PNG (~7 MB), marked in XMP, then marked and
signed (ES256, a throwaway chain, no time-stamp authority). And the alternative for
renditions that was not chosen: signing a rendition with its original as the parent
ingredient, as a signed rendition must be. Medians of --runs runs (p90 beside).

    python bench/provenance.py [--runs 30]
"""

from __future__ import annotations

import argparse
import io
import os
import statistics
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path[0] = str(ROOT)


def setup() -> None:
    data = tempfile.mkdtemp(prefix="karasu-bench-provenance-")
    os.environ.setdefault("DJANGO_SETTINGS_MODULE", "cms.settings.dev")
    os.environ["KARASU_DATA_DIR"] = data
    os.environ["MEDIA_ROOT"] = os.path.join(data, "media")
    os.environ.setdefault("LOG_LEVEL", "WARNING")
    import django

    django.setup()


def timed(function, runs: int) -> tuple[float, float]:
    """(median, p90) in milliseconds."""
    times = []
    for _ in range(runs):
        start = time.perf_counter()
        function()
        times.append((time.perf_counter() - start) * 1000)
    times.sort()
    return statistics.median(times), times[min(len(times) - 1, int(len(times) * 0.9))]


def paired(first, second, runs: int) -> tuple[tuple[float, float], tuple[float, float]]:
    """timed() of two functions run in turn, so that a busy machine slows both alike."""
    times: tuple[list[float], list[float]] = ([], [])
    for _ in range(runs):
        for function, bucket in ((first, times[0]), (second, times[1])):
            start = time.perf_counter()
            function()
            bucket.append((time.perf_counter() - start) * 1000)
    results = []
    for bucket in times:
        bucket.sort()
        results.append(
            (statistics.median(bucket), bucket[min(len(bucket) - 1, len(bucket) * 9 // 10)])
        )
    return results[0], results[1]


def file_bytes(file) -> bytes:
    file.seek(0)  # Wagtail hands the rendition over where its encoder left it
    return file.read()


def ms(pair: tuple[float, float]) -> str:
    return f"{pair[0]:.2f} ({pair[1]:.2f})"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--runs", type=int, default=30)
    args = parser.parse_args()
    setup()

    from django.conf import settings
    from django.core.files import File
    from django.core.files.storage import default_storage
    from wagtail.images.models import Filter

    from cms.models import KarasuImage
    from cms.provenance import mark_original, mark_rendition, marking_for
    from cms.provenance.signing import Credentials, Ingredient, key_algorithm, sign
    from generation.providers.demo_render import render
    from tests.support.c2pa import throwaway_certificates

    certificates = throwaway_certificates()
    credentials = Credentials(
        certificates.chain,
        certificates.private_key,
        key_algorithm(certificates.private_key),
    )
    originals = {
        "1024x1024 JPEG": render("Crows over Kyoto", "1:1", 7, size=1024, image_format="jpeg"),
        "2048x2048 PNG": render("Crows over Kyoto", "1:1", 7, size=2048, image_format="png"),
    }
    marking = marking_for("trainedAlgorithmicMedia", "flux-schnell", "0" * 32)
    print(f"# AI provenance costs, medians of {args.runs} runs (p90), milliseconds\n")

    print("## Renditions of a 1024x1024 JPEG original\n")
    print("| rendition | Wagtail's rendition, upload | same, generated (marked) |"
          " marking alone | overhead |")  # fmt: skip
    print("| --- | ---: | ---: | ---: | ---: |")
    name = default_storage.save(
        "original_images/bench.jpg", io.BytesIO(originals["1024x1024 JPEG"])
    )
    common = {"title": "bench", "file": name, "width": 1024, "height": 1024, "collection_id": 1}
    upload = KarasuImage(pk=1, **common)
    generated = KarasuImage(
        pk=2, image_model="flux-schnell", digital_source_type="trainedAlgorithmicMedia", **common
    )
    rendition_marking = generated.provenance_marking(rendition=True)
    for spec in ("fill-240x240", "width-1200"):
        for output in ("jpeg", "png", "webp", "avif"):
            rendition_filter = Filter(spec=f"{spec}|format-{output}")

            def make(image=upload, rendition_filter=rendition_filter):
                image.generate_rendition_file(rendition_filter).close()

            plain, marked = paired(make, lambda: make(generated), args.runs)
            data = file_bytes(upload.generate_rendition_file(rendition_filter))

            def mark_only(data=data):
                mark_rendition(File(io.BytesIO(data), name="r"), rendition_marking).close()

            alone = timed(mark_only, args.runs * 3)
            share = alone[0] / plain[0] * 100
            print(f"| {spec} {output} ({len(data) // 1024} KB) | {ms(plain)} | {ms(marked)} |"
                  f" {ms(alone)} | {share:.1f}% |")  # fmt: skip

    print("\n## A large rendition, of the 2048x2048 PNG original\n")
    print("| rendition | Wagtail's rendition, upload | same, generated (marked) |"
          " marking alone | overhead | marked copy |")  # fmt: skip
    print("| --- | ---: | ---: | ---: | ---: | --- |")
    name = default_storage.save(
        "original_images/bench-large.png", io.BytesIO(originals["2048x2048 PNG"])
    )
    large = {**common, "file": name, "width": 2048, "height": 2048}
    large_upload = KarasuImage(pk=3, **large)
    large_generated = KarasuImage(
        pk=4, image_model="flux-schnell", digital_source_type="trainedAlgorithmicMedia", **large
    )
    rendition_filter = Filter(spec="width-2048|format-png")

    def make_large(image=large_upload):
        image.generate_rendition_file(rendition_filter).close()

    # Each encode of a 2048x2048 PNG takes seconds: fewer runs.
    large_runs = max(3, args.runs // 6)
    plain, marked = paired(make_large, lambda: make_large(large_generated), large_runs)
    data = file_bytes(large_upload.generate_rendition_file(rendition_filter))
    limit = settings.FILE_UPLOAD_MAX_MEMORY_SIZE
    probe = mark_rendition(File(io.BytesIO(data), name="r"), rendition_marking)
    # SpooledTemporaryFile's own flag: whether it went past its size to a file on disk.
    where = "on disk" if getattr(probe.file, "_rolled", False) else "in memory"
    probe.close()

    def mark_large(data=data):
        mark_rendition(File(io.BytesIO(data), name="r"), rendition_marking).close()

    alone = timed(mark_large, args.runs)
    share = alone[0] / plain[0] * 100
    print(f"| width-2048 png ({len(data) // 1024} KB; limit {limit // 1024} KB) | {ms(plain)} |"
          f" {ms(marked)} | {ms(alone)} | {share:.2f}% | {where} |")  # fmt: skip

    print("\n## Originals, at filing\n")
    print("| original | XMP marking | XMP marking + C2PA signing | signing alone |")
    print("| --- | ---: | ---: | ---: |")
    for label, data in originals.items():

        def xmp_only(data=data):
            mark_original(io.BytesIO(data), marking, title="bench", signing=False).close()

        def signed(data=data):
            result = mark_original(io.BytesIO(data), marking, title="bench", signing=credentials)
            assert result.manifest, result.note
            result.close()

        runs = args.runs if len(data) < 1_000_000 else max(5, args.runs // 3)
        xmp_cost, signed_cost = paired(xmp_only, signed, runs)
        print(f"| {label} ({len(data) // 1024} KB) | {ms(xmp_cost)} | {ms(signed_cost)} |"
              f" {signed_cost[0] - xmp_cost[0]:.2f} |")  # fmt: skip

    print("\n## Not chosen: signing each rendition, its original as the parent ingredient\n")
    print("| original → rendition | XMP marking | C2PA-signed rendition |")
    print("| --- | ---: | ---: |")
    for label, data in originals.items():
        original = mark_original(io.BytesIO(data), marking, title="bench", signing=credentials)
        signed_original = original.file.read()
        original.close()
        thumbnail = file_bytes(
            upload.generate_rendition_file(Filter(spec="fill-240x240|format-jpeg"))
        )

        def xmp_rendition(thumbnail=thumbnail):
            mark_rendition(File(io.BytesIO(thumbnail), name="r"), rendition_marking).close()

        def signed_rendition(thumbnail=thumbnail, signed_original=signed_original):
            ingredient = Ingredient("original", lambda: _opened(signed_original))
            sign(io.BytesIO(thumbnail), io.BytesIO(), marking, credentials, title="r",
                 ingredient=ingredient)  # fmt: skip

        runs = args.runs if len(data) < 1_000_000 else max(5, args.runs // 3)
        xmp_cost, signed_cost = paired(xmp_rendition, signed_rendition, runs)
        print(f"| {label} → fill-240x240 JPEG | {ms(xmp_cost)} | {ms(signed_cost)} |")


class _opened:
    """A context manager over bytes, as Ingredient.open gives a file."""

    def __init__(self, data: bytes) -> None:
        self.stream = io.BytesIO(data)

    def __enter__(self):
        return self.stream

    def __exit__(self, *exc_info) -> None:
        self.stream.close()


if __name__ == "__main__":
    main()
