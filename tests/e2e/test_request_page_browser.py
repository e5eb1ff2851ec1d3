"""In a real browser: "Save and generate" on the add form, then the request page follows the
work to the end without a reload (Debian's Chromium driven by Playwright)."""

from tests.support.browser import BROWSER_TEST

pytestmark = BROWSER_TEST

LIVE = "#karasu-request-live"


def test_save_and_generate_then_watch_the_request_page_reach_6_done(
    admin_page, live_server, thread_consumer, settings, tmp_path
):
    from generation.limits import limiter_for
    from generation.providers import reset_cache

    # Slow enough (6 images, 2 at a time) for the page to open while the work goes on.
    settings.KARASU["IMAGE_MODELS"]["demo"] = {
        **settings.KARASU["IMAGE_MODELS"]["demo"],
        "LATENCY": 0.5,
        "CONCURRENCY": 2,
    }
    reset_cache()
    limiter_for.cache_clear()

    page = admin_page
    page.goto(f"{live_server.url}/admin/snippets/generation/generationrequest/add/")
    page.fill("#id_theme", "Crows over <Kyoto>")
    page.fill("#id_count", "6")
    # The form's primary action; Save (a draft) waits in its drop-up.
    page.click("footer button[name='action-generate']:has-text('Save and generate')")
    page.wait_for_url("**/generationrequest/inspect/*/")
    page.wait_for_selector("text=Writing 6 prompts")
    page.evaluate("window.__karasuNotReloaded = true")

    live = page.locator(LIVE)
    # Opened while the request is active: the live part polls (karasu-poll + w-swap).
    assert live.locator("[data-controller='karasu-poll w-swap']").count() == 1
    assert "6 done / 6" not in live.inner_text()

    page.wait_for_function(
        """() => {
            const bar = document.querySelector('#karasu-request-live .karasu-progress');
            return bar && bar.getAttribute('aria-valuenow') === '6'
                && bar.getAttribute('aria-valuemax') === '6';
        }""",
        timeout=60_000,
    )
    assert "6 done / 6" in live.locator(".karasu-progress").inner_text()
    # Once the request is final, the swap that shows it so also ends the polling.
    page.wait_for_function(
        "() => !document.querySelector('#karasu-request-live [data-controller]')",
        timeout=20_000,
    )
    assert page.evaluate("window.__karasuNotReloaded") is True
    assert live.locator("#karasu-status-heading").inner_text() == "Completed"
    assert live.locator(".karasu-thumbs img").count() == 6
    assert live.locator("tr[data-job-status='succeeded']").count() == 6
    for row in ["expansion_started", "expansion_finished", "first_image", "last_image", "finished"]:
        assert live.locator(f"tr[data-timeline='{row}']").count() == 1
    assert "Crows over <Kyoto>" in live.inner_text()  # shown as text, not markup
    page.screenshot(path=str(tmp_path / "request-page.png"), full_page=True)


def test_the_page_of_a_request_deleted_meanwhile_stops_asking(admin_page, live_server, settings):
    """Its refresh answers 404 from then on: one failed refresh, then no more (while a 502
    on the way is only skipped)."""
    from generation.models import GenerationRequest

    request = GenerationRequest.objects.create(
        theme="Crows",
        count=2,
        llm="demo",
        image_model="demo",
        status=GenerationRequest.Status.GENERATING,
        jobs_total=2,
    )
    refreshes = []
    page = admin_page
    page.on(
        "response", lambda response: "/live/" in response.url and refreshes.append(response.status)
    )
    page.goto(
        f"{live_server.url}/admin/snippets/generation/generationrequest/inspect/{request.pk}/"
    )
    page.wait_for_timeout(4_000)  # at least one refresh while it exists
    assert refreshes and set(refreshes) == {200}

    def wait_until(condition, seconds):
        deadline = seconds * 1000
        while not condition() and deadline > 0:
            page.wait_for_timeout(250)
            deadline -= 250
        assert condition(), refreshes

    # A server error (a deploy under way) is skipped, not the end of the refreshes.
    page.route("**/live/**", lambda route: route.fulfill(status=502, body="Bad gateway"))
    wait_until(lambda: 502 in refreshes, 8)
    page.unroute("**/live/**")
    served = len(refreshes)
    wait_until(lambda: 200 in refreshes[served:], 8)
    request.delete()
    page.wait_for_timeout(10_000)  # three more ticks at 3 s
    assert refreshes.count(404) == 1, refreshes


def test_the_refresh_waits_while_the_editor_types_in_a_prompt(admin_page, live_server):
    """The live part is not swapped while the focus is in it (a prompt box being edited),
    although it is fetched; leaving the box lets the waiting refresh in."""
    from generation.models import GenerationJob, GenerationRequest
    from tests.support.factories import make_request

    request = make_request(2, theme="烏の森")  # generating, two pending prompts
    first, second = request.jobs.order_by("index")
    refreshes = []
    page = admin_page
    page.on("response", lambda response: "/live/" in response.url and refreshes.append(1))
    page.goto(
        f"{live_server.url}/admin/snippets/generation/generationrequest/inspect/{request.pk}/"
    )
    done = page.locator(f'{LIVE} dd[data-count="succeeded"]')
    assert done.inner_text() == "0"
    box = page.locator(f"#job-{first.pk} textarea")
    box.click()
    box.press("End")
    box.type("、雨の中で")

    # Meanwhile a worker files the second prompt's image.
    GenerationJob.objects.filter(pk=second.pk).update(status=GenerationJob.Status.SUCCEEDED)
    GenerationRequest.objects.filter(pk=request.pk).update(jobs_succeeded=1)
    fetched = len(refreshes)
    deadline = 10_000
    while len(refreshes) < fetched + 2 and deadline > 0:  # fetched twice since the change
        page.wait_for_timeout(250)
        deadline -= 250
    assert len(refreshes) >= fetched + 2, refreshes
    # Not swapped in: the box keeps the focus and the words being typed, the count waits.
    assert box.evaluate("element => element === document.activeElement")
    assert box.input_value().endswith("、雨の中で")
    assert done.inner_text() == "0"

    box.blur()  # the editor leaves the box
    page.wait_for_function(
        """() => document.querySelector('#karasu-request-live dd[data-count="succeeded"]')
            .textContent.trim() === '1'""",
        timeout=10_000,
    )
    assert page.locator(f"#job-{second.pk}").get_attribute("data-job-status") == "succeeded"
