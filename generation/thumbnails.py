"""Thumbnails of a page of generated images, rendered in parallel on a first view."""

from __future__ import annotations

from collections.abc import Sequence
from concurrent.futures import ThreadPoolExecutor
from functools import partial
from io import BytesIO

from wagtail.images import get_image_model
from wagtail.images.models import AbstractImage, AbstractRendition, Filter

# The thumbnail rendition of the request page; inspect.html's {% image %} tag uses the same
# spec, so the renditions prefetched for it are the ones it looks for.
THUMBNAIL_SPEC = "fill-240x240"
# Threads making a first view's missing thumbnails; Pillow decodes and resizes without the GIL.
THUMBNAIL_THREADS = 4


def render_thumbnail(thumbnail: Filter, image: AbstractImage) -> AbstractRendition | None:
    """An unsaved thumbnail rendition of ``image``; None if its file cannot be rendered."""
    try:
        with image.open_file() as file:
            return image.generate_rendition_instance(thumbnail, BytesIO(file.read()))
    except Exception:
        # The {% image %} tag tries again and handles it as it always has: a missing file
        # becomes a broken image, anything else an error.
        return None


def create_missing_thumbnails(images: Sequence[AbstractImage]) -> None:
    """Create the thumbnails of ``images`` that do not exist yet, the pixel work in parallel.

    Left to the {% image %} tag, the first view after generation resizes a page of images one
    after the other, with four queries each. As Wagtail's Image.create_renditions() does for
    several filters of one image, threads render the files (no database access there) and
    this thread inserts the rows, in one query. ``images`` carry their prefetched renditions
    (request_jobs()); the new ones join them, so the tag then finds every thumbnail there.
    """
    thumbnail = Filter(spec=THUMBNAIL_SPEC)
    # With prefetched renditions, find_existing_renditions() makes no query.
    missing = [image for image in images if not image.find_existing_renditions(thumbnail)]
    if not missing:
        return
    with ThreadPoolExecutor(max_workers=min(len(missing), THUMBNAIL_THREADS)) as pool:
        renditions = [r for r in pool.map(partial(render_thumbnail, thumbnail), missing) if r]
    if not renditions:
        return
    Rendition = get_image_model().get_rendition_model()
    # Another view of the page may have created some in the meantime; use those, as Wagtail
    # does. Our files are written only with their rows, so the ones dropped here leave
    # nothing.
    existing = {
        (rendition.image_id, rendition.focal_point_key): rendition
        for rendition in Rendition.objects.filter(
            image__in=[r.image for r in renditions], filter_spec=thumbnail.spec
        )
    }
    new = [r for r in renditions if (r.image_id, r.focal_point_key) not in existing]
    # With ignore_conflicts, a row inserted since the look-up above wins. Ours still shows,
    # and its file is left over, as with Wagtail's create_renditions().
    Rendition.objects.bulk_create(new, ignore_conflicts=True)
    for rendition in renditions:
        found = existing.get((rendition.image_id, rendition.focal_point_key), rendition)
        found.image = rendition.image  # already loaded; the tag reads it for the alt text
        rendition.image.prefetched_renditions.append(found)
