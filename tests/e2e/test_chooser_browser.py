"""In a real browser: the image chooser's Generate tab, from every place the chooser opens on
an article page (its hero image field, a StreamField image block, rich text), with a real
Huey consumer and the demo models (Debian's Chromium driven by Playwright)."""

from __future__ import annotations

import re
import statistics
from pathlib import Path

import pytest
from django.contrib.auth.models import Group, Permission
from wagtail.images import get_image_model
from wagtail.models import (
    Collection,
    GroupCollectionPermission,
    GroupPagePermission,
    Locale,
    Page,
    Site,
)

from articles.models import ArticlePage
from cms.models import HomePage
from generation.models import GenerationRequest
from generation.providers import reset_cache
from tests.support.axe import axe_violations
from tests.support.browser import BROWSER_TEST

pytestmark = BROWSER_TEST

LATENCY = 1.0  # the demo image model's seconds per image (the L)
MODAL = ".modal"
TAB = "#tab-generate"
# The newest generation's first candidate: the recent generations list the newest first.
NEW_CANDIDATE = f"{TAB} section.karasu-generation:first-of-type a[data-karasu-candidate]"

# Records, in the page, when the Generate form is submitted and when the first candidate of
# a generation not seen before appears: the time an editor waits, free of Playwright's own.
WATCH_FIRST_CANDIDATE = """() => {
    const seen = new Set(
        [...document.querySelectorAll('#tab-generate section.karasu-generation')].map((s) => s.id)
    );
    const watch = { submitted: null, started: null, first: null };
    window.__karasuWatch = watch;
    document.addEventListener('submit', (event) => {
        if (watch.submitted === null && event.target.closest('#tab-generate')) {
            watch.submitted = performance.now();
        }
    }, true);
    const observer = new MutationObserver(() => {
        const sections = document.querySelectorAll('#tab-generate section.karasu-generation');
        for (const section of sections) {
            if (!seen.has(section.id) && watch.started === null) {
                watch.started = performance.now();
            }
            if (!seen.has(section.id) && section.querySelector('a[data-karasu-candidate]')) {
                watch.first = performance.now();
                observer.disconnect();
            }
        }
    });
    observer.observe(document.body, { subtree: true, childList: true });
}"""


@pytest.fixture
def home(collections) -> HomePage:
    """The site's home page (a transactional test starts without the migrations' rows)."""
    existing = HomePage.objects.first()
    if existing:
        return existing
    Locale.objects.get_or_create(language_code="en")
    root = Page.get_first_root_node() or Page.add_root(instance=Page(title="Root", slug="root"))
    home = root.add_child(instance=HomePage(title="Karasu", slug="home"))
    Site.objects.update_or_create(
        is_default_site=True, defaults={"hostname": "localhost", "port": 80, "root_page": home}
    )
    return home


@pytest.fixture
def slow_demo(demo):
    demo(latency=LATENCY, concurrency=4)


def open_generate_tab(page, choose_button) -> None:
    choose_button.click()
    page.wait_for_selector(f"{MODAL} #tab-label-generate")
    page.click(f"{MODAL} #tab-label-generate")
    page.wait_for_selector(f"{TAB}:not([hidden])")


def generate(page, prompt: str, screenshot: Path | None = None) -> float:
    """Start a generation in the open tab; the seconds from the submit to its first
    candidate in the modal. ``screenshot``: where to save the tab as the work starts."""
    page.evaluate(WATCH_FIRST_CANDIDATE)
    page.fill(f"{TAB} textarea[name='karasu-generate-theme']", prompt)
    page.click(f"{TAB} button[type=submit]")
    if screenshot:
        page.wait_for_function("() => window.__karasuWatch.started !== null")
        page.evaluate("document.querySelector('.modal').scrollTop = 0")
        page.screenshot(path=str(screenshot))
    page.wait_for_function("() => window.__karasuWatch.first !== null", timeout=30_000)
    watch = page.evaluate("window.__karasuWatch")
    return (watch["first"] - watch["submitted"]) / 1000


def add_article_page(page, live_server, home: HomePage, title: str) -> None:
    page.goto(f"{live_server.url}/admin/pages/add/articles/articlepage/{home.pk}/")
    page.fill("#id_title", title)


def save_draft(page) -> ArticlePage:
    page.click("footer button:has-text('Save draft')")
    try:
        page.wait_for_url("**/edit/")
    except Exception:
        page.screenshot(path="/tmp/karasu-save-draft-failed.png", full_page=True)
        problems = page.locator(".messages, .error-message, .w-field--error").all_inner_texts()
        raise AssertionError(f"the page was not saved: {problems}") from None
    return ArticlePage.objects.latest("pk")


def test_generate_a_hero_image_from_the_chooser_and_save_the_page(
    admin_page, live_server, thread_consumer, slow_demo, home, tmp_path, capsys
):
    page = admin_page
    page.set_viewport_size({"width": 1280, "height": 1000})  # the screens in the docs
    add_article_page(page, live_server, home, "Crows in the snow")
    open_generate_tab(
        page, page.locator("#id_hero_image-chooser").get_by_role("button", name="Choose an image")
    )
    tab = page.locator(TAB)
    assert "Estimated cost:" in tab.inner_text()  # before anything starts
    page.screenshot(path=str(tmp_path / "chooser-generate-empty.png"))
    assert axe_violations(page, MODAL) == []

    generating = tmp_path / "chooser-generate-generating.png"
    waits = [
        generate(page, f"乌鸦在雪中 — “crows” {n} 🐦‍⬛", screenshot=generating if n == 2 else None)
        for n in range(3)
    ]
    with capsys.disabled():
        print(
            f"\nchooser: submit to first candidate, demo model at L = {LATENCY} s: "
            f"median {statistics.median(waits):.2f} s of {', '.join(f'{w:.2f}' for w in waits)}"
        )
    assert statistics.median(waits) < LATENCY + 1.5
    # Focus went to the start notice, not lost with the form the answer replaced; a screen
    # reader hears the progress of the newest generation.
    assert page.evaluate("document.activeElement.hasAttribute('data-karasu-focus')")
    status = page.locator("#karasu-generate-status")
    page.wait_for_function(
        "(s) => s.textContent.includes('4 of 4 ready')", arg=status.element_handle()
    )
    assert GenerationRequest.objects.filter(from_chooser=True).count() == 3

    page.wait_for_function(
        f"() => document.querySelectorAll(`{NEW_CANDIDATE}`).length === 4", timeout=30_000
    )
    page.evaluate("document.querySelector('.modal').scrollTop = 0")
    page.screenshot(path=str(tmp_path / "chooser-generate-done.png"))
    assert axe_violations(page, MODAL) == []
    image_id = choose_candidate(page.locator(NEW_CANDIDATE).first)
    page.wait_for_selector(MODAL, state="detached")
    assert page.input_value("#id_hero_image") == str(image_id)
    article = save_draft(page)
    assert article.hero_image_id == image_id
    image = get_image_model().objects.get(pk=image_id)
    request = GenerationRequest.objects.get(pk=image.generation_request_id)
    assert request.theme == "乌鸦在雪中 — “crows” 2 🐦‍⬛" and request.from_chooser


def candidate_image(candidate) -> int:
    """The id of the image a candidate chooses (its link is the chooser's chosen/<id>/ or
    <id>/select_format/)."""
    return int(re.search(r"/(\d+)/(select_format/)?$", candidate.get_attribute("href"))[1])


def choose_candidate(candidate) -> int:
    image_id = candidate_image(candidate)
    candidate.click()
    return image_id


def test_generate_from_a_streamfield_image_block_then_from_rich_text(
    admin_page, live_server, thread_consumer, slow_demo, home
):
    page = admin_page
    add_article_page(page, live_server, home, "烏の記事")
    body = page.locator("#panel-child-content-body-content")
    body.locator("button[title='Insert a block']").first.click()
    page.locator("[role=option]:has-text('Image')").click()
    open_generate_tab(
        page,
        page.locator("#body-0-value-image-chooser").get_by_role("button", name="Choose an image"),
    )
    generate(page, "نافذة في القاهرة 🌙 “dusk”")
    block_image = choose_candidate(page.locator(NEW_CANDIDATE).first)
    page.wait_for_selector(MODAL, state="detached")
    assert page.input_value("#body-0-value-image") == str(block_image)

    # Rich text: the chooser opens from Draftail's image button, and the chosen candidate
    # goes through the usual format step (its alt text offered from the image).
    body.locator("button[title='Insert a block']").last.click()
    page.locator("[role=option]:has-text('Paragraph')").click()
    editor = page.locator(".Draftail-Editor").last
    editor.locator("[contenteditable=true]").click()
    page.keyboard.type("烏が鳴く")
    page.keyboard.press("Enter")
    page.keyboard.type("/image")  # Draftail's command palette
    page.keyboard.press("Enter")
    page.wait_for_selector(f"{MODAL} #tab-label-generate")
    page.click(f"{MODAL} #tab-label-generate")
    # Reopened: the earlier generation is at the top, its candidates ready to choose.
    earlier = page.locator(f"{TAB} section.karasu-generation").first
    assert "نافذة في القاهرة" in earlier.inner_text()
    candidate = earlier.locator("a[data-karasu-candidate]").nth(1)
    assert "/select_format/" in candidate.get_attribute("href")
    text_image = choose_candidate(candidate)
    page.wait_for_selector(f"{MODAL} form input[name='image-chooser-insertion-alt_text']")
    assert page.input_value(f"{MODAL} input[name='image-chooser-insertion-alt_text']")
    page.check(f"{MODAL} input[name='image-chooser-insertion-format'][value='fullwidth']")
    page.click(f"{MODAL} form [type=submit]")
    page.wait_for_selector(MODAL, state="detached")
    editor.locator("img").wait_for()  # Draftail shows the inserted image
    article = save_draft(page)
    blocks = article.body
    assert blocks[0].block_type == "image" and blocks[0].value["image"].pk == block_image
    assert blocks[1].block_type == "paragraph"
    source = blocks[1].value.source
    assert (
        '<embed embedtype="image" format="fullwidth"' in source and f'id="{text_image}"' in source
    )
    # The alt text offered by the format step: the one written for the generated image.
    assert 'alt="' in source and "نافذة في القاهرة 🌙 “dusk”" in source


def test_close_the_modal_mid_generation_reopen_and_choose_then_a_refused_budget(
    admin_page, live_server, thread_consumer, slow_demo, home, settings
):
    page = admin_page
    add_article_page(page, live_server, home, "Crows again")
    chooser = page.locator("#id_hero_image-chooser")
    open_generate_tab(page, chooser.get_by_role("button", name="Choose an image"))
    page.fill(f"{TAB} textarea[name='karasu-generate-theme']", "Crows on a wire «夜»")
    page.click(f"{TAB} button[type=submit]")
    page.wait_for_selector(f"{TAB} section.karasu-generation")
    page.click(f"{MODAL} button.close")  # the editor goes back to the page meanwhile
    page.wait_for_selector(MODAL, state="detached")

    open_generate_tab(page, chooser.get_by_role("button", name="Choose an image"))
    running = page.locator(f"{TAB} section.karasu-generation").first
    assert "Crows on a wire «夜»" in running.inner_text()
    page.wait_for_selector(NEW_CANDIDATE, timeout=30_000)
    image_id = choose_candidate(page.locator(NEW_CANDIDATE).first)
    page.wait_for_selector(MODAL, state="detached")
    assert page.input_value("#id_hero_image") == str(image_id)

    # Over budget: refused in the tab with the reason, and nothing is created.
    settings.KARASU["IMAGE_MODELS"]["demo"] = {
        **settings.KARASU["IMAGE_MODELS"]["demo"],
        "PRICE": "0.0125",
    }
    settings.KARASU["MAX_REQUEST_COST"] = "0.04"
    reset_cache()
    requests = GenerationRequest.objects.count()
    add_article_page(page, live_server, home, "Crows, more")
    open_generate_tab(page, chooser.get_by_role("button", name="Choose an image"))
    page.fill(f"{TAB} textarea[name='karasu-generate-theme']", "Too many crows")
    page.click(f"{TAB} button[type=submit]")
    error = page.locator(f"{TAB} [role=alert]")
    error.wait_for()
    assert "above the limit of $0.04 per request (KARASU_MAX_REQUEST_COST)" in error.inner_text()
    assert page.input_value(f"{TAB} textarea[name='karasu-generate-theme']") == "Too many crows"
    assert axe_violations(page, MODAL) == []
    assert GenerationRequest.objects.count() == requests


def test_a_user_who_may_not_start_requests_sees_no_generate_tab(
    logged_in_page, live_server, home, django_user_model
):
    group = Group.objects.create(name="Page editors without generation")
    group.permissions.add(Permission.objects.get(codename="access_admin"))
    for codename in ("add_page", "change_page"):
        GroupPagePermission.objects.create(
            group=group, page=home, permission=Permission.objects.get(codename=codename)
        )
    for codename in ("add_image", "choose_image"):
        GroupCollectionPermission.objects.create(
            group=group,
            collection=Collection.get_first_root_node(),
            permission=Permission.objects.get(
                content_type__app_label="wagtailimages", codename=codename
            ),
        )
    user = django_user_model.objects.create_user("page-editor", password="secret-pass")
    user.groups.add(group)
    page = logged_in_page("page-editor", "secret-pass")
    add_article_page(page, live_server, home, "No tab")
    page.locator("#id_hero_image-chooser").get_by_role("button", name="Choose an image").click()
    page.wait_for_selector(f"{MODAL} #tab-label-upload")
    assert page.locator(f"{MODAL} [role=tab]").all_inner_texts() == ["Search", "Upload"]
    assert page.locator(f"{MODAL} #tab-generate").count() == 0
