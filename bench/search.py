"""The image library's search with and without the CJK pieces (cms/cjk.py): index time and
size for N generated images, and the admin listing's search time.

Builds a scratch SQLite database (or, with TEST_DATABASE_URL, a scratch PostgreSQL database)
and files N images whose titles, alt texts and tags are what the demo LLM writes for five
themes (Japanese, Chinese, Arabic, English with emoji, English with typographic quotes).
For each configuration, Wagtail's stock indexing ("stock": the CJK fields taken off the
model) and Karasu's ("cjk"), it empties the index and indexes every image one by one as the
workers do (backend.add), --runs times taking turns, and prints the median and the best
time; then the index's size on disk and, for a few searches, the median of 5 views of the
admin's image listing (/admin/images/?q=…, Django's test client: the search, 30 thumbnails
and the page) and of the search alone (the backend's autocomplete, its first 30 results),
and how many images each found.

    python bench/search.py [--images 1000] [--runs 3]
"""

from __future__ import annotations

import argparse
import os
import shutil
import statistics
import sys
import tempfile
import time
from pathlib import Path

sys.path[0] = str(Path(__file__).resolve().parent.parent)
DATA_DIR = tempfile.mkdtemp(prefix="karasu-bench-")
os.environ.setdefault("KARASU_TEST_DATA_DIR", DATA_DIR)
os.environ["DJANGO_SETTINGS_MODULE"] = "cms.settings.test"

import django  # noqa: E402

django.setup()

from django.core.files.base import ContentFile  # noqa: E402
from django.db import connection  # noqa: E402
from django.test import Client  # noqa: E402
from django.test.utils import setup_test_environment  # noqa: E402
from django.urls import reverse  # noqa: E402

THEMES = {
    "京都の烏、夕暮れ": ["京都", "カラス"],
    "乌鸦在雪中": ["乌鸦", "冬天"],
    "غراب عند الغسق": ["غراب"],
    "Crows 🐦‍⬛ at dawn 🌅": ["crows"],
    "Crows — “at dusk” … ‘finally’": ["dusk"],
}
QUERIES = ["烏", "夕暮れ", "雪中", "カラス", "الغسق", "lighthouse", "crows dusk"]


def index_size() -> int:
    """Bytes the search index takes on disk (its tables, their indexes and TOAST)."""
    with connection.cursor() as cursor:
        if connection.vendor == "postgresql":
            cursor.execute(
                "SELECT sum(pg_total_relation_size(c.oid)) FROM pg_class c "
                "WHERE c.relname LIKE 'wagtailsearch%%' AND c.relkind = 'r'"
            )
        else:
            cursor.execute("SELECT sum(pgsize) FROM dbstat WHERE name LIKE 'wagtailsearch%'")
        return int(cursor.fetchone()[0] or 0)


def file_images(count: int) -> list:
    from wagtail.images import get_image_model
    from wagtail.models import Collection

    from generation.providers import get_llm
    from tests.support.images import png

    Image = get_image_model()
    collection = Collection.get_first_root_node()
    picture = ContentFile(png(), name="bench.png")
    first = Image.objects.create(title="bench", file=picture, collection=collection)
    images = []
    per_theme = -(-count // len(THEMES))
    for theme, tags in THEMES.items():
        for prompt in get_llm("demo").expand(theme, per_theme):
            if len(images) == count:
                break
            image = Image(
                title=prompt.prompt[:255],
                description=prompt.alt_text,
                file=first.file.name,
                width=first.width,
                height=first.height,
                collection=collection,
                prompt=prompt.prompt,
            )
            image.save()
            image.tags.add(*tags, "demo")
            images.append(image)
    first.delete()
    return images


def run(label: str, images: list, client: Client, queries: bool) -> float:
    """Index ``images`` afresh and return the seconds it took; with ``queries``, print the
    index's size and the searches' times."""
    from modelsearch.conf import get_app_config
    from wagtail.search.backends import get_search_backend

    IndexEntry = get_app_config().get_model("IndexEntry")  # noqa: N806

    IndexEntry.objects.all().delete()
    if connection.vendor == "sqlite":
        with connection.cursor() as cursor:
            cursor.execute("VACUUM")
    backend = get_search_backend()
    start = time.perf_counter()
    for image in images:
        backend.add(image)
    indexed = time.perf_counter() - start
    # Measured compacted: FTS5's segments merged, PostgreSQL's dead rows of earlier runs gone.
    with connection.cursor() as cursor:
        if connection.vendor == "sqlite":
            table = get_app_config().get_model("SQLiteFTSIndexEntry")._meta.db_table
            cursor.execute(f"INSERT INTO {table}({table}) VALUES('optimize')")
            cursor.execute("VACUUM")
        else:
            cursor.execute("VACUUM FULL ANALYZE wagtailsearch_indexentry")
    if not queries:
        return indexed
    print(f"{label:<6} index {index_size() / 1024:,.0f} KiB")
    listing = reverse("wagtailimages:index")
    Image = type(images[0])  # noqa: N806
    for query in QUERIES:
        pages, searches = [], []
        for _ in range(6):
            began = time.perf_counter()
            response = client.get(listing, {"q": query})
            pages.append((time.perf_counter() - began) * 1000)
            began = time.perf_counter()
            list(backend.autocomplete(query, Image.objects.all())[:30])
            searches.append((time.perf_counter() - began) * 1000)
        assert response.status_code == 200
        hits = response.context["paginator"].count
        print(
            f"       q={query:<12} listing {statistics.median(pages[1:]):6.1f} ms, "
            f"search alone {statistics.median(searches[1:]):5.1f} ms, {hits:4} found"
        )
    return indexed


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--images", type=int, default=1000)
    parser.add_argument("--runs", type=int, default=3, help="indexing runs of each")
    args = parser.parse_args()

    from django.contrib.auth import get_user_model
    from wagtail.images import get_image_model

    from cms.cjk import CJK_FIELD

    setup_test_environment()
    db = connection.creation.create_test_db(verbosity=0, autoclobber=True)
    Image = get_image_model()
    karasu_fields = Image.search_fields
    try:
        user = get_user_model().objects.create_superuser("bench", "b@example.com", "pw")
        client = Client()
        client.force_login(user)
        print(f"database: {connection.vendor} ({db})")
        images = file_images(args.images)
        client.get(reverse("wagtailimages:index"))  # warm up imports and URL resolvers
        stock_fields = [f for f in karasu_fields if f.field_name != CJK_FIELD]
        times: dict[str, list[float]] = {"stock": [], "cjk": []}
        # The two take turns, so that neither has the warmer caches.
        for last in [False] * (args.runs - 1) + [True]:
            for label, fields in (("stock", stock_fields), ("cjk", karasu_fields)):
                Image.search_fields = fields
                times[label].append(run(label, images, client, queries=last))
        for label, seconds in times.items():
            each = statistics.median(seconds) / len(images) * 1000
            best = min(seconds) / len(images) * 1000
            print(
                f"{label:<6} indexing {len(images)} images one by one: {each:.2f} ms each "
                f"(median), {best:.2f} ms (best run); runs: "
                + ", ".join(f"{value:.2f} s" for value in seconds)
            )
    finally:
        Image.search_fields = karasu_fields
        connection.creation.destroy_test_db(db, verbosity=0)
        if os.environ["KARASU_TEST_DATA_DIR"] == DATA_DIR:
            shutil.rmtree(DATA_DIR, ignore_errors=True)


if __name__ == "__main__":
    main()
