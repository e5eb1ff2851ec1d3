"""System checks: a malformed price stops ``manage.py check``, runserver, the workers and the
WSGI application at start, instead of failing a page or a Generate click later."""

from __future__ import annotations

from django.conf import settings
from django.core.checks import Error, register
from django.core.exceptions import ImproperlyConfigured

from cms.checks import SETTINGS_TAG
from generation import costs


@register(SETTINGS_TAG)
def prices_are_usd_amounts(app_configs, **kwargs) -> list[Error]:
    errors = []
    for name, config in settings.KARASU["IMAGE_MODELS"].items():
        for key in ("PRICE", "PRICE_4K"):
            if key not in config:
                continue
            try:
                costs.parse_usd(config[key], f"KARASU IMAGE_MODELS[{name!r}] {key}")
            except ImproperlyConfigured as exc:
                errors.append(Error(str(exc), id="generation.E001"))
    return errors
