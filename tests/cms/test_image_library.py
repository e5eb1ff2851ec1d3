"""The image library: Karasu's image model, its collection for generated images, uploads
and the provenance shown on an image's edit page."""

import pytest
from django.core.files.uploadedfile import SimpleUploadedFile
from django.urls import reverse
from wagtail.images import get_image_model
from wagtail.models import Collection

from cms.models import GENERATED_IMAGES_COLLECTION, KarasuImage
from tests.support.images import png


@pytest.mark.django_db
def test_generated_images_collection_exists():
    collection = Collection.objects.get(name=GENERATED_IMAGES_COLLECTION)
    assert collection.get_parent().is_root()


@pytest.mark.django_db
def test_custom_image_model_is_the_image_library():
    assert get_image_model() is KarasuImage


@pytest.mark.django_db
def test_uploaded_image_lands_in_custom_model_and_collection(editor):
    collection = Collection.objects.get(name=GENERATED_IMAGES_COLLECTION)
    response = editor.post(
        reverse("wagtailimages:add"),
        {
            "title": "A red square",
            "file": SimpleUploadedFile("red.png", png(), content_type="image/png"),
            "collection": collection.pk,
            "tags": "",
        },
    )
    assert response.status_code == 302, response.content[:2000]
    image = KarasuImage.objects.get(title="A red square")
    assert image.collection == collection
    assert (image.width, image.height) == (64, 48)
    assert not image.is_generated


@pytest.mark.django_db
def test_image_edit_view_shows_provenance_read_only(editor):
    image = KarasuImage.objects.create(
        title="generated",
        file=SimpleUploadedFile("g.png", png(), content_type="image/png"),
        prompt="A <script>alert(1)</script> crow at dawn",
        image_model="flux-schnell",
        llm="claude",
        seed=42,
        generation_request_id=7,
        generation_job_id=70,
        provider_request_id="req-abc",
    )
    response = editor.get(reverse("wagtailimages:edit", args=[image.pk]))
    assert response.status_code == 200
    body = response.content.decode()
    assert "Provenance" in body
    assert "flux-schnell" in body and "req-abc" in body
    assert "&lt;script&gt;alert(1)&lt;/script&gt;" in body
    assert "<script>alert(1)</script>" not in body
    # Read-only: the provenance fields are not form inputs.
    assert 'name="prompt"' not in body
