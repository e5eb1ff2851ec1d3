"""One end-to-end test in a real browser: Debian's Chromium driven by Playwright."""

from tests.support.browser import BROWSER_TEST

pytestmark = BROWSER_TEST


def test_monitor_shows_a_request_reach_100_percent_without_reloading(
    admin_page, live_server, thread_consumer, settings, tmp_path
):
    from generation.limits import limiter_for
    from generation.providers import reset_cache

    settings.KARASU["IMAGE_MODELS"]["demo"] = {
        **settings.KARASU["IMAGE_MODELS"]["demo"],
        "LATENCY": 0.2,
        "CONCURRENCY": 2,
    }
    reset_cache()
    limiter_for.cache_clear()
    monitor = admin_page
    context = admin_page.context
    monitor.goto(f"{live_server.url}/admin/job-monitor/")
    monitor.wait_for_selector("text=Generation requests")
    monitor.evaluate("window.__karasuNotReloaded = true")

    # An editor starts a demo request in another tab.
    editor = context.new_page()
    editor.goto(f"{live_server.url}/admin/snippets/generation/generationrequest/add/")
    editor.fill("#id_theme", "Crows over <Kyoto>")
    editor.fill("#id_count", "6")
    # Save alone (a draft) is in the drop-up under the primary "Save and generate".
    editor.click("footer button:has-text('More actions')")
    editor.get_by_role("button", name="Save", exact=True).click()
    editor.wait_for_url("**/generationrequest/")
    # The listing row's "more" menu offers Generate, which asks for confirmation.
    editor.click("button[aria-label^='More options for']")
    editor.click("a:has-text('Generate')")
    editor.wait_for_selector("text=Ask the LLM for 6 prompts")
    editor.click("form button[type=submit]:has-text('Generate')")
    editor.wait_for_selector("text=Writing 6 prompts")

    bar = monitor.locator(".karasu-progress").first
    bar.wait_for(timeout=30_000)
    monitor.wait_for_function(
        """() => {
            const bar = document.querySelector('.karasu-progress');
            return bar && bar.getAttribute('aria-valuenow') === '6'
                && bar.getAttribute('aria-valuemax') === '6';
        }""",
        timeout=60_000,
    )
    assert "6 done / 6" in bar.inner_text()
    assert monitor.evaluate("window.__karasuNotReloaded") is True
    assert "Crows over <Kyoto>" in monitor.inner_text("#karasu-monitor-live")
    monitor.screenshot(path=str(tmp_path / "monitor.png"), full_page=True)
