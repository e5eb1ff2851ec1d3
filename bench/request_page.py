"""Request page and request listing render time with 500 and 10,000 generated images.

Builds a scratch SQLite database (or uses TEST_DATABASE_URL's server with a scratch
database) and a scratch media folder, files 500 real images (the offline demo image model's
512x512 JPEGs, through the pipeline's ingest) for one completed 500-job request, and times
through Django's test client:

- the request page (snippet inspect view): the first view after generation (no renditions
  exist yet) and the median of 5 repeat views, with their SQL query counts;
- the request listing and the image library index once there are 10,000 generated images
  (19 more requests of 500 jobs; their image rows share a few real files, since neither page
  reads those rows' files beyond one page of thumbnails): warm-up, then median of 5.

Targets: request page first view <= 2 s, repeat <= 300 ms; listings <= 300 ms.

    python bench/request_page.py [--profile]

``--profile`` prints the top of a cProfile of the first and a repeat view of the request page.
"""

from __future__ import annotations

import argparse
import cProfile
import os
import pstats
import shutil
import statistics
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING

sys.path[0] = str(Path(__file__).resolve().parent.parent)
DATA_DIR = tempfile.mkdtemp(prefix="karasu-bench-")
os.environ.setdefault("KARASU_TEST_DATA_DIR", DATA_DIR)
os.environ["DJANGO_SETTINGS_MODULE"] = "cms.settings.test"

import django  # noqa: E402

django.setup()

from django.db import connection  # noqa: E402
from django.test import Client  # noqa: E402
from django.test.utils import CaptureQueriesContext, setup_test_environment  # noqa: E402
from django.urls import reverse  # noqa: E402
from django.utils import timezone  # noqa: E402

if TYPE_CHECKING:
    from generation.models import GenerationRequest

JOBS = 500
TOTAL_IMAGES = 10_000
SHARED_FILES = 10
NS = "wagtailsnippets_generation_generationrequest"


def timed(client: Client, url: str, profile: bool = False) -> tuple[float, int]:
    """One GET: (milliseconds, SQL queries); with ``profile``, print its hottest functions."""
    profiler = cProfile.Profile() if profile else None
    with CaptureQueriesContext(connection) as queries:
        start = time.perf_counter()
        if profiler:
            profiler.enable()
        response = client.get(url)
        if profiler:
            profiler.disable()
        elapsed = (time.perf_counter() - start) * 1000
    assert response.status_code == 200, (url, response.status_code)
    if profiler:
        pstats.Stats(profiler).sort_stats("cumulative").print_stats(25)
    return elapsed, len(queries)


def repeated(client: Client, url: str, runs: int = 5) -> tuple[float, int]:
    """Median milliseconds of ``runs`` views, and the query count of the last one."""
    timings, count = [], 0
    for _ in range(runs):
        elapsed, count = timed(client, url)
        timings.append(elapsed)
    return statistics.median(timings), count


def build_request(index: int, jobs: int, status: str = "completed") -> GenerationRequest:
    from generation.models import GenerationJob, GenerationRequest

    request = GenerationRequest.objects.create(
        theme=f"Crows over Kyoto {index}",
        count=jobs,
        llm="demo",
        image_model="demo",
        status=status,
        jobs_total=jobs,
        jobs_succeeded=jobs,
        finished_at=timezone.now(),
    )
    GenerationJob.objects.bulk_create(
        GenerationJob(
            request=request,
            index=i,
            prompt=f"A crow on a torii gate, study {index}-{i}",
            status="succeeded",
            attempts=1,
            seed=i,
        )
        for i in range(jobs)
    )
    return request


def file_images(request: GenerationRequest) -> None:
    """Real images, one per job: the demo image model's, filed as the pipeline files them."""
    from django.conf import settings

    from generation.ingest import ingest
    from generation.models import GenerationJob
    from generation.providers import get_image_model, reset_cache

    # Whatever the environment's demo knobs say: no latency, failures or rejections here.
    settings.KARASU["IMAGE_MODELS"]["demo"] = {
        **settings.KARASU["IMAGE_MODELS"]["demo"],
        "LATENCY": 0,
        "FAILURE_RATE": 0,
        "REJECT_RATE": 0,
        "CALL_LOG": "",
    }
    reset_cache()
    model = get_image_model("demo")
    jobs = list(request.jobs.select_related("request").order_by("index"))
    for job in jobs:
        generated = model.generate(job.prompt, aspect_ratio="1:1", seed=job.seed)
        image, _ = ingest(job, generated, check_existing=False)
        job.image_id = image.pk
    GenerationJob.objects.bulk_update(jobs, ["image"], batch_size=500)


def bulk_images(request: GenerationRequest, files: list[str]) -> None:
    """Image rows for every job of ``request``, sharing ``files`` (no rendering needed)."""
    from wagtail.images import get_image_model

    from generation.models import GenerationJob

    Image = get_image_model()
    jobs = list(request.jobs.order_by("index"))
    Image.objects.bulk_create(
        (
            Image(
                title=job.prompt,
                file=files[job.index % len(files)],
                width=512,
                height=512,
                file_size=1,
                file_hash=f"{job.pk:040d}",
                collection_id=request.collection_id,
                prompt=job.prompt,
                image_model="demo",
                llm="demo",
                seed=job.seed,
                generation_request_id=request.pk,
                generation_job_id=job.pk,
            )
            for job in jobs
        ),
        batch_size=1000,
    )
    by_job = dict(
        Image.objects.filter(generation_request_id=request.pk).values_list(
            "generation_job_id", "pk"
        )
    )
    for job in jobs:
        job.image_id = by_job[job.pk]
    GenerationJob.objects.bulk_update(jobs, ["image"], batch_size=1000)


def report(label: str, measure: Callable[[], tuple[float, int]]) -> None:
    elapsed, queries = measure()
    print(f"{label:<44} {elapsed:10.1f} {queries:8}")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--profile", action="store_true", help="cProfile the request page")
    args = parser.parse_args()

    from django.contrib.auth import get_user_model
    from wagtail.images import get_image_model

    setup_test_environment()
    db = connection.creation.create_test_db(verbosity=0, autoclobber=True)
    try:
        user = get_user_model().objects.create_superuser("bench", "b@example.com", "pw")
        client = Client()
        client.force_login(user)
        print(f"database: {connection.vendor} ({db})")

        start = time.perf_counter()
        request = build_request(0, JOBS)
        file_images(request)
        print(f"filed {JOBS} images in {time.perf_counter() - start:.1f} s")
        page = reverse(f"{NS}:inspect", args=[request.pk])
        client.get(reverse(f"{NS}:list"))  # warm up imports and URL resolvers, not the page

        print(f"{'view':<44} {'ms':>10} {'queries':>8}")
        report("request page, first view (500 images)", lambda: timed(client, page, args.profile))
        if args.profile:
            timed(client, page, profile=True)
        report("request page, repeat views (median of 5)", lambda: repeated(client, page))

        files = list(
            get_image_model()
            .objects.filter(generation_request_id=request.pk)
            .order_by("pk")
            .values_list("file", flat=True)[:SHARED_FILES]
        )
        for i in range(1, TOTAL_IMAGES // JOBS):
            bulk_images(build_request(i, JOBS), files)
        images = get_image_model().objects.count()
        listing = reverse(f"{NS}:list")
        library = reverse("wagtailimages:index")
        report(f"request listing, {images} images (median of 5)", lambda: repeated(client, listing))
        report(f"image library, first view ({images})", lambda: timed(client, library))
        report(f"image library, {images} images (median of 5)", lambda: repeated(client, library))
    finally:
        connection.creation.destroy_test_db(db, verbosity=0)
        if os.environ["KARASU_TEST_DATA_DIR"] == DATA_DIR:
            shutil.rmtree(DATA_DIR, ignore_errors=True)


if __name__ == "__main__":
    main()
