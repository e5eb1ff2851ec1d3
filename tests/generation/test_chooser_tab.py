"""The Generate tab of Wagtail's image chooser, through Django's test client: who sees it,
what its form starts or refuses, and how its recent generations offer their candidates."""

from decimal import Decimal

import pytest
from django.test import Client
from django.urls import reverse
from huey.contrib.djhuey import HUEY

from generation.models import GenerationJob, GenerationRequest
from generation.providers import reset_cache
from tests.support.admin import NS
from tests.support.factories import generated_images, make_request_with_results
from tests.support.fal_api import FAL_KEY

pytestmark = [pytest.mark.django_db, pytest.mark.usefixtures("collections")]

Job = GenerationJob.Status
CHOOSER = reverse("wagtailimages_chooser:choose")
GENERATE = reverse(f"{NS}:chooser_generate")
RECENT = reverse(f"{NS}:chooser_recent")
THEME = "京都の烏、夕暮れ “crows” — غراب 🐦‍⬛"
AJAX = {"x-requested-with": "XMLHttpRequest"}
REQUEST_PERMISSIONS = ("add_generationrequest", "change_generationrequest")


def chooser_html(client: Client, **params) -> str:
    response = client.get(CHOOSER, params)
    assert response.status_code == 200
    return response.json()["html"]


def tab_data(**fields) -> dict:
    """The tab's form as posted (its fields carry the form's prefix)."""
    values = {
        "theme": THEME,
        "count": "4",
        "image_model": "demo",
        "aspect_ratio": "16:9",
        "collection": str(generated_images().pk),
        **fields,
    }
    return {f"karasu-generate-{name}": value for name, value in values.items()}


def expansions_queued() -> list:
    return [task for task in HUEY.pending() if "expand" in task.name]


@pytest.fixture(autouse=True)
def empty_queue():
    HUEY.storage.flush_queue()
    yield
    HUEY.storage.flush_queue()


# Who sees the tab ---------------------------------------------------------------------------
def test_the_chooser_has_a_generate_tab_next_to_search_and_upload(editor):
    html = chooser_html(editor)
    tabs = [html.index(f'id="tab-label-{name}"') for name in ("search", "upload", "generate")]
    assert tabs == sorted(tabs)
    assert 'id="tab-generate"' in html and 'name="karasu-generate-theme"' in html
    # The cost estimate is shown before anything starts (4 images by default).
    assert 'name="karasu-generate-count" value="4"' in html and "Estimated cost:" in html
    # Filed into "Generated images" by default, as the add form does.
    assert f'<option value="{generated_images().pk}" selected>Generated images</option>' in html
    assert 'data-controller="karasu-cost-estimate"' in html


def test_only_users_who_may_add_images_and_start_requests_see_the_tab(limited_editor):
    collection = generated_images()
    images = {collection: ["add_image", "choose_image"]}
    allowed = limited_editor(*REQUEST_PERMISSIONS, collection_permissions=images)
    assert 'id="tab-generate"' in chooser_html(allowed)

    lacking = [
        # No generation request permissions: Search and Upload only.
        limited_editor(collection_permissions=images),
        # May add requests but not start them (Save and generate needs change too).
        limited_editor("add_generationrequest", collection_permissions=images),
        # May not add images anywhere (choose only).
        limited_editor(*REQUEST_PERMISSIONS, collection_permissions={collection: ["choose_image"]}),
        # May add images but not choose them: no candidate could be chosen.
        limited_editor(*REQUEST_PERMISSIONS, collection_permissions={collection: ["add_image"]}),
    ]
    for client in lacking:
        html = chooser_html(client)
        assert 'id="tab-generate"' not in html and "tab-label-generate" not in html
        # As w-swap asks (XMLHttpRequest): refused outright, so the tab's refresh stops.
        assert client.post(GENERATE, tab_data(), headers=AJAX).status_code == 403
        assert client.get(RECENT, headers=AJAX).status_code == 403
    assert not GenerationRequest.objects.exists()


def test_choosing_several_images_at_once_has_no_generate_tab(editor):
    assert 'id="tab-generate"' not in chooser_html(editor, multiple="1")


# Starting a request ---------------------------------------------------------------------------
def test_generate_starts_a_normal_request_marked_as_from_the_chooser(
    editor, django_capture_on_commit_callbacks
):
    with django_capture_on_commit_callbacks(execute=True):
        response = editor.post(GENERATE, tab_data())
    assert response.status_code == 200
    request = GenerationRequest.objects.get()
    assert (request.theme, request.count, request.aspect_ratio) == (
        "京都の烏、夕暮れ “crows” — غراب 🐦‍⬛",
        4,
        "16:9",
    )
    assert request.from_chooser and request.created_by.username == "editor"
    assert request.status == GenerationRequest.Status.QUEUED
    assert request.llm == "demo" and request.collection == generated_images()
    assert [task.args for task in expansions_queued()] == [(request.pk,)]
    html = response.content.decode()
    # The tab now lists it, with a place for each candidate, and asks for news.
    assert "Writing 4 prompts for" in html and "Your recent generations" in html
    assert html.count("Writing the prompt…") == 4
    assert 'data-controller="karasu-poll w-swap"' in html
    # A fresh form for the next one.
    assert 'name="karasu-generate-theme"' in html
    assert "京都の烏" not in html.split("New generation")[1]


def test_bad_input_stays_in_the_form_with_its_error_and_starts_nothing(editor, settings):
    settings.FAL_KEY = FAL_KEY  # an edit-only model is configured, and is not offered
    reset_cache()
    html = chooser_html(editor)
    assert '<option value="nano-banana-edit"' not in html
    cases = [
        ({"count": "9"}, "Ensure this value is less than or equal to 8."),
        ({"count": "0"}, "Ensure this value is greater than or equal to 1."),
        ({"theme": "   "}, "This field is required."),
        ({"image_model": "nano-banana-edit"}, "Select a valid choice."),
        ({"collection": "999999"}, "You may not add images to that collection."),
    ]
    for fields, error in cases:
        response = editor.post(GENERATE, tab_data(**fields))
        assert response.status_code == 200  # w-swap writes it into the tab
        html = response.content.decode()
        assert error in html, fields
        # What was typed stays.
        assert "京都の烏、夕暮れ" in html or fields.get("theme")
    assert not GenerationRequest.objects.exists() and not expansions_queued()


def test_an_over_budget_request_is_refused_with_the_reason(editor, settings):
    settings.KARASU["IMAGE_MODELS"]["demo"] = {
        **settings.KARASU["IMAGE_MODELS"]["demo"],
        "PRICE": "0.0125",
    }
    settings.KARASU["MAX_REQUEST_COST"] = Decimal("0.04")
    reset_cache()
    html = editor.post(GENERATE, tab_data(count="4")).content.decode()
    assert (
        "This request would cost $0.05 (4 × $0.0125), above the limit of $0.04 per request "
        "(KARASU_MAX_REQUEST_COST)."
    ) in html
    assert not GenerationRequest.objects.exists() and not expansions_queued()
    editor.post(GENERATE, tab_data(count="3"))
    assert GenerationRequest.objects.count() == 1


def test_the_tab_posts_need_the_csrf_token(django_user_model):
    user = django_user_model.objects.create_superuser("csrf", "c@example.com", "pw")
    client = Client(enforce_csrf_checks=True)
    client.force_login(user)
    assert client.post(GENERATE, tab_data()).status_code == 403
    assert client.get(GENERATE).status_code == 405
    assert not GenerationRequest.objects.exists()


# Recent generations and their candidates --------------------------------------------------------
def mark_from_chooser(request: GenerationRequest, user) -> GenerationRequest:
    GenerationRequest.objects.filter(pk=request.pk).update(from_chooser=True, created_by=user)
    request.refresh_from_db()
    return request


def test_candidates_are_chosen_through_the_choosers_own_urls(editor, django_user_model):
    user = django_user_model.objects.get(username="editor")
    request = mark_from_chooser(make_request_with_results(6), user)
    jobs = list(request.jobs.order_by("index"))
    filed = [job for job in jobs if job.status == Job.SUCCEEDED]

    html = editor.get(RECENT).content.decode()
    assert html.count("data-karasu-candidate") == len(filed) == 2
    for job in filed:
        assert f'href="{reverse("wagtailimages_chooser:chosen", args=[job.image_id])}"' in html
    assert "Failed: demo: rejected" in html  # a failed candidate's reason, in place
    assert html.count("Waiting") == 2  # the pending ones
    # Still generating: the list keeps asking for itself.
    assert 'data-controller="karasu-poll w-swap"' in html

    # From rich text the chooser asks for the image's format: so do the candidates.
    html = editor.get(RECENT, {"select_format": "true"}).content.decode()
    for job in filed:
        assert reverse("wagtailimages_chooser:select_format", args=[job.image_id]) in html
    assert f"{RECENT}?select_format=true" in html

    # The candidate's link answers as choosing that image from the library does.
    chosen = editor.get(reverse("wagtailimages_chooser:chosen", args=[filed[0].image_id])).json()
    assert chosen["step"] == "chosen" and chosen["result"]["id"] == str(filed[0].image_id)


def test_recent_generations_are_the_users_own_from_the_chooser_and_stop_asking_when_done(
    editor, django_user_model
):
    user = django_user_model.objects.get(username="editor")
    other = django_user_model.objects.create_superuser("other", "o@example.com", "pw")
    mine = mark_from_chooser(make_request_with_results(3), user)
    GenerationRequest.objects.filter(pk=mine.pk).update(
        theme="<script>alert(1)</script> 乌鸦",
        status=GenerationRequest.Status.COMPLETED_WITH_ERRORS,
    )
    GenerationJob.objects.filter(request=mine, status=Job.PENDING).update(status=Job.CANCELLED)
    theirs = mark_from_chooser(make_request_with_results(3), other)
    GenerationRequest.objects.filter(pk=theirs.pk).update(theme="Someone else's crows")
    from_admin = make_request_with_results(3)
    GenerationRequest.objects.filter(pk=from_admin.pk).update(
        created_by=user, theme="From the admin"
    )

    html = editor.get(RECENT).content.decode()
    assert "&lt;script&gt;alert(1)&lt;/script&gt; 乌鸦" in html and "<script>alert" not in html
    assert "Someone else's crows" not in html and "From the admin" not in html
    assert "data-controller" not in html  # all done: no more asking
    # Reopening the chooser shows them at the top of the tab.
    tab = chooser_html(editor).split('id="tab-generate"')[1]
    assert tab.index("Your recent generations") < tab.index("New generation")


def test_a_request_from_the_chooser_is_listed_and_says_where_it_started(editor):
    editor.post(GENERATE, tab_data(theme="Crows from the chooser"))
    from_admin = make_request_with_results(3)
    request = GenerationRequest.objects.get(from_chooser=True)
    page = editor.get(reverse(f"{NS}:inspect", args=[request.pk])).content.decode()
    assert "The image chooser's Generate tab" in page
    assert (
        "The image chooser's Generate tab"
        not in editor.get(reverse(f"{NS}:inspect", args=[from_admin.pk])).content.decode()
    )
    listing = editor.get(reverse(f"{NS}:list"), {"from_chooser": "true"}).content.decode()
    assert "Crows from the chooser" in listing and from_admin.theme not in listing


def test_a_candidate_the_user_may_not_choose_shows_neither_its_image_nor_its_title(
    limited_editor,
):
    """A candidate moved since into a collection where the user may not choose images (or
    deleted) is shown as such, without its thumbnail, title or link."""
    from django.contrib.auth.models import User

    collection = generated_images()
    client = limited_editor(
        *REQUEST_PERMISSIONS, collection_permissions={collection: ["add_image", "choose_image"]}
    )
    user = User.objects.get(username__startswith="limited-")
    request = mark_from_chooser(make_request_with_results(6), user)
    moved, deleted = [job.image for job in request.jobs.filter(status=Job.SUCCEEDED)]
    elsewhere = collection.get_parent().add_child(name="Private 私有")
    moved.collection = elsewhere
    moved.save()
    deleted.delete()

    html = client.get(RECENT).content.decode()
    assert "data-karasu-candidate" not in html
    assert "Filed where you may not choose it" in html and "Deleted from the library" in html
    assert moved.title not in html and moved.file.name.split("/")[-1].split(".")[0] not in html
