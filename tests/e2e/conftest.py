import pytest

from tests.support.browser import CHROMIUM


@pytest.fixture
def browser(monkeypatch):
    from playwright.sync_api import sync_playwright

    # Playwright's sync API keeps an event loop in this thread; the test's own ORM calls
    # are still synchronous.
    monkeypatch.setenv("DJANGO_ALLOW_ASYNC_UNSAFE", "true")
    with sync_playwright() as playwright:
        browser = playwright.chromium.launch(
            executable_path=CHROMIUM,
            args=[
                "--no-sandbox",
                "--disable-gpu",
                "--disable-background-networking",
                "--disable-component-update",
                "--disable-sync",
                "--no-first-run",
            ],
        )
        yield browser
        browser.close()


@pytest.fixture
def logged_in_page(browser, live_server):
    """``logged_in_page(username, password)``: a page of a new browser context, signed in to
    the admin through its login form."""
    contexts = []

    def log_in(username: str, password: str):
        context = browser.new_context()
        contexts.append(context)
        page = context.new_page()
        page.goto(f"{live_server.url}/admin/login/")
        page.fill("#id_username", username)
        page.fill("#id_password", password)
        page.click("button[type=submit]")
        page.wait_for_url("**/admin/")
        return page

    yield log_in
    for context in contexts:
        context.close()


@pytest.fixture
def admin_page(logged_in_page, django_user_model):
    """A page of a new browser context, logged in to the admin as a superuser."""
    django_user_model.objects.create_superuser("admin", "a@example.com", "secret-pass")
    return logged_in_page("admin", "secret-pass")
