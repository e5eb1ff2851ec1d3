"""The request page (the snippet's inspect view) at size: paginated, constant queries, safe."""

from __future__ import annotations

import pytest
from django.contrib.auth.models import Group, Permission
from django.db import connection
from django.test.utils import CaptureQueriesContext
from django.urls import reverse
from wagtail.images import get_image_model

from generation.models import GenerationJob, GenerationRequest
from generation.thumbnails import THUMBNAIL_SPEC
from generation.views.request_page import JOBS_PER_PAGE
from tests.support.admin import NS, page_url
from tests.support.factories import make_request_with_results

pytestmark = [pytest.mark.django_db, pytest.mark.usefixtures("collections")]
Image = get_image_model()
Rendition = Image.get_rendition_model()
Job = GenerationJob.Status


def thumbnails(page: str) -> int:
    """How many images the page's thumbnail grid shows."""
    grid = page.split('class="karasu-thumbs"', 1)[1].split("</div>", 1)[0]
    return grid.count("<img ")


def queries_of(client, url: str) -> tuple[int, bytes]:
    with CaptureQueriesContext(connection) as queries:
        response = client.get(url)
    assert response.status_code == 200
    return len(queries), response.content


def test_queries_do_not_grow_with_the_number_of_jobs(editor):
    small, large = make_request_with_results(10), make_request_with_results(120)
    editor.get(page_url(make_request_with_results(1)))  # one-off queries of a first admin view
    # First views create their thumbnails (4 and 17) in the same number of queries ...
    first_small, _ = queries_of(editor, page_url(small))
    first_large, content = queries_of(editor, page_url(large))
    assert content.count(b'<tr id="job-') == JOBS_PER_PAGE
    assert first_small == first_large
    # ... and later views read them in fewer, still the same for both.
    again_small, _ = queries_of(editor, page_url(small))
    again_large, _ = queries_of(editor, page_url(large))
    assert again_small == again_large < first_large
    assert queries_of(editor, page_url(large, p=3))[0] == first_large
    assert queries_of(editor, page_url(large, p=3))[0] == again_large


def test_first_view_renders_the_thumbnails_of_one_page_only(editor):
    request = make_request_with_results(120)
    editor.get(page_url(request))
    on_page_one = Image.objects.filter(
        generation_job_id__in=request.jobs.filter(index__lt=JOBS_PER_PAGE).values("pk")
    )
    assert Rendition.objects.count() == on_page_one.count() == 17
    assert set(Rendition.objects.values_list("filter_spec", flat=True)) == {THUMBNAIL_SPEC}
    editor.get(page_url(request))
    assert Rendition.objects.count() == 17


def test_pages_show_their_own_prompts_and_images(editor):
    request = make_request_with_results(120)
    jobs = {job.index: job for job in request.jobs.all()}
    page = editor.get(page_url(request, p=2)).content.decode()
    shown = [i for i, job in jobs.items() if f'<tr id="job-{job.pk}"' in page]
    assert shown == list(range(50, 100))
    linked = [
        i
        for i, job in jobs.items()
        if job.image_id and reverse("wagtailimages:edit", args=[job.image_id]) in page
    ]
    assert linked == [i for i in range(50, 100) if i % 3 == 0]
    assert thumbnails(page) == len(linked)
    assert "Page 2 of 3" in page and "120 prompts" in page
    assert "of prompts 51–100" in page
    # Every prompt keeps its status, attempts and error; pending ones stay editable.
    assert page.count("demo: rejected") == len([i for i in range(50, 100) if i % 3 == 1])
    assert page.count('name="prompt"') == len([i for i in range(50, 100) if i % 3 == 2])
    assert page.count(">Regenerate<") == 50 - page.count('name="prompt"')

    last = editor.get(page_url(request, p=3)).content.decode()
    assert f'<tr id="job-{jobs[119].pk}"' in last and f'<tr id="job-{jobs[99].pk}"' not in last
    assert editor.get(page_url(request, p=99)).content.decode().count('<tr id="job-') == 20
    first = editor.get(page_url(request, p="x")).content.decode()
    assert f'<tr id="job-{jobs[0].pk}"' in first and "Page 1 of 3" in first


def test_pagination_links_keep_other_parameters(editor):
    request = make_request_with_results(60)
    page = editor.get(page_url(request, p=1, theme="kyoto")).content.decode()
    assert "?p=2&amp;theme=kyoto" in page or "?theme=kyoto&amp;p=2" in page


def test_small_request_shows_everything_on_one_page(editor):
    request = make_request_with_results(6)
    page = editor.get(page_url(request)).content.decode()
    assert page.count('<tr id="job-') == 6 and thumbnails(page) == 2
    assert "Page 1 of 1" in page and "of prompts" not in page


def test_request_without_prompts(editor):
    request = GenerationRequest.objects.create(theme="Crows", count=3)
    page = editor.get(page_url(request)).content.decode()
    assert "No prompts yet: press “Generate”" in page and "No images yet." in page


def test_prompt_text_is_escaped(editor):
    request = make_request_with_results(3, prompt='<script>alert("{i}")</script>')
    page = editor.get(page_url(request)).content.decode()
    assert "<script>alert(" not in page
    # Shown as text (succeeded), in the edit box (pending), as the image's title. (A
    # thumbnail's alt is the image's description: tests/generation/test_alt_text.py.)
    assert page.count("&lt;script&gt;alert(") >= 4


def test_job_actions_come_back_to_the_page_that_lists_the_job(editor):
    request = make_request_with_results(120)
    late, early = request.jobs.get(index=74), request.jobs.get(index=5)
    response = editor.post(
        reverse(f"{NS}:job_prompt", args=[late.pk]),
        {"prompt": "A single crow on a snowy torii gate at dawn"},
    )
    assert response["Location"] == page_url(request, p=2) + f"#job-{late.pk}"
    response = editor.post(
        reverse(f"{NS}:job_prompt", args=[early.pk]),
        {"prompt": "A single crow on a snowy torii gate at dusk"},
    )
    assert response["Location"] == page_url(request) + f"#job-{early.pk}"


def test_page_needs_the_snippet_view_permission(client, django_user_model):
    request = make_request_with_results(4)
    url = page_url(request)
    assert client.get(url).status_code == 302  # anonymous: to the login page

    user = django_user_model.objects.create_user("viewer", "v@example.com", "pw")
    viewers = Group.objects.create(name="Viewers")
    viewers.permissions.add(Permission.objects.get(codename="access_admin"))
    user.groups.add(viewers)
    client.force_login(user)
    response = client.get(url)
    assert response.status_code in (302, 403)
    assert b"A crow on a torii gate" not in response.content

    viewers.permissions.add(Permission.objects.get(codename="view_generationrequest"))
    client.force_login(django_user_model.objects.get(pk=user.pk))
    page = client.get(url).content.decode()
    assert "A crow on a torii gate, study 3" in page and thumbnails(page) == 2
    # Viewing only: no prompt editing, no (re)generate buttons, no request actions.
    assert 'name="prompt"' not in page and "Regenerate" not in page
    assert reverse(f"{NS}:action", args=[request.pk, "generate_pending"]) not in page


def test_listing_queries_do_not_grow_with_the_number_of_requests(editor):
    listing = reverse(f"{NS}:list")
    make_request_with_results(3)
    editor.get(listing)  # one-off queries of a first admin view
    one, content = queries_of(editor, listing)
    assert b"Generate pending prompts" in content  # the row's pending jobs were seen
    for _ in range(4):
        make_request_with_results(3)
    five, content = queries_of(editor, listing)
    assert content.count(b"Generate pending prompts") == 5
    assert five == one


def test_a_japanese_prompt_edited_on_the_page_is_saved(editor):
    """Japanese puts no spaces between words: its prompt is counted by its characters, as
    the LLM's own prompts are, not taken for one word."""
    request = make_request_with_results(3)
    pending = request.jobs.get(index=2)
    prompt = "京都の路地裏で雨宿りするカラスの水彩画、夕暮れ"
    editor.post(reverse(f"{NS}:job_prompt", args=[pending.pk]), {"prompt": prompt})
    pending.refresh_from_db()
    assert pending.prompt == prompt
    # One word is still too short, in any script.
    response = editor.post(
        reverse(f"{NS}:job_prompt", args=[pending.pk]), {"prompt": "烏"}, follow=True
    )
    pending.refresh_from_db()
    assert pending.prompt == prompt
    assert "A prompt needs at least three words." in response.content.decode()
