"""The request listing's filters: by status, image model and LLM, alone and together."""

import pytest
from django.urls import reverse
from wagtail.search.backends import get_search_backend

from generation.models import GenerationRequest
from tests.support.admin import NS
from tests.support.factories import make_request

pytestmark = [pytest.mark.django_db, pytest.mark.usefixtures("collections")]
Req = GenerationRequest.Status


@pytest.fixture
def second_models(settings):
    """A second image model and LLM to filter by (offline, like the demo ones)."""
    settings.KARASU["IMAGE_MODELS"]["demo-ink"] = {
        **settings.KARASU["IMAGE_MODELS"]["demo"],
        "LABEL": "Demo ink",
    }
    settings.KARASU["LLMS"]["demo-haiku"] = {**settings.KARASU["LLMS"]["demo"], "LABEL": "Haiku"}


def test_the_listing_filters_by_status_image_model_and_llm(editor, second_models):
    rows = {
        "烏の群れ": (Req.COMPLETED, "demo", "demo"),
        "鷺の朝": (Req.FAILED, "demo-ink", "demo"),
        "غراب": (Req.FAILED, "demo", "demo-haiku"),
        "Crow 🐦": (Req.DRAFT, "demo-ink", "demo-haiku"),
    }
    for theme, (status, image_model, llm) in rows.items():
        make_request(
            2, with_jobs=False, theme=theme, status=status, image_model=image_model, llm=llm
        )

    def listed(query: str) -> set[str]:
        response = editor.get(f"{reverse(f'{NS}:list')}?{query}")
        assert response.status_code == 200
        themes = {request.theme for request in response.context["object_list"]}
        html = response.content.decode()
        assert all(theme in html for theme in themes)
        return themes

    assert listed("") == set(rows)
    assert listed("status=failed") == {"鷺の朝", "غراب"}
    assert listed("image_model=demo-ink") == {"鷺の朝", "Crow 🐦"}
    assert listed("llm=demo-haiku") == {"غراب", "Crow 🐦"}
    assert listed("status=failed&image_model=demo-ink") == {"鷺の朝"}
    assert listed("status=draft&llm=demo") == set()


def test_the_listing_finds_a_request_by_a_word_of_its_theme(editor):
    """On SQLite too (FTS5 has no column per field), in English and inside a Japanese or
    Chinese theme, which puts no spaces between its words."""
    themes = [
        "京都の烏、夕暮れ",
        "乌鸦在雪中",
        "Crows at dusk — “the last light”",
        "غراب عند الغسق",
    ]
    backend = get_search_backend()
    for theme in themes:
        backend.add(make_request(2, with_jobs=False, theme=theme))

    def found(query: str) -> set[str]:
        response = editor.get(reverse(f"{NS}:list"), {"q": query})
        assert response.status_code == 200
        return {request.theme for request in response.context["object_list"]}

    assert found("dusk") == {"Crows at dusk — “the last light”"}
    assert found("夕暮れ") == {"京都の烏、夕暮れ"}
    assert found("烏") == {"京都の烏、夕暮れ"}
    assert found("雪") == {"乌鸦在雪中"}
    assert found("الغسق") == {"غراب عند الغسق"}
    assert found("東京") == set()
