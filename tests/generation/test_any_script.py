"""Themes in any script generate with the offline defaults (issue #20's crash): the demo
model's caption leaves out what its bitmap font cannot draw instead of failing the image."""

import io

import pytest
from django.core.management import call_command
from PIL import Image as PILImage
from wagtail.images import get_image_model

from generation.models import GenerationJob, GenerationRequest
from generation.providers.demo import drawable_caption, render

THEMES = [
    "京都の烏、夕暮れ",  # Japanese
    "乌鸦在雪中",  # Chinese
    "غراب عند الغسق",  # Arabic
    "Crows 🐦‍⬛ at dawn 🌅",  # emoji, with a zero-width joiner
    "Crows — “at dusk” … ‘finally’",  # typographic punctuation
]


@pytest.mark.parametrize("theme", THEMES)
def test_the_demo_model_renders_any_caption(theme):
    data = render(f"{theme}: a lone crow re-imagined…", "1:1", seed=1)
    with PILImage.open(io.BytesIO(data)) as image:
        assert image.size == (512, 512)


def test_the_caption_keeps_what_the_font_draws_and_leaves_out_the_rest():
    assert drawable_caption("Crows — “at dusk” … ‘finally’") == "Crows - \"at dusk\" ... 'finally'"
    assert drawable_caption("京都の烏: a café at dusk 🌅") == ": a café at dusk"
    assert drawable_caption("乌鸦在雪中") == ""


@pytest.mark.django_db(transaction=True)
@pytest.mark.usefixtures("collections")
@pytest.mark.parametrize("theme", THEMES)
def test_a_theme_in_any_script_generates_every_image(thread_consumer, capsys, theme):
    call_command(
        "generate", theme, "--count", "3", "--llm", "demo", "--image-model", "demo", "--wait"
    )
    request = GenerationRequest.objects.get()
    assert request.status == GenerationRequest.Status.COMPLETED
    assert set(request.jobs.values_list("status", flat=True)) == {GenerationJob.Status.SUCCEEDED}
    images = get_image_model().objects.filter(generation_request_id=request.pk)
    assert images.count() == 3
    assert all(image.title and image.file.size for image in images)
    assert theme in capsys.readouterr().out
