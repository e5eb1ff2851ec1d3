"""The image library's search finds a Chinese, Japanese or Korean word inside the sentence
it was written in, in the admin's listing and in the chooser, on SQLite and PostgreSQL, and
finds words of other languages as before."""

import pytest
from django.contrib.auth.models import Group
from django.core.files.base import ContentFile
from django.urls import reverse
from wagtail.images import get_image_model
from wagtail.models import Page
from wagtail.search.backends import get_search_backend

from cms.cjk import cjk_index_text, cjk_query
from huey_tasks.task_backend import follow_ups_in_place
from tests.support.images import png

Image = get_image_model()

# Each image's words, some only in its title, its alt text or its tags.
IMAGES = {
    "kyoto": (
        "京都の烏、夕暮れ: a lone crow at golden hour, watercolour",
        "夕日に照らされた一羽のカラスを描いた水彩画",
        ["古都", "カラス"],
    ),
    "snow": ("乌鸦在雪中: a fox under moonlight, oil painting", "月光下的一只狐狸，油画", ["冬天"]),
    "seoul": ("서울의 까마귀: a night train at blue hour", "밤기차를 탄 까마귀", ["서울"]),
    "arabic": ("غراب عند الغسق: a lighthouse", "منارة تحت ضوء القمر", ["غراب"]),
    "english": ("Lighthouse at dusk — “the last light”", "A lighthouse at blue hour", ["coast"]),
}
# What a search finds. Every CJK word here is inside a longer run of its script, except
# where it says so.
SEARCHES = {
    "京都": {"kyoto"},  # in the title
    "一羽": {"kyoto"},  # in the alt text only
    "古都": {"kyoto"},  # a tag only
    "烏": {"kyoto"},  # one character
    "夕暮れ": {"kyoto"},
    "京都の烏": {"kyoto"},  # a whole run, as before
    "カラス 京都": {"kyoto"},
    "狐狸": {"snow"},
    "雪": {"snow"},
    "冬天": {"snow"},
    "밤기차": {"seoul"},  # Korean, before its particle
    "الغسق": {"arabic"},
    "lighthouse": {"arabic", "english"},
    "dusk": {"english"},
    "crow 京都": {"kyoto"},
    "watercolour": {"kyoto"},
    "東京": set(),  # shares 京 with 京都, but not the word
}
VIEWS = ["wagtailimages:index", "wagtailimages_chooser:choose_results"]


@pytest.fixture
def library(collections) -> dict[str, int]:
    """The images, filed and indexed, by name."""
    backend = get_search_backend()
    made = {}
    for name, (title, description, tags) in IMAGES.items():
        image = Image.objects.create(
            title=title,
            description=description,
            file=ContentFile(png(), name=f"{name}.png"),
            collection=collections,
        )
        image.tags.add(*tags)
        backend.add(image)
        made[name] = image.pk
    return made


@pytest.mark.django_db
@pytest.mark.parametrize("view", VIEWS)
def test_the_library_finds_a_word_inside_chinese_japanese_or_korean_text(editor, library, view):
    names = {pk: name for name, pk in library.items()}
    results = "images" if view == "wagtailimages:index" else "results"
    found = {}
    for query in SEARCHES:
        response = editor.get(reverse(view), {"q": query})
        assert response.status_code == 200
        found[query] = {names[image.pk] for image in response.context[results]}
    assert found == SEARCHES


@pytest.mark.django_db
def test_the_listing_shows_what_it_found_escaped(editor, collections):
    image = Image.objects.create(
        title="<b>古都</b>京都の烏 & “dusk”",
        file=ContentFile(png(), name="kyoto.png"),
        collection=collections,
    )
    get_search_backend().add(image)
    page = editor.get(reverse("wagtailimages:index"), {"q": "烏"}).content.decode()
    assert "&lt;b&gt;古都&lt;/b&gt;京都の烏 &amp; “dusk”" in page
    assert "<b>古都</b>" not in page


@pytest.mark.django_db
def test_other_models_are_searched_as_wagtail_searches_them(collections):
    """Pages index no pieces, so their searches are left whole: a run is still found as
    one word."""
    root = Page.get_first_root_node()
    page = root.add_child(instance=Page(title="京都の烏", slug="kyoto-crows"))
    backend = get_search_backend()
    backend.add(page)
    assert [found.pk for found in backend.search("京都の烏", Page)] == [page.pk]


def test_cjk_runs_are_indexed_as_characters_and_pairs():
    assert cjk_index_text("京都の烏、夕暮れ: a crow", "Kyoto京都", "crow") == (
        "京 都 の 烏 京都 都の の烏 夕 暮 れ 夕暮 暮れ Kyoto"
    )
    assert cjk_index_text("A lighthouse — “at dusk”", "غراب") == ""


def test_a_query_asks_for_the_pairs_of_its_cjk_runs():
    assert cjk_query("夕暮れ crow") == "夕暮 暮れ crow"
    assert cjk_query("烏") == "烏"
    assert cjk_query("Kyoto京都、") == "Kyoto 京都"
    assert cjk_query("lighthouse dusk") == "lighthouse dusk"
    alternatives = cjk_query("夕暮れ 京都", "or")
    assert [part.query_string for part in alternatives.subqueries] == ["夕暮 暮れ", "京都"]


@pytest.mark.django_db
def test_with_or_a_cjk_word_is_still_found_whole(library):
    """ "Or" joins a search's words, not the pieces of one word: 東京都 shares 京都 with
    京都の烏 but is not in it."""
    backend = get_search_backend()
    names = {pk: name for name, pk in library.items()}

    def found(query):
        return {names[image.pk] for image in backend.search(query, Image, operator="or")}

    assert found("東京都") == set()
    assert found("京都の烏") == {"kyoto"}
    assert found("東京都 狐狸") == {"snow"}
    assert found("夕暮れ 狐狸") == {"kyoto", "snow"}
    assert found("lighthouse 冬天") == {"arabic", "english", "snow"}


@pytest.mark.django_db
def test_a_model_that_is_not_indexed_finds_nothing_as_in_wagtail():
    Group.objects.create(name="京都の烏 editors")
    backend = get_search_backend()
    assert list(backend.search("京都", Group)) == []
    assert list(backend.search("editors", Group.objects.all())) == []


@pytest.mark.django_db
def test_tags_added_with_the_bulk_action_are_found(
    editor, library, django_capture_on_commit_callbacks
):
    """Wagtail's bulk "Add tags" action adds tags without saving the image: the image is
    indexed again (through Wagtail's index-update task), so its new tags are found."""
    url = reverse("wagtail_bulk_action", args=("cms", "karasuimage", "add_tags"))
    ids = "&".join(f"id={library[name]}" for name in ("kyoto", "english"))
    # The task runs in this thread after the commit instead of waiting for a worker.
    with follow_ups_in_place(), django_capture_on_commit_callbacks(execute=True):
        response = editor.post(f"{url}?{ids}", {"tags": "灯台守,“keeper”"})
    assert response.status_code == 302
    for query in ("灯台守", "灯台", "keeper"):
        found = editor.get(reverse("wagtailimages:index"), {"q": query}).context["images"]
        assert {image.pk for image in found} == {library["kyoto"], library["english"]}, query


@pytest.mark.django_db
@pytest.mark.parametrize("view", VIEWS)
def test_a_double_quote_in_a_search_is_no_error(editor, library, view):
    """SQLite's full-text syntax takes a stray " for an unterminated string: a 500 before."""
    names = {pk: name for name, pk in library.items()}
    results = "images" if view == "wagtailimages:index" else "results"
    searches = {
        'lighthouse"': {"arabic", "english"},
        '"dusk': {"english"},
        '京都"': {"kyoto"},
        '"the last light"': {"english"},
        '"': set(),
        '""': set(),
    }
    for query, expected in searches.items():
        response = editor.get(reverse(view), {"q": query})
        assert response.status_code == 200, query
        assert {names[image.pk] for image in response.context[results]} == expected, query
