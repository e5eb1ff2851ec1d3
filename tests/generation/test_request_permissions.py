"""The request form offers and accepts only what its user may use: collections where they may
add images, and source images they may choose or change, on the add, edit and copy pages.

An editor with exactly the permissions the tests name (requests: add, change, view; images:
add and choose in "Generated images" only), through Django's test client.
"""

from __future__ import annotations

import io
import re

import pytest
from django.core.files.images import ImageFile
from django.urls import reverse
from wagtail.images import get_image_model
from wagtail.models import Collection

from generation.models import GenerationRequest
from tests.support.admin import NS
from tests.support.factories import generated_images, make_request
from tests.support.forms import request_form_data
from tests.support.images import jpeg

pytestmark = [pytest.mark.django_db, pytest.mark.usefixtures("collections")]
Image = get_image_model()
PRIVATE = "社外秘の画像"  # a collection the editor has no permission on
SECRET_TITLE = "極秘：鴉の原画"


@pytest.fixture
def private() -> Collection:
    return Collection.get_first_root_node().add_child(name=PRIVATE)


@pytest.fixture
def editor_client(limited_editor):
    return limited_editor(
        "add_generationrequest",
        "change_generationrequest",
        "view_generationrequest",
        collection_permissions={generated_images(): ["add_image", "choose_image"]},
    )


def library_image(title: str, collection: Collection) -> Image:
    return Image.objects.create(
        title=title,
        collection=collection,
        file=ImageFile(io.BytesIO(jpeg((120, 80), (30, 30, 60))), name="crow.jpg"),
    )


def collection_options(page: str) -> list[str]:
    select = page.split('name="collection"', 1)[1].split("</select>", 1)[0]
    return re.findall(r"<option[^>]*>([^<]*)</option>", select)


def as_a_browser_posts(form) -> dict:
    """What a browser submits for ``form`` as the page shows it: its values, without its
    disabled fields (browsers do not send those)."""
    data = {}
    for name, field in form.fields.items():
        if field.disabled:
            continue
        value = form[name].value()
        if name == "tags":
            data[name] = ", ".join(str(tag) for tag in value or [])
        elif isinstance(value, bool):
            if value:
                data[name] = "on"
        else:
            data[name] = "" if value is None else value
    return data


def test_the_collection_field_offers_and_accepts_only_where_the_editor_may_add_images(
    editor_client, private
):
    add = reverse(f"{NS}:add")
    options = collection_options(editor_client.get(add).content.decode())
    assert "Generated images" in options and PRIVATE not in options

    # A forged POST naming the other collection is a form error, and nothing is saved.
    response = editor_client.post(add, request_form_data(theme="京都の鴉", collection=private.pk))
    assert response.status_code == 200
    assert response.context["form"].errors["collection"] == [
        "You may not add images to that collection. Choose one of those listed."
    ]
    assert not GenerationRequest.objects.exists()

    response = editor_client.post(add, request_form_data(theme="京都の鴉"))
    assert response.status_code == 302
    assert GenerationRequest.objects.get().collection == generated_images()

    # A saved draft may not be moved there either ...
    draft = make_request(2, with_jobs=False, theme="上海の夜", status="draft")
    edit = reverse(f"{NS}:edit", args=[draft.pk])
    response = editor_client.post(edit, request_form_data(theme="上海の夜", collection=private.pk))
    assert response.status_code == 200 and "collection" in response.context["form"].errors
    draft.refresh_from_db()
    assert draft.collection == generated_images()

    # ... but one filed there by someone who may keeps its collection when this editor
    # edits its other fields.
    filed_there = make_request(
        2, with_jobs=False, theme="上海の夜", status="draft", collection=private
    )
    edit = reverse(f"{NS}:edit", args=[filed_there.pk])
    response = editor_client.post(
        edit, request_form_data(theme="上海の夜、雨", collection=private.pk)
    )
    assert response.status_code == 302
    filed_there.refresh_from_db()
    assert (filed_there.theme, filed_there.collection) == ("上海の夜、雨", private)


def test_a_drafts_source_the_editor_may_not_use_is_kept_but_never_shown(editor_client, private):
    secret = library_image(SECRET_TITLE, private)
    draft = make_request(2, with_jobs=False, theme="鴉の変奏", status="draft", source_image=secret)
    edit = reverse(f"{NS}:edit", args=[draft.pk])
    page = editor_client.get(edit).content.decode()
    assert SECRET_TITLE not in page
    section = page.split('class="w-panel karasu-source-image"', 1)[1].split("</section>", 1)[0]
    assert "<img" not in section and f"#{secret.pk}" not in section
    assert "not shown. It stays this request's source." in section
    assert not Image.get_rendition_model().objects.filter(image=secret).exists()

    response = editor_client.post(
        edit, request_form_data(theme="鴉の変奏、冬", source_image=secret.pk)
    )
    assert response.status_code == 302
    draft.refresh_from_db()
    assert (draft.theme, draft.source_image) == ("鴉の変奏、冬", secret)


def test_a_copy_starts_without_a_source_the_editor_may_not_use_and_validates(
    editor_client, private
):
    secret = library_image(SECRET_TITLE, private)
    original = make_request(
        3, theme="鴉の変奏", status="completed", source_image=secret, brief="墨絵のように"
    )
    page = editor_client.get(reverse(f"{NS}:copy", args=[original.pk]))
    html = page.content.decode()
    assert SECRET_TITLE not in html and "karasu-source-image" not in html
    assert "a library image you may not use: this copy starts without it." in html
    assert 'name="source_image" value=' not in html

    response = editor_client.post(reverse(f"{NS}:add"), as_a_browser_posts(page.context["form"]))
    assert response.status_code == 302
    copy = GenerationRequest.objects.exclude(pk=original.pk).get()
    assert (copy.theme, copy.brief, copy.count) == ("鴉の変奏", "墨絵のように", 3)
    assert copy.source_image is None and not copy.is_variation
    assert copy.status == GenerationRequest.Status.DRAFT


def test_a_copy_keeps_what_the_editor_may_use_even_of_a_finished_request(editor_client):
    source = library_image("赤い鴉", generated_images())
    original = make_request(2, theme="紅い鴉の習作", status="completed", source_image=source)
    original.tags.add("鳥")
    original.save()
    page = editor_client.get(reverse(f"{NS}:copy", args=[original.pk]))
    html = page.content.decode()
    # A new request: nothing is fixed as it is on the finished original's edit page.
    assert "Fixed once generation has started." not in html
    assert "赤い鴉" in html and f'name="source_image" value="{source.pk}"' in html

    response = editor_client.post(reverse(f"{NS}:add"), as_a_browser_posts(page.context["form"]))
    assert response.status_code == 302
    copy = GenerationRequest.objects.exclude(pk=original.pk).get()
    assert (copy.theme, copy.source_image, copy.status) == ("紅い鴉の習作", source, "draft")
    assert [tag.name for tag in copy.tags.all()] == ["鳥"]
    assert copy.jobs_total == 0


def test_a_copy_of_a_request_filed_where_the_editor_may_not_add_is_filed_in_theirs(
    editor_client, private
):
    original = make_request(2, theme="北京の冬の鴉", status="completed", collection=private)
    page = editor_client.get(reverse(f"{NS}:copy", args=[original.pk]))
    html = page.content.decode()
    assert "a collection you may not add images to" in html
    assert PRIVATE not in collection_options(html)

    response = editor_client.post(reverse(f"{NS}:add"), as_a_browser_posts(page.context["form"]))
    assert response.status_code == 302
    copy = GenerationRequest.objects.exclude(pk=original.pk).get()
    assert copy.collection == generated_images()
