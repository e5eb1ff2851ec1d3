"""Browser tests: Debian's Chromium driven by Playwright.

The ``browser`` and ``admin_page`` fixtures are in ``tests/e2e/conftest.py``.
"""

import os

import pytest

CHROMIUM = "/usr/bin/chromium"

# Every browser test's marks: deselected with -m "not browser"; skipped without chromium.
BROWSER_TEST = [
    pytest.mark.browser,
    pytest.mark.django_db(transaction=True),
    pytest.mark.usefixtures("collections"),
    pytest.mark.skipif(
        not os.path.exists(CHROMIUM),
        reason="Debian's chromium is not installed (apt-get install -y chromium)",
    ),
]
