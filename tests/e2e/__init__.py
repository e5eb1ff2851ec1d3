"""Browser tests: Debian's Chromium driven by Playwright (marks in tests/support/browser.py,
fixtures in conftest.py)."""
