"""``settings.KARASU`` put back as it was, nested dicts included (the suite's autouse
``restore_karasu_settings`` fixture, in tests/conftest.py, wraps every test in it)."""

from __future__ import annotations

import contextlib
import copy
import sys
from collections.abc import Iterator

from django.conf import settings


@contextlib.contextmanager
def karasu_settings_restored() -> Iterator[None]:
    """Restore ``settings.KARASU`` on exit, in place, nested dicts included.

    pytest-django's ``settings`` fixture restores top-level attributes only, and tests tune
    providers in place (``settings.KARASU["IMAGE_MODELS"]["demo"] = ...``).
    """
    karasu = settings.KARASU
    saved = copy.deepcopy(karasu)
    try:
        yield
    finally:
        # In place: the same dict object stays the setting, whoever holds a reference to it.
        karasu.clear()
        karasu.update(saved)
        from generation.providers import reset_cache

        reset_cache()  # clients are cached by name with the options they were built with
        # The per-model limiters are cached with their CONCURRENCY too. They are cleared only
        # if a test has loaded them, because importing them here would load Huey early.
        limits = sys.modules.get("generation.limits")
        if limits is not None:
            limits.limiter_for.cache_clear()
