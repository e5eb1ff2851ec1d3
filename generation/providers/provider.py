"""The base of every provider: its name, its options from ``settings.KARASU`` and its
limits."""

from __future__ import annotations

from typing import Any


class Provider:
    """A provider configured by name from ``settings.KARASU``, where ``options`` is its
    entry."""

    #: The environment variable this provider needs, if any, shown in validation errors.
    requires_setting: str = ""

    def __init__(self, name: str, **options: Any):
        self.name = name
        self.options = options
        self.label = options.get("LABEL", name)

    #: The calls in flight at once across every worker, unless CONCURRENCY says otherwise.
    default_concurrency = 4

    @property
    def concurrency(self) -> int:
        return int(self.options.get("CONCURRENCY", self.default_concurrency))

    @property
    def requests_per_minute(self) -> int | None:
        value = self.options.get("REQUESTS_PER_MINUTE")
        return int(value) if value else None

    @classmethod
    def is_available(cls) -> bool:
        from django.conf import settings

        return not cls.requires_setting or bool(getattr(settings, cls.requires_setting, ""))
