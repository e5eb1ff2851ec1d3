"""Variations of a library image: a request's source image, edited by an image-editing model.

fal's edit endpoints through the real fal-client with HTTP faked by respx (the upload and the
request body that names the uploaded URL); the demo model's offline edit end to end through
the pipeline; the CLI flag; the form; a deleted source; the edit page's link.
"""

import functools
import io
import json
import subprocess
import sys
import time

import httpx
import pytest
from django.conf import settings as django_settings
from django.contrib.auth.models import Group, Permission
from django.core.files.images import ImageFile
from django.core.management import call_command
from django.core.management.base import CommandError
from django.urls import reverse
from PIL import Image as PILImage
from wagtail.images import get_image_model
from wagtail.models import Collection, GroupCollectionPermission

from generation.models import GenerationRequest
from generation.providers import (
    PermanentProviderError,
    SourceImage,
    available_image_models,
    reset_cache,
)
from generation.providers import (
    get_image_model as get_provider,
)
from generation.providers.demo import DemoImageModel
from tests.support.admin import NS
from tests.support.consumers import consumer_env, wait_for
from tests.support.fal_api import FAL_KEY, pinned, queue_routes
from tests.support.forms import request_form_data
from tests.support.images import jpeg, png

Image = get_image_model()
TOKEN_URL = "https://rest.fal.ai/storage/auth/token?storage_type=fal-cdn-v3"
UPLOAD_URL = "https://v3.fal.media/files/upload"
UPLOADED = "https://v3.fal.media/files/zebra/source-crow.jpg"
RESULT_URL = "https://v3.fal.media/files/crow/edited.png"


SOURCE = (300, 200)  # the source pictures' size
RED = (220, 30, 30)


@pytest.fixture
def text_only(settings):
    settings.KARASU["IMAGE_MODELS"]["text-only"] = {
        **settings.KARASU["IMAGE_MODELS"]["demo"],
        "CLASS": "tests.support.providers.TextOnlyDemo",
        "LABEL": "Text only",
    }
    reset_cache()
    return "text-only"


def make_source(title="A red crow", colour=(220, 30, 30)):
    collection = Collection.objects.get(name="Generated images")
    return Image.objects.create(
        title=title,
        collection=collection,
        file=ImageFile(io.BytesIO(jpeg(SOURCE, colour)), name="red-crow.jpg"),
    )


# fal: upload, then the edit endpoint with the uploaded URL -------------------------------
def upload_routes(router):
    token = router.post(TOKEN_URL).mock(
        return_value=httpx.Response(
            200,
            json={
                "token": "cdn-token",
                "token_type": "Bearer",
                "base_url": "https://v3.fal.media",
                "expires_at": "2099-01-01T00:00:00+00:00",
            },
        )
    )
    upload = router.post(UPLOAD_URL).mock(
        return_value=httpx.Response(200, json={"access_url": UPLOADED})
    )
    return token, upload


def edit_routes(router, endpoint):
    """An edit through fal's queue API whose result is a red PNG; returns the submit route."""
    result = {"images": [{"url": RESULT_URL, "content_type": "image/png"}], "seed": 9}
    submit, _ = queue_routes(router, endpoint, result, request_id="edit-1")
    router.get(**pinned(RESULT_URL)).mock(
        return_value=httpx.Response(
            200, content=png(SOURCE, RED), headers={"content-type": "image/png"}
        )
    )
    return submit


def test_nano_banana_edit_uploads_the_source_once_and_sends_its_url(fal):
    token, upload = upload_routes(fal)
    submit = edit_routes(fal, "fal-ai/nano-banana/edit")
    source = SourceImage(jpeg(SOURCE, RED), "image/jpeg", "red-crow.jpg")
    model = get_provider("nano-banana-edit")
    image = model.edit("the crow at night", source, aspect_ratio="4:3", seed=3)

    sent = upload.calls.last.request
    assert sent.content == source.data  # the bytes themselves: the site need not be public
    assert sent.headers["content-type"] == "image/jpeg"
    assert sent.headers["x-fal-file-name"] == "red-crow.jpg"
    assert sent.headers["authorization"] == "Bearer cdn-token"
    assert token.calls.last.request.headers["authorization"] == f"Key {FAL_KEY}"
    assert json.loads(submit.calls.last.request.content) == {
        "prompt": "the crow at night",
        "image_urls": [UPLOADED],
        "aspect_ratio": "4:3",
        "num_images": 1,
        "output_format": "png",
        "seed": 3,
    }
    assert (image.content_type, image.seed, image.provider_request_id) == ("image/png", 9, "edit-1")

    model.edit("the crow at dawn", source, aspect_ratio="1:1")  # the request's next job
    assert upload.call_count == 1 and submit.call_count == 2
    assert json.loads(submit.calls.last.request.content)["image_urls"] == [UPLOADED]


def test_jobs_starting_together_upload_their_source_once(fal):
    import threading
    import time

    token, upload = upload_routes(fal)

    def slow_upload(request):
        time.sleep(0.3)  # long enough for every thread to be waiting on it
        return httpx.Response(200, json={"access_url": UPLOADED})

    upload.mock(side_effect=slow_upload)
    model = get_provider("nano-banana-edit")
    source = SourceImage(jpeg(SOURCE, RED), "image/jpeg", "red-crow.jpg")
    urls = []
    threads = [threading.Thread(target=lambda: urls.append(model.upload(source))) for _ in range(8)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(10)
    assert urls == [UPLOADED] * 8
    assert upload.call_count == 1


def test_flux_kontext_sends_one_image_url(fal):
    upload_routes(fal)
    submit = edit_routes(fal, "fal-ai/flux-pro/kontext")
    get_provider("flux-kontext").edit(
        "the crow in snow",
        SourceImage(jpeg(SOURCE, RED), "image/jpeg"),
        aspect_ratio="16:9",
        seed=5,
    )
    assert json.loads(submit.calls.last.request.content) == {
        "prompt": "the crow in snow",
        "image_url": UPLOADED,
        "aspect_ratio": "16:9",
        "num_images": 1,
        "output_format": "jpeg",
        "safety_tolerance": "2",
        "seed": 5,
    }


def test_edit_models_need_a_source_and_text_models_cannot_edit(fal):
    with pytest.raises(PermanentProviderError, match="needs a source image"):
        get_provider("nano-banana-edit").generate("a crow")
    with pytest.raises(PermanentProviderError, match="cannot edit"):
        get_provider("flux-schnell").edit("a crow", SourceImage(jpeg(SOURCE, RED), "image/jpeg"))
    editing = dict(available_image_models(editing=True))
    assert {"nano-banana-edit", "flux-kontext", "demo"} <= set(editing)
    assert "flux-schnell" not in editing
    assert "nano-banana-edit" not in dict(available_image_models(editing=False))


def test_a_refused_upload_is_a_permanent_error(fal):
    fal.post(TOKEN_URL).mock(return_value=httpx.Response(401, json={"detail": "bad key"}))
    fal.post(url__startswith="https://rest.fal.ai/storage/upload/initiate").mock(
        return_value=httpx.Response(401, json={"detail": "bad key"})
    )
    submit = edit_routes(fal, "fal-ai/nano-banana/edit")
    with pytest.raises(PermanentProviderError, match="401"):
        get_provider("nano-banana-edit").edit(
            "a crow", SourceImage(jpeg(SOURCE, RED), "image/jpeg")
        )
    assert submit.call_count == 0


# The demo's offline edit --------------------------------------------------------------------
def test_the_demo_edit_visibly_derives_from_the_source():
    model = DemoImageModel("demo")
    red = model.edit("a crow at night", SourceImage(jpeg(SOURCE, RED), "image/jpeg"), seed=1)
    blue = model.edit(
        "a crow at night", SourceImage(jpeg(SOURCE, (30, 30, 220)), "image/jpeg"), seed=1
    )
    with PILImage.open(io.BytesIO(red.data)) as a, PILImage.open(io.BytesIO(blue.data)) as b:
        assert a.size == (512, 512)
        r, g, bl = a.convert("RGB").getpixel((256, 100))
        assert r > 140 and g < 110 and bl < 110  # the red source, tinted
        r, g, bl = b.convert("RGB").getpixel((256, 100))
        assert bl > 140 and r < 110 and g < 110
        assert (
            a.convert("RGB").getpixel((256, 505)) == (0, 0, 0)
            or sum(a.convert("RGB").getpixel((256, 505))) < 60
        )  # the caption bar
    assert red.provider_request_id.startswith("demo-edit-")


# The pipeline, the form, the CLI ------------------------------------------------------------
form_data = functools.partial(request_form_data, count=3)


@pytest.mark.django_db(transaction=True)
@pytest.mark.usefixtures("collections")
def test_variations_end_to_end_and_a_deleted_source_leaves_them(editor, demo, thread_consumer):
    source = make_source()
    page = editor.get(reverse(f"{NS}:add") + f"?source_image={source.pk}").content.decode()
    assert f'name="source_image" value="{source.pk}"' in page
    assert "Variations of “A red crow”" in page
    response = editor.post(
        reverse(f"{NS}:add"), form_data(source_image=source.pk, **{"action-generate": "on"})
    )
    assert response.status_code == 302, response.content.decode()[:3000]
    request = GenerationRequest.objects.get()
    assert request.source_image_id == source.pk

    def done():
        request.refresh_from_db()
        return request.is_terminal

    wait_for(done, 60, message="the variations")
    assert request.status == GenerationRequest.Status.COMPLETED, request.error
    variations = list(Image.objects.filter(generation_request_id=request.pk))
    assert len(variations) == 3
    for image in variations:
        assert image.source_image_id == source.pk
        assert "A red crow re-imagined with" in image.prompt  # from the source's title
        assert image.description and image.provider_request_id.startswith("demo-edit-")
        with image.open_file() as file, PILImage.open(file) as pixels:
            r, g, b = pixels.convert("RGB").getpixel((256, 100))
        # Derived from the red source: whatever the seed's tint (35 %), red stays ahead by
        # at least 34 levels (0.65 × 220 against 0.65 × 30 + 0.35 × 255), JPEG noise aside.
        assert r > max(g, b) + 20, (r, g, b)
    edit_page = editor.get(reverse("wagtailimages:edit", args=[variations[0].pk])).content
    assert reverse("wagtailimages:edit", args=[source.pk]).encode() in edit_page

    source.delete()
    request.refresh_from_db()
    assert request.source_image_id is None and request.status == "completed"
    for image in variations:
        image.refresh_from_db()  # still there, only the link to the source is gone
        assert image.source_image_id is None and image.file.storage.exists(image.file.name)
    assert editor.get(reverse("wagtailimages:edit", args=[variations[0].pk])).status_code == 200
    assert editor.get(reverse(f"{NS}:inspect", args=[request.pk])).status_code == 200


@pytest.mark.django_db
@pytest.mark.usefixtures("collections")
def test_the_form_offers_editing_models_only_and_refuses_the_others(editor, text_only):
    source = make_source()
    page = editor.get(reverse(f"{NS}:add") + f"?source_image={source.pk}").content.decode()
    assert '<option value="demo"' in page and '<option value="text-only"' not in page
    plain = editor.get(reverse(f"{NS}:add")).content.decode()
    assert '<option value="text-only"' in plain and 'name="source_image" value=' not in plain

    response = editor.post(
        reverse(f"{NS}:add"), form_data(source_image=source.pk, image_model="text-only")
    )
    assert response.status_code == 200
    assert "Text only cannot edit an image, so it cannot make variations" in (
        response.content.decode()
    )
    assert not GenerationRequest.objects.exists()


@pytest.mark.django_db
@pytest.mark.usefixtures("collections")
def test_an_edit_only_model_needs_a_source(editor, settings):
    settings.FAL_KEY = FAL_KEY
    reset_cache()
    response = editor.post(reverse(f"{NS}:add"), form_data(image_model="nano-banana-edit"))
    assert response.status_code == 200
    assert "Nano Banana edit edits an existing image" in response.content.decode()
    assert not GenerationRequest.objects.exists()


def editor_group(*codenames):
    group = Group.objects.create(name="Variation testers")
    group.permissions.add(*Permission.objects.filter(codename__in=["access_admin", *codenames]))
    return group


@pytest.mark.django_db
@pytest.mark.usefixtures("collections")
def test_the_edit_page_link_and_the_prefill_follow_permissions(client, django_user_model):
    source = make_source()
    user = django_user_model.objects.create_user("ed", "ed@example.com", "pw")
    group = editor_group()
    user.groups.add(group)
    GroupCollectionPermission.objects.create(
        group=group,
        collection=Collection.get_first_root_node(),
        permission=Permission.objects.get(
            content_type__app_label="wagtailimages", codename="change_image"
        ),
    )
    client.force_login(user)
    edit_url = reverse("wagtailimages:edit", args=[source.pk])
    link = f"{reverse(f'{NS}:add')}?source_image={source.pk}"
    page = client.get(edit_url)
    assert page.status_code == 200 and link not in page.content.decode()

    group.permissions.add(
        *Permission.objects.filter(
            codename__in=["add_generationrequest", "change_generationrequest"]
        )
    )
    user = django_user_model.objects.get(pk=user.pk)  # permission caches
    client.force_login(user)
    assert link in client.get(edit_url).content.decode()
    assert f'name="source_image" value="{source.pk}"' in client.get(link).content.decode()

    # Without permissions on the image's collection, the image is no source for this user.
    GroupCollectionPermission.objects.filter(group=group).delete()
    page = client.get(link).content.decode()
    assert 'name="source_image" value=' not in page
    assert "may not use it as a source" in page
    response = client.post(reverse(f"{NS}:add"), form_data(source_image=source.pk))
    assert response.status_code == 200 and not GenerationRequest.objects.exists()
    assert response.context["form"].errors["source_image"] == [
        "That image does not exist or you may not use it."
    ]
    assert "A red crow" not in response.content.decode()  # neither its title nor thumbnail
    # The field is a hidden input, so the page says it where the form's errors are shown.
    assert "Source image: That image does not exist or you may not use it." in (
        response.content.decode()
    )
    malformed = client.post(reverse(f"{NS}:add"), form_data(source_image="abc"))
    assert malformed.status_code == 200 and not GenerationRequest.objects.exists()
    assert "Source image: That image does not exist" in malformed.content.decode()


@pytest.mark.django_db(transaction=True)
@pytest.mark.usefixtures("collections")
def test_cli_source_image(text_only):
    source = make_source()
    call_command("generate", "Crows", "--count", "2", "--source-image", str(source.pk))
    request = GenerationRequest.objects.get()
    assert (request.source_image_id, request.image_model) == (source.pk, "demo")
    with pytest.raises(CommandError, match="Text only cannot edit an image"):
        call_command(
            "generate",
            "Crows",
            "--count",
            "2",
            "--source-image",
            str(source.pk),
            "--image-model",
            "text-only",
        )
    assert GenerationRequest.objects.count() == 1


@pytest.mark.django_db(transaction=True)
@pytest.mark.usefixtures("collections")
def test_cli_unknown_source_image_is_one_line_and_creates_nothing():
    result = subprocess.run(
        [
            sys.executable,
            "manage.py",
            "generate",
            "Crows",
            "--count",
            "2",
            "--source-image",
            "987654",
        ],
        cwd=django_settings.BASE_DIR,
        env=consumer_env(),
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert result.returncode != 0
    lines = [line for line in result.stderr.splitlines() if line.strip()]
    assert lines == ["CommandError: unknown image 987654 (--source-image)"], result.stderr
    assert not GenerationRequest.objects.exists()


def test_the_llms_are_told_about_the_source():
    from generation.providers.base import user_prompt
    from generation.providers.demo import DemoLLM

    text = user_prompt("Crows", 3, "", "", [], "A red crow. Prompt: a red crow on a wire")
    assert "It shows: A red crow. Prompt: a red crow on a wire" in text
    assert "edit instruction" in text and "It shows" not in user_prompt("Crows", 3, "", "", [])
    expansion = DemoLLM("demo").expand("Crows", 4, source="A red crow. Prompt: a red crow")
    assert all("A red crow re-imagined with" in item.prompt for item in expansion)
    assert all(item.alt_text for item in expansion)


@pytest.mark.django_db(transaction=True)  # the foreign key is checked at commit
def test_a_source_deleted_while_a_job_runs_leaves_the_variation_without_the_link(collections):
    from django.core.files.uploadedfile import SimpleUploadedFile

    from generation.ingest import ingest
    from generation.models import GenerationJob, GenerationRequest
    from generation.providers import get_image_model as get_provider
    from generation.providers.demo import DemoImageModel  # noqa: F401 - the demo provider

    Image = get_image_model()
    source = Image.objects.create(
        title="source", file=SimpleUploadedFile("s.png", png(), content_type="image/png")
    )
    request = GenerationRequest.objects.create(
        theme="Crows", count=1, llm="demo", image_model="demo", source_image=source
    )
    job = GenerationJob.objects.create(request=request, index=0, prompt="a crow on a gate")
    job = GenerationJob.objects.select_related("request").get(pk=job.pk)  # the worker's copy
    generated = get_provider("demo").generate(job.prompt, aspect_ratio="1:1", seed=1)
    source.delete()  # meanwhile, in another tab
    assert job.request.source_image_id is not None  # what the worker still believes
    image, created = ingest(job, generated)
    assert created and image.source_image_id is None
    assert Image.objects.get(pk=image.pk).generation_job_id == job.pk


@pytest.mark.django_db
def test_a_large_or_unusual_source_goes_to_the_model_as_a_bounded_jpeg(collections):
    from django.core.files.uploadedfile import SimpleUploadedFile

    from generation import services

    Image = get_image_model()
    small = Image.objects.create(
        title="small", file=SimpleUploadedFile("s.png", png(), content_type="image/png")
    )
    as_is = services.load_source_image(small.pk)
    assert as_is.content_type == "image/png" and as_is.data == png()

    Image.objects.filter(pk=small.pk).update(file_size=services.SOURCE_MAX_BYTES + 1)
    bounded = services.load_source_image(small.pk)
    assert bounded.content_type == "image/jpeg" and bounded.data[:3] == b"\xff\xd8\xff"
    assert bounded.name.endswith(".jpg")


@pytest.fixture
def no_cached_renditions():
    """Wagtail caches renditions by image id in the default cache, which outlives a test's
    rolled-back rows; ids are used again after a rollback, so a rendition cached by another
    test could answer for this one's image."""
    from django.core.cache import cache

    cache.clear()
    yield
    cache.clear()


def library_image(title: str, data: bytes, name: str):
    from django.core.files.uploadedfile import SimpleUploadedFile

    return Image.objects.create(title=title, file=SimpleUploadedFile(name, data))


def decoded(data: bytes) -> tuple[str, tuple[int, int]]:
    with PILImage.open(io.BytesIO(data)) as picture:
        return picture.format, picture.size


@pytest.mark.django_db
@pytest.mark.usefixtures("collections", "no_cached_renditions")
def test_a_source_over_16_megapixels_goes_as_a_jpeg_of_at_most_2048_px():
    from generation import services

    # 4100 × 4000: 16.4 megapixels in a small file (one colour), so only its pixels count.
    big = library_image("大きな烏", jpeg((4100, 4000), RED), "big-crow.jpg")
    assert big.get_file_size() < services.SOURCE_MAX_BYTES
    source = services.load_source_image(big.pk)
    assert source.content_type == "image/jpeg" and source.name == "big-crow.jpg"
    assert decoded(source.data) == ("JPEG", (2048, 1998))  # its shape kept

    # The limit itself is allowed: 16 megapixels exactly go as they are.
    small = library_image("烏", jpeg(SOURCE, RED), "crow.jpg")
    Image.objects.filter(pk=small.pk).update(width=4000, height=4000)
    assert services.load_source_image(small.pk).data == jpeg(SOURCE, RED)
    Image.objects.filter(pk=small.pk).update(width=4000, height=4001)
    assert decoded(services.load_source_image(small.pk).data)[0] == "JPEG"


@pytest.mark.django_db
@pytest.mark.usefixtures("collections", "no_cached_renditions")
def test_a_source_in_another_format_goes_as_a_jpeg_and_webp_as_it_is():
    from generation import services
    from tests.support.images import picture

    tall_gif = library_image("縦長の烏", picture("GIF", (600, 3000), RED), "tall-crow.gif")
    source = services.load_source_image(tall_gif.pk)
    assert (source.content_type, source.name) == ("image/jpeg", "tall-crow.jpg")
    assert decoded(source.data) == ("JPEG", (409, 2048))  # at most 2048 px a side

    webp = picture("WEBP", SOURCE, RED)
    as_is = services.load_source_image(library_image("烏", webp, "crow.webp").pk)
    assert (as_is.content_type, as_is.data) == ("image/webp", webp)


def test_an_uploaded_source_is_reused_for_six_hours_then_uploaded_again(fal, monkeypatch):
    from generation.providers import fal as fal_provider

    assert fal_provider.UPLOAD_REUSE_SECONDS == 6 * 3600
    _, upload = upload_routes(fal)
    model = get_provider("nano-banana-edit")
    source = SourceImage(jpeg(SOURCE, RED), "image/jpeg", "red-crow.jpg")
    other = SourceImage(jpeg(SOURCE, (30, 30, 220)), "image/jpeg", "blue-crow.jpg")
    monkeypatch.setattr(fal_provider, "UPLOAD_REUSE_SECONDS", 0.3)  # six hours, scaled
    assert model.upload(source) == model.upload(source) == UPLOADED
    assert upload.call_count == 1
    model.upload(other)  # another source is uploaded for itself
    assert upload.call_count == 2
    time.sleep(0.4)
    model.upload(source)  # fal keeps it a day; after the reuse period it goes again
    assert upload.call_count == 3
    assert upload.calls.last.request.content == source.data


@pytest.mark.django_db
@pytest.mark.usefixtures("collections")
def test_deleting_a_source_fails_what_was_still_to_derive_from_it(editor):
    """Variations are never quietly made from the prompt alone once the source is gone."""
    from django.utils import timezone

    from generation import services
    from generation.models import GenerationJob

    Job = GenerationJob.Status
    Req = GenerationRequest.Status
    source = make_source()
    other = make_source("A blue crow", (30, 30, 220))

    def variation_request(**fields):
        return GenerationRequest.objects.create(
            theme="Variations",
            count=3,
            llm="demo",
            image_model="demo",
            source_image=fields.pop("source", source),
            **fields,
        )

    generating = variation_request(status=Req.GENERATING, jobs_total=3)
    pending, in_flight, stale_claim = (
        GenerationJob.objects.create(
            request=generating, index=i, prompt=f"crow {i}", status=status, **claim
        )
        for i, (status, claim) in enumerate(
            [
                (Job.QUEUED, {}),
                (
                    Job.RUNNING,
                    {
                        "claim_token": "live",
                        "claim_expires_at": timezone.now() + timezone.timedelta(minutes=5),
                    },
                ),
                (
                    Job.RUNNING,
                    {
                        "claim_token": "dead",
                        "claim_expires_at": timezone.now() - timezone.timedelta(minutes=5),
                    },
                ),
            ]
        )
    )
    waiting = variation_request(status=Req.QUEUED)
    draft = variation_request()
    unrelated = variation_request(status=Req.QUEUED, source=other)
    worker_copy = GenerationJob.objects.select_related("request").get(pk=in_flight.pk)

    response = editor.post(reverse("wagtailimages:delete", args=[source.pk]))
    assert response.status_code == 302 and not Image.objects.filter(pk=source.pk).exists()

    reason = services.SOURCE_DELETED
    jobs = {job.pk: job for job in GenerationJob.objects.all()}
    assert (jobs[pending.pk].status, jobs[pending.pk].error) == (Job.FAILED, reason)
    assert (jobs[stale_claim.pk].status, jobs[stale_claim.pk].error) == (Job.FAILED, reason)
    assert jobs[in_flight.pk].status == Job.RUNNING  # its call is in flight: it finishes
    generating.refresh_from_db()
    assert (generating.status, generating.jobs_failed) == (Req.GENERATING, 2)
    waiting.refresh_from_db()
    assert waiting.status == Req.FAILED and reason in waiting.error
    draft.refresh_from_db()
    assert draft.status == Req.DRAFT and "source image was deleted" in draft.error
    unrelated.refresh_from_db()
    assert unrelated.status == Req.QUEUED and unrelated.source_image_id == other.pk
    # A worker that read the request before the delete still makes no plain image.
    with pytest.raises(PermanentProviderError, match="source image was deleted"):
        services.generate(worker_copy, get_provider("demo"))
    inspect = editor.get(reverse(f"{NS}:inspect", args=[generating.pk])).content.decode()
    assert reason in inspect


@pytest.mark.django_db
@pytest.mark.usefixtures("collections")
def test_a_variation_request_whose_source_is_gone_is_never_run_as_a_plain_one(editor):
    from generation import services
    from generation.models import GenerationJob

    Req = GenerationRequest.Status
    source = make_source()
    failed = GenerationRequest.objects.create(
        theme="Variations",
        count=2,
        llm="demo",
        image_model="demo",
        source_image=source,
        status=Req.FAILED,
    )
    reviewed = GenerationRequest.objects.create(
        theme="Variations",
        count=1,
        llm="demo",
        image_model="demo",
        source_image=source,
        jobs_total=1,
        auto_generate=False,
    )
    pending = GenerationJob.objects.create(request=reviewed, index=0, prompt="crow at dusk")
    assert failed.is_variation and reviewed.is_variation
    source.delete()

    # A draft whose prompts awaited review ends too (nothing would settle it otherwise).
    reviewed.refresh_from_db()
    assert reviewed.status == Req.FAILED and reviewed.finished_at is not None
    assert GenerationJob.objects.get(pk=pending.pk).status == GenerationJob.Status.FAILED
    failed.refresh_from_db()
    assert failed.is_variation and failed.source_deleted
    for url in (
        reverse(f"{NS}:action", args=[failed.pk, "generate"]),
        reverse(f"{NS}:action", args=[reviewed.pk, "retry_failed"]),
        reverse(f"{NS}:job_generate", args=[pending.pk]),
    ):
        page = editor.post(url, follow=True).content.decode()
        assert "Its source image was deleted, so it can make no more variations." in page
    failed.refresh_from_db()
    assert failed.status == Req.FAILED
    assert GenerationJob.objects.get(pk=pending.pk).status == GenerationJob.Status.FAILED
    # Started some other way (code, an old message): the expansion refuses before the LLM.
    GenerationRequest.objects.filter(pk=failed.pk).update(status=Req.QUEUED)
    with pytest.raises(PermanentProviderError, match="source image was deleted"):
        services.expand_request(failed.pk)
    assert not failed.jobs.exists()


@pytest.mark.django_db
@pytest.mark.usefixtures("collections")
@pytest.mark.parametrize("value", ["²", "١٢", "-1", "1e3", " 7"])
def test_a_source_id_that_is_not_plain_digits_is_refused_not_a_500(editor, value):
    page = editor.get(reverse(f"{NS}:add"), {"source_image": value})
    assert page.status_code == 200
    assert "may not use it as a source" in page.content.decode()
    response = editor.post(reverse(f"{NS}:add"), form_data(source_image=value))
    assert response.status_code == 200 and not GenerationRequest.objects.exists()
