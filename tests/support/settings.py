"""Test settings plus the test-only task module, for worker subprocesses and the suite."""

from cms.settings.test import *  # noqa: F403
from cms.settings.test import INSTALLED_APPS

INSTALLED_APPS = [*INSTALLED_APPS, "tests.support"]
