"""Save and generate on the add form, and the request page that follows the work live."""

from __future__ import annotations

import functools
import io
import re
from datetime import timedelta

import pytest
from django.core.files.images import ImageFile
from django.db import connection
from django.test.utils import CaptureQueriesContext
from django.urls import reverse
from django.utils import timezone
from huey.contrib.djhuey import HUEY
from wagtail.images import get_image_model

from generation.models import GenerationJob, GenerationRequest
from tests.support.admin import NS, page_url
from tests.support.factories import make_request_with_results
from tests.support.forms import request_form_data
from tests.support.images import jpeg

pytestmark = [pytest.mark.django_db, pytest.mark.usefixtures("collections")]
Image = get_image_model()
Req = GenerationRequest.Status
Job = GenerationJob.Status
POLLING = 'data-controller="karasu-poll w-swap"'


@pytest.fixture
def queued():
    """The names of the tasks on the test run's queue, which is emptied before and after."""
    HUEY.storage.flush_all()
    yield lambda: [task.name for task in HUEY.pending()]
    HUEY.storage.flush_all()


form_data = functools.partial(request_form_data, count=6, tags="crows")


def live_url(request: GenerationRequest, **query: object) -> str:
    url = reverse(f"{NS}:live", args=[request.pk])
    return url + ("?" + "&".join(f"{k}={v}" for k, v in query.items()) if query else "")


def succeed(job: GenerationJob, when=None) -> None:
    """File an image for ``job`` as the pipeline does, and count it on its request."""
    image = Image.objects.create(
        title=job.prompt,
        file=ImageFile(io.BytesIO(jpeg((32, 32), (40, 40, 90))), name=f"job{job.pk}.jpg"),
        collection=job.request.collection,
        prompt=job.prompt,
        generation_request_id=job.request_id,
        generation_job_id=job.pk,
    )
    GenerationJob.objects.filter(pk=job.pk).update(
        status=Job.SUCCEEDED, image=image, finished_at=when or timezone.now()
    )
    request = GenerationRequest.objects.get(pk=job.request_id)
    request.jobs_succeeded += 1
    request.save(update_fields=["jobs_succeeded"])


# Save and generate ----------------------------------------------------------------------


def test_add_form_offers_save_and_generate_as_its_primary_action(editor):
    html = editor.get(reverse(f"{NS}:add")).content.decode()
    footer = html[html.index('<footer class="footer') :]
    # Wagtail's action menu: the first button is the primary one, Save is in the drop-up.
    primary = footer.index('name="action-generate"')
    assert primary < footer.index("More actions") < footer.index("Save\n")
    assert "Save and generate" in footer

    request = GenerationRequest.objects.create(theme="Crows", count=3)
    edit = editor.get(reverse(f"{NS}:edit", args=[request.pk])).content.decode()
    assert 'name="action-generate"' not in edit  # an existing request has its own actions


def test_save_and_generate_starts_the_request_and_lands_on_its_page(
    editor, queued, django_capture_on_commit_callbacks
):
    with django_capture_on_commit_callbacks(execute=True):
        response = editor.post(reverse(f"{NS}:add"), form_data(**{"action-generate": "1"}))
    request = GenerationRequest.objects.get()
    assert response.status_code == 302
    assert response["Location"] == reverse(f"{NS}:inspect", args=[request.pk])
    assert request.status == Req.QUEUED
    assert queued().count("expand_prompt") == 1  # as the request page's "Generate" does

    page = editor.get(response["Location"]).content.decode()
    assert "Writing 6 prompts for “Crows over Kyoto”." in page
    assert POLLING in page and "Queued" in page


def test_save_alone_keeps_a_draft(editor, queued, django_capture_on_commit_callbacks):
    with django_capture_on_commit_callbacks(execute=True):
        response = editor.post(reverse(f"{NS}:add"), form_data())
    assert response.status_code == 302 and response["Location"] == reverse(f"{NS}:list")
    assert GenerationRequest.objects.get().status == Req.DRAFT
    assert "expand_prompt" not in queued()


@pytest.mark.parametrize(
    "bad",
    [
        {"theme": "   "},
        {"count": 0},
        {"count": 501},
        {"image_model": "no-such-model"},
        {"count": "many"},
    ],
)
def test_bad_input_is_shown_on_the_form_and_starts_nothing(
    editor, queued, django_capture_on_commit_callbacks, bad
):
    with django_capture_on_commit_callbacks(execute=True) as callbacks:
        response = editor.post(reverse(f"{NS}:add"), form_data(**bad, **{"action-generate": "1"}))
    assert response.status_code == 200
    assert b"could not be created due to errors" in response.content
    assert b'name="action-generate"' in response.content  # the form again, as it was
    assert not GenerationRequest.objects.exists()
    assert not callbacks and not queued()


def test_save_and_generate_needs_the_change_permission(
    limited_editor, queued, django_capture_on_commit_callbacks
):
    adder = limited_editor("add_generationrequest")
    html = adder.get(reverse(f"{NS}:add")).content.decode()
    assert "Save and generate" not in html and "Save" in html  # Save alone: a draft

    with django_capture_on_commit_callbacks(execute=True) as callbacks:
        response = adder.post(reverse(f"{NS}:add"), form_data(**{"action-generate": "1"}))
    assert response.status_code in (302, 403)
    assert response.get("Location") != reverse(f"{NS}:list")
    assert not GenerationRequest.objects.exists()  # refused, not quietly saved as a draft
    assert not callbacks and not queued()


def test_save_and_generate_needs_the_add_permission(limited_editor, queued):
    changer = limited_editor("change_generationrequest")
    response = changer.post(reverse(f"{NS}:add"), form_data(**{"action-generate": "1"}))
    assert response.status_code in (302, 403)
    assert not GenerationRequest.objects.exists() and not queued()


# The live request page ------------------------------------------------------------------


def test_live_fragment_shows_the_current_counts_and_new_images(editor):
    request = make_request_with_results(6)  # 2 succeeded with images, 2 failed, 2 pending
    live = editor.get(live_url(request))
    assert live.status_code == 200
    html = live.content.decode()
    assert "<html" not in html  # a fragment for w-swap, not a page
    assert "2 done · 2 failed / 6" in html and html.count("<img ") == 2
    assert 'data-count="open">2<' in html

    job = request.jobs.get(index=2)
    succeed(job)
    job.refresh_from_db()
    html = editor.get(live_url(request)).content.decode()
    assert "3 done · 2 failed / 6" in html and html.count("<img ") == 3
    assert reverse("wagtailimages:edit", args=[job.image_id]) in html
    assert f'<tr id="job-{job.pk}" data-job-status="succeeded">' in html


def test_polling_while_active_and_not_once_final(editor):
    request = make_request_with_results(3)
    page = editor.get(page_url(request)).content.decode()
    live = editor.get(live_url(request)).content.decode()
    for html in (page, live):
        assert POLLING in html
        assert 'data-action="karasu-poll:tick->w-swap#replace"' in html
        assert 'data-w-swap-target-value="#karasu-request-live"' in html
    # The live part is the content of #karasu-request-live: the poller is inside it.
    assert page.index('id="karasu-request-live"') < page.index(POLLING)

    GenerationRequest.objects.filter(pk=request.pk).update(
        status=Req.COMPLETED_WITH_ERRORS, finished_at=timezone.now()
    )
    for url in (page_url(request), live_url(request)):
        html = editor.get(url).content.decode()
        assert "Completed with errors" in html
        assert "karasu-poll" not in html and "data-w-swap-src-value" not in html

    draft = GenerationRequest.objects.create(theme="Crows", count=3)
    assert "karasu-poll" not in editor.get(page_url(draft)).content.decode()


def test_live_fragment_refreshes_the_page_being_viewed(editor):
    request = make_request_with_results(120)
    jobs = {job.index: job for job in request.jobs.all()}
    page = editor.get(page_url(request, p=2, theme="kyoto")).content.decode()
    src = re.search(r'data-w-swap-src-value="([^"]+)"', page).group(1).replace("&amp;", "&")
    assert src.startswith(live_url(request) + "?") and "p=2" in src and "theme=kyoto" in src

    live = editor.get(src).content.decode()
    shown = [i for i, job in jobs.items() if f'<tr id="job-{job.pk}"' in live]
    assert shown == list(range(50, 100))
    assert "Page 2 of 3" in live and "of prompts 51–100" in live
    # Its pagination links go on from the request page (relative "?p=" links).
    assert 'href="?p=3&amp;theme=kyoto"' in live or 'href="?theme=kyoto&amp;p=3"' in live
    # Past the end: the last page, and it keeps polling that page.
    last = editor.get(live_url(request, p=99)).content.decode()
    assert last.count('<tr id="job-') == 20 and "p=3" in last


def test_live_fragment_queries_do_not_grow_with_the_number_of_jobs(editor):
    small, large = make_request_with_results(10), make_request_with_results(120)
    editor.get(live_url(make_request_with_results(1)))  # one-off queries of a first admin view

    def queries(url: str) -> int:
        with CaptureQueriesContext(connection) as captured:
            assert editor.get(url).status_code == 200
        return len(captured)

    first_small, first_large = queries(live_url(small)), queries(live_url(large))
    assert first_small == first_large  # thumbnails made, for one page only
    again_small, again_large = queries(live_url(small)), queries(live_url(large))
    assert again_small == again_large < first_large
    assert queries(live_url(large, p=3)) == first_large  # its first view: thumbnails
    assert queries(live_url(large, p=3)) == again_large
    # The full page costs more (header, actions), the fragment no more than it needs.
    assert again_large <= 12


def test_live_fragment_escapes_prompts_and_errors(editor):
    request = make_request_with_results(3, prompt='<script>alert("{i}")</script>')
    GenerationJob.objects.filter(request=request, status=Job.FAILED).update(
        error="<img src=x onerror=alert(1)>"
    )
    GenerationRequest.objects.filter(pk=request.pk).update(error="<b>llm</b> said no")
    html = editor.get(live_url(request)).content.decode()
    assert "<script>alert(" not in html and "<img src=x" not in html and "<b>llm" not in html
    assert "&lt;script&gt;alert(" in html and "&lt;img src=x onerror=alert(1)&gt;" in html
    assert "&lt;b&gt;llm&lt;/b&gt; said no" in html


def test_timeline_shows_expansion_images_and_failures(editor):
    start = timezone.now().replace(microsecond=0) - timedelta(minutes=10)
    request = make_request_with_results(6)
    GenerationRequest.objects.filter(pk=request.pk).update(
        expansion_started_at=start, expansion_finished_at=start + timedelta(seconds=4)
    )
    jobs = list(request.jobs.order_by("index"))
    for job, minutes in zip(jobs, [1, 2, 3, 4, 5, 6], strict=True):
        GenerationJob.objects.filter(pk=job.pk).update(
            finished_at=start + timedelta(minutes=minutes)
        )
    html = editor.get(live_url(request)).content.decode()

    def row(key: str) -> str:
        return re.search(rf'<tr data-timeline="{key}">(.*?)</tr>', html, re.S).group(1)

    def at(delta: timedelta) -> str:
        return (start + delta).strftime("%Y-%m-%d %H:%M:%S")

    assert at(timedelta()) in row("expansion_started")
    assert at(timedelta(seconds=4)) in row("expansion_finished") and "6 prompts" in row(
        "expansion_finished"
    )
    # Succeeded: indexes 0 and 3; failed: 1 and 4.
    assert at(timedelta(minutes=1)) in row("first_image")
    assert at(timedelta(minutes=4)) in row("last_image") and "2 in all" in row("last_image")
    assert at(timedelta(minutes=5)) in row("last_failure") and "2 failed" in row("last_failure")
    order = [
        html.index(f'data-timeline="{key}"')
        for key in [
            "expansion_started",
            "expansion_finished",
            "first_image",
            "last_image",
            "last_failure",
        ]
    ]
    assert order == sorted(order)
    assert 'data-timeline="finished"' not in html

    draft = GenerationRequest.objects.create(theme="Crows", count=3)
    assert (
        "Nothing has happened yet: the request is a draft."
        in editor.get(live_url(draft)).content.decode()
    )


def test_live_fragment_has_the_page_permissions(client, limited_editor):
    request = make_request_with_results(4)
    assert client.get(live_url(request)).status_code == 302  # anonymous: to the login page
    assert client.get(reverse(f"{NS}:live", args=[10**6])).status_code == 302

    viewer = limited_editor()
    response = viewer.get(live_url(request))
    assert response.status_code in (302, 403)
    assert b"A crow on a torii gate" not in response.content

    viewer = limited_editor("view_generationrequest")
    html = viewer.get(live_url(request)).content.decode()
    assert "A crow on a torii gate, study 3" in html and POLLING in html
    # Viewing only: no prompt editing and no (re)generate buttons in the live part either.
    assert 'name="prompt"' not in html and "Regenerate" not in html
    assert viewer.get(reverse(f"{NS}:live", args=[10**6])).status_code == 404
