"""Provenance where people see it: the image edit page and the request page say whether an
image is marked and signed, the image library filters AI-generated images, and a site
template discloses "AI-generated" next to one."""

from __future__ import annotations

import pytest
from django.core.files.uploadedfile import SimpleUploadedFile
from django.template import Context, Template
from django.urls import reverse
from wagtail.images import get_image_model
from wagtail.models import Collection

from generation.tasks import generate_image
from tests.support.admin import page_url
from tests.support.c2pa import throwaway_certificates
from tests.support.factories import make_request
from tests.support.images import jpeg, png

pytestmark = [pytest.mark.django_db, pytest.mark.usefixtures("collections")]
Image = get_image_model()


def upload(title: str):
    return Image.objects.create(
        title=title,
        collection=Collection.objects.get(name="Generated images"),
        file=SimpleUploadedFile("photo.png", png(), content_type="image/png"),
    )


def generated(title: str, **fields):
    return Image.objects.create(
        title=title,
        file=SimpleUploadedFile("gen.jpg", jpeg(), content_type="image/jpeg"),
        image_model="flux-schnell",
        generation_request_id=1,
        digital_source_type="trainedAlgorithmicMedia",
        **fields,
    )


def test_the_edit_page_says_whether_the_image_is_marked_and_signed(editor):
    signed = generated(
        "烏 signed", provenance_marked=True, c2pa_manifest="urn:c2pa:1234-abcd", generation_job_id=1
    )
    unsigned = generated(
        "烏 unsigned",
        provenance_marked=True,
        provenance_note="Not signed: <b>the certificate</b> is invalid.",
        generation_job_id=2,
    )
    photo = upload("写真")

    def page(image) -> str:
        response = editor.get(reverse("wagtailimages:edit", args=[image.pk]))
        assert response.status_code == 200
        return response.content.decode()

    body = page(signed)
    assert "marked in the original and its renditions" in body
    assert "Signed" in body and "urn:c2pa:1234-abcd" in body
    body = page(unsigned)
    assert "Not signed" in body
    assert "&lt;b&gt;the certificate&lt;/b&gt;" in body and "<b>the certificate</b>" not in body
    body = page(photo)
    assert "Uploaded: its files are not marked as AI-generated." in body
    assert "urn:c2pa" not in body


def test_the_request_page_says_which_images_are_marked_and_signed(editor, demo, settings):
    certificates = throwaway_certificates()
    request = make_request(2)
    jobs = list(request.jobs.order_by("index"))
    generate_image.call_local(jobs[0].pk)  # filed unsigned: no certificate yet
    settings.KARASU["C2PA"] = {
        "CERTIFICATE": certificates.chain.decode(),
        "PRIVATE_KEY": certificates.private_key.decode(),
    }
    generate_image.call_local(jobs[1].pk)
    body = editor.get(page_url(request)).content.decode()
    assert body.count('data-provenance="marked"') == 1
    assert body.count('data-provenance="signed"') == 1
    assert "AI-marked · C2PA signed" in body and "AI-marked · not signed" in body


def listed(editor, **query) -> set[str]:
    """The titles the image library lists (its results fragment, which its filters fetch)."""
    response = editor.get(reverse("wagtailimages:index_results"), query)
    assert response.status_code == 200
    images = response.context["images"]
    return {image.title for image in images}


def test_the_image_library_filters_ai_generated_images(editor):
    from wagtail.search.backends import get_search_backend

    images = [
        generated("烏 generated crow"),
        generated("烏 variation crow"),
        upload("写真 crow photo"),
    ]
    images[1].digital_source_type = "compositeWithTrainedAlgorithmicMedia"
    images[1].save()
    backend = get_search_backend()
    for image in images:  # the index tasks are not run here, so the test indexes them
        backend.add(image)
    everything = {"烏 generated crow", "烏 variation crow", "写真 crow photo"}
    assert listed(editor) == everything
    assert listed(editor, origin="ai") == {"烏 generated crow", "烏 variation crow"}
    assert listed(editor, origin="uploaded") == {"写真 crow photo"}
    # The filter narrows a search as well, and the page offers it.
    assert listed(editor, origin="ai", q="crow") == {"烏 generated crow", "烏 variation crow"}
    page = editor.get(reverse("wagtailimages:index")).content.decode()
    assert 'name="origin"' in page and "AI-generated" in page


def test_the_image_library_still_needs_image_permissions(limited_editor):
    generated("烏 generated crow")
    client = limited_editor()  # admin access, no image permission
    response = client.get(reverse("wagtailimages:index_results"), {"origin": "ai"})
    assert response.status_code in (302, 403)


@pytest.mark.parametrize(
    "source_type, shown",
    [
        ("trainedAlgorithmicMedia", True),
        ("compositeWithTrainedAlgorithmicMedia", True),
        ("", False),
    ],
)
def test_a_template_discloses_ai_generated_images(source_type, shown):
    image = generated("烏 «crow»")
    image.digital_source_type = source_type
    template = Template(
        "{% load provenance %}<figure>{% ai_disclosure image %}</figure>"
        "{% if image.is_ai_generated %}[{{ image.ai_disclosure }}]{% endif %}"
    )
    html = template.render(Context({"image": image}))
    if shown:
        assert (
            f'<span class="ai-disclosure" data-digital-source-type="{source_type}">'
            "AI-generated</span>" in html
        )
        assert "[AI-generated]" in html
    else:
        assert html == "<figure></figure>"
    # A rendition stands for its image.
    rendition_html = Template("{% load provenance %}{% ai_disclosure r %}").render(
        Context({"r": type("R", (), {"image": image})()})
    )
    assert ("AI-generated" in rendition_html) is shown


def test_replacing_a_generated_images_file_with_a_photo_drops_its_provenance(editor):
    """An editor uploads a photo over a generated image on its edit page: the file is no
    longer the generated one, so it must not be called signed or marked, and its
    renditions must not say trainedAlgorithmicMedia."""
    from django.core.cache import cache

    image = generated(
        "烏 generated, then replaced",
        provenance_marked=True,
        c2pa_manifest="urn:c2pa:1234-abcd",
        generation_job_id=5,
    )
    cache.clear()  # Wagtail caches renditions by image id, which a rolled-back test reuses
    with image.get_rendition("width-40").file.open("rb") as file:
        assert b"trainedAlgorithmicMedia" in file.read()  # marked while it was generated
    response = editor.post(
        reverse("wagtailimages:edit", args=[image.pk]),
        {
            "title": "写真 — “a real crow”",
            "file": SimpleUploadedFile("写真.jpg", jpeg((200, 150)), content_type="image/jpeg"),
            "collection": image.collection_id,
            "tags": "",
        },
    )
    assert response.status_code == 302, response.content.decode()[:2000]
    image.refresh_from_db()
    assert image.width == 200  # the photo is the file now
    assert not image.is_ai_generated and not image.provenance_marked and not image.is_signed
    cache.clear()
    with image.get_rendition("width-40|format-webp").file.open("rb") as file:
        assert b"trainedAlgorithmicMedia" not in file.read()
    body = editor.get(reverse("wagtailimages:edit", args=[image.pk])).content.decode()
    assert "urn:c2pa" not in body and "Not signed" in body
    assert "replaced by an upload" in body
    # Saving it again without a new file keeps it as it is.
    image.title = "写真 again"
    image.save()
    image.refresh_from_db()
    assert image.provenance_note.startswith("The generated file was replaced")
