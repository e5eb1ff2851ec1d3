"""In a real browser: the add form's cost estimate follows the count and the model as the
editor types (the karasu-cost-estimate controller; Debian's Chromium driven by Playwright)."""

from tests.e2e import BROWSER_TEST

pytestmark = BROWSER_TEST

OUTPUT = "[data-karasu-cost-estimate-target='output']"


def test_the_estimate_follows_the_count_and_the_model(admin_page, live_server, settings):
    settings.KARASU["IMAGE_MODELS"]["demo"]["PRICE"] = "0.0125"
    settings.FAL_KEY = "fal-key-for-the-choices"  # offers the fal models (none is called)
    page = admin_page
    page.goto(f"{live_server.url}/admin/snippets/generation/generationrequest/add/")

    output = page.locator(OUTPUT)
    page.select_option("#id_image_model", "demo")
    page.wait_for_function(
        f"() => document.querySelector(\"{OUTPUT}\").textContent.includes('10 ×')"
    )
    assert output.inner_text() == "Estimated cost: $0.125 (10 × $0.0125 per image)"
    page.fill("#id_count", "7")  # as typed: an input event per change
    assert output.inner_text() == "Estimated cost: $0.0875 (7 × $0.0125 per image)"
    page.select_option("#id_image_model", "flux-ultra")
    assert output.inner_text() == "Estimated cost: $0.42 (7 × $0.06 per image)"
    page.fill("#id_count", "500")
    assert output.inner_text() == "Estimated cost: $30.00 (500 × $0.06 per image)"
    page.fill("#id_count", "")
    assert output.inner_text() == "Estimated cost: enter the number of images."
    assert "FLUX.1 [schnell] — $0.003/image" in page.locator("#id_image_model").inner_text()
