"""Themes in any script generate, offline defaults included (issue #20's crash), through
every LLM client, with their titles, files, tags and alt texts whole, and the library's
search finds them."""

import io

import pytest
from django.core.files.images import ImageFile
from django.core.management import call_command
from django.urls import reverse
from PIL import Image as PILImage
from wagtail.images import get_image_model
from wagtail.models import Collection

from generation import actions
from generation.limits import llm_limiter_for
from generation.models import GenerationJob, GenerationRequest
from generation.providers.demo import SUBJECTS, drawable_caption, render
from generation.providers.demo_words import WORDS
from tests.support.consumers import wait_for
from tests.support.fake_anthropic import FakeLLMServer
from tests.support.images import jpeg
from tests.support.llm_answers import CLAUDE_KEY, OPENAI_KEY

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
        "generate",
        theme,
        "--count",
        "3",
        "--llm",
        "demo",
        "--image-model",
        "demo",
        "--wait",
        "--timeout",
        "60",
    )
    out, _ = capsys.readouterr()
    assert "3 succeeded, 0 failed" in out
    request = GenerationRequest.objects.get()
    assert request.status == GenerationRequest.Status.COMPLETED
    images = get_image_model().objects.filter(generation_request_id=request.pk)
    assert images.count() == 3
    for image in images:
        assert image.title.startswith(f"{theme}: ")
        assert theme in image.description
        assert image.file.storage.exists(image.file.name)
        assert "demo" in {tag.name for tag in image.tags.all()}


@pytest.mark.django_db(transaction=True)
@pytest.mark.usefixtures("collections")
def test_variations_of_a_japanese_theme_generate(thread_consumer):
    picture = io.BytesIO(jpeg((300, 200), (220, 30, 30)))
    source = get_image_model().objects.create(
        title="赤い烏 “red crow”",
        collection=Collection.objects.get(name="Generated images"),
        file=ImageFile(picture, name="赤い烏.jpg"),
    )
    call_command(
        "generate",
        "京都の烏、夕暮れ",
        "--count",
        "2",
        "--source-image",
        str(source.pk),
        "--wait",
        "--timeout",
        "60",
    )
    jobs = GenerationJob.objects.all()
    assert [job.status for job in jobs] == ["succeeded", "succeeded"]
    assert all("…" in job.prompt or "“" in job.prompt for job in jobs)


# Through each LLM: the demo, and Claude and OpenAI's clients against a stand-in server ------
# Each theme's request carries tags in its own script, and one more request makes
# variations of the Japanese theme's first image.
TAGS = {
    THEMES[0]: ["京都", "カラス"],
    THEMES[1]: ["乌鸦", "冬天"],
    THEMES[2]: ["غراب", "الغسق"],
    THEMES[3]: ["🌅 dawn"],
    THEMES[4]: ["“dusk”"],
}
# The demo writes alt texts in the theme's language: its subjects in that language.
THEME_LANGUAGES = {THEMES[0]: "ja", THEMES[1]: "zh", THEMES[2]: "ar"}


@pytest.fixture
def llm_server(settings, monkeypatch):
    """The stand-in Messages and chat completions APIs, fast, for Claude's SDK and the
    OpenAI-compatible client."""
    # The anthropic SDK is imported before the requests are made (it takes seconds).
    import generation.providers.claude  # noqa: F401

    with FakeLLMServer(tokens_per_second=50_000, first_token=0.0) as server:
        monkeypatch.setenv("ANTHROPIC_BASE_URL", server.url)
        settings.ANTHROPIC_API_KEY = CLAUDE_KEY
        settings.OPENAI_API_KEY = OPENAI_KEY
        settings.KARASU["LLMS"]["claude"] = {
            **settings.KARASU["LLMS"]["claude"],
            "MAX_RETRIES": 0,
        }
        settings.KARASU["LLMS"]["openai"] = {
            **settings.KARASU["LLMS"]["openai"],
            "BASE_URL": f"{server.url}/v1",
            "MAX_RETRIES": 0,
        }
        llm_limiter_for.cache_clear()
        yield server
    llm_limiter_for.cache_clear()


def start(theme: str, llm: str, **fields) -> GenerationRequest:
    request = GenerationRequest(
        theme=theme,
        count=2,
        llm=llm,
        image_model="demo",
        collection=Collection.objects.get(name="Generated images"),
        **fields,
    )
    request.tags.add(*TAGS[theme])  # saved with the request, in one write
    request.save()
    assert actions.generate(request)
    return request


def finished(requests: list[GenerationRequest]) -> bool:
    for request in requests:
        request.refresh_from_db()
    return all(request.is_terminal for request in requests)


def found(client, url_name: str, query: str) -> set[int]:
    response = client.get(reverse(url_name), {"q": query})
    assert response.status_code == 200
    context = "images" if url_name == "wagtailimages:index" else "results"
    return {image.pk for image in response.context[context]}


@pytest.mark.django_db(transaction=True)
@pytest.mark.usefixtures("collections", "demo")
@pytest.mark.parametrize("llm", ["demo", "claude", "openai"])
def test_themes_in_every_script_file_whole_images_through_each_llm(
    thread_consumer, llm_server, editor, llm
):
    requests = [start(theme, llm) for theme in THEMES]
    wait_for(lambda: finished(requests), 60, message="the requests to finish")
    source = get_image_model().objects.filter(generation_request_id=requests[0].pk).first()
    variation = start(THEMES[0], llm, source_image=source)
    wait_for(lambda: finished([variation]), 60, message="the variations to finish")

    images_of = {}
    for request in [*requests, variation]:
        theme = request.theme
        assert request.status == GenerationRequest.Status.COMPLETED, request.error
        jobs = list(request.jobs.select_related("image"))
        assert [job.status for job in jobs] == ["succeeded", "succeeded"]
        for job in jobs:
            image = job.image
            # Title, alt text and tags as written, in their script, with nothing lost.
            assert image.title == job.prompt and theme in image.title
            assert image.description == job.alt_text and theme in image.description
            assert {tag.name for tag in image.tags.all()} == {*TAGS[theme], "demo"}
            with image.open_file() as file, PILImage.open(file) as picture:
                assert picture.size == (image.width, image.height)
            if llm == "demo":
                # Prompts for the image model in English, alt texts in the theme's language.
                assert any(subject in job.prompt for subject in SUBJECTS)
                language = THEME_LANGUAGES.get(theme, "en")
                subjects = SUBJECTS if language == "en" else WORDS[language]["subjects"]
                assert any(subject in image.description for subject in subjects)
        images_of[request.pk] = {job.image.pk for job in jobs}
    names = [image.file.name for image in get_image_model().objects.all()]
    assert len(set(names)) == len(names)  # every file its own

    if llm != "demo":
        # Every call asked for English prompts and alt texts in the theme's language.
        assert llm_server.calls
        for call in llm_server.calls:
            assert "Write every prompt in English" in call.system
            assert "Write every alt text in the language the theme is written in" in call.system
            alt_text = call.schema["properties"]["prompts"]["items"]["properties"]["alt_text"]
            assert "in the language of the theme" in alt_text["description"]

    # The library's search finds each theme by a word inside it, in the listing and the
    # chooser, as soon as the worker has indexed the images.
    japanese = images_of[requests[0].pk] | images_of[variation.pk]
    listing = "wagtailimages:index"
    wait_for(lambda: found(editor, listing, "烏") == japanese, 10, message="the index")
    for url_name in (listing, "wagtailimages_chooser:choose_results"):
        assert found(editor, url_name, "烏") == japanese
        assert found(editor, url_name, "雪中") == images_of[requests[1].pk]
        assert found(editor, url_name, "الغسق") == images_of[requests[2].pk]
        assert found(editor, url_name, "dusk") == images_of[requests[4].pk]
