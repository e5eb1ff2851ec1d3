"""Settings that must refuse to start: the system check behind ``manage.py check``,
``runserver`` and ``run_huey``, and the same check run by the WSGI application at import.

The ranges are declared where the settings read their variables (cms/setting_ranges.py);
this only reports what the settings found wrong, one line per variable.
"""

from __future__ import annotations

from django.conf import settings
from django.core.checks import Error, Warning, register, run_checks
from django.core.exceptions import ImproperlyConfigured

# The checks of settings that a process must not start with; the WSGI application runs
# these (a web server does not run Django's checks by itself).
SETTINGS_TAG = "karasu_settings"


@register(SETTINGS_TAG)
def environment_values_in_range(app_configs, **kwargs) -> list[Error]:
    invalid = getattr(settings, "KARASU_INVALID_SETTINGS", {})
    return [Error(message, id="cms.E001") for _name, message in sorted(invalid.items())]


@register()
def c2pa_signing(app_configs, **kwargs) -> list[Warning]:
    """A half-configured C2PA signer (a certificate without its key, an unreadable file)
    does not stop Karasu: images are filed marked but unsigned, each saying why. This says
    it once, at start."""
    from cms.provenance.signing import SigningError, credentials

    try:
        credentials()
    except SigningError as exc:
        return [Warning(f"Generated images will not be signed: {exc}.", id="cms.W002")]
    return []


def refuse_to_start_on_bad_settings() -> None:
    """Raise ImproperlyConfigured, one line per error, if a settings check fails."""
    errors = [message for message in run_checks(tags=[SETTINGS_TAG]) if message.is_serious()]
    if errors:
        raise ImproperlyConfigured("\n".join(f"({e.id}) {e.msg}" for e in errors))
