"""In a real browser: the add form's cost estimate follows the count and the model as the
editor types (the karasu-cost-estimate controller; Debian's Chromium driven by Playwright)."""

from tests.support.browser import BROWSER_TEST

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


def test_the_estimate_speaks_the_editors_language(
    admin_page, live_server, settings, django_user_model
):
    # The script writes the server's translated texts (data-karasu-cost-estimate-*-value).
    from wagtail.users.models import UserProfile

    profile = UserProfile.get_for_user(django_user_model.objects.get(username="admin"))
    profile.preferred_language = "ja"
    profile.save()
    settings.KARASU["IMAGE_MODELS"]["demo"]["PRICE"] = "12.5"
    page = admin_page
    page.goto(f"{live_server.url}/admin/snippets/generation/generationrequest/add/")
    output = page.locator(OUTPUT)
    page.select_option("#id_image_model", "demo")
    page.fill("#id_count", "100")
    assert output.inner_text() == "見積もり費用：$1,250.00（100 × 1 枚あたり $12.50）"
    page.fill("#id_count", "")
    assert output.inner_text() == "見積もり費用：画像の枚数を入力してください。"
