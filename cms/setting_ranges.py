"""Numeric settings from the environment, each read with its allowed range.

The settings declare every numeric ``KARASU_*`` variable where they read it, with its range
(``numbers.read("KARASU_TASK_DEADLINE", 300.0, minimum=10, maximum=86400)``). A value that is
not a number, not finite or out of its range does not stop the settings from loading: every
process would then die in a traceback before Django could say why, and the queue would fail
earlier still, building its storage from the bad value. Instead the value is recorded, its
default is used in its place for as long as the process needs to report it, and the system
check ``cms.E001`` (cms/checks.py) names it, one line per variable, so that
``manage.py check``, ``runserver``, ``run_huey`` and the WSGI application all refuse to start.
"""

from __future__ import annotations

import math
import os
import re
from collections.abc import Mapping
from dataclasses import dataclass
from decimal import Decimal, InvalidOperation


@dataclass(frozen=True)
class Range:
    """Allowed values: finite numbers above ``above`` (exclusive) or from ``minimum``
    (inclusive) up to ``maximum`` (inclusive), and integers only when ``whole`` is set."""

    minimum: float | None = None
    maximum: float | None = None
    above: float | None = None
    whole: bool = False
    unit: str = ""

    def allows(self, value: float) -> bool:
        if not math.isfinite(value):
            return False
        if self.above is not None and not value > self.above:
            return False
        if self.minimum is not None and value < self.minimum:
            return False
        return self.maximum is None or value <= self.maximum

    def describe(self) -> str:
        kind = "a whole number" if self.whole else "a finite number"
        if self.unit:
            kind += f" of {self.unit}"
        if self.minimum is not None and self.maximum is not None:
            return f"{kind} from {_plain(self.minimum)} to {_plain(self.maximum)}"
        bounds = []
        if self.above is not None:
            bounds.append(f"greater than {_plain(self.above)}")
        if self.minimum is not None:
            bounds.append(f"at least {_plain(self.minimum)}")
        if self.maximum is not None:
            bounds.append(f"at most {_plain(self.maximum)}")
        return f"{kind} {' and '.join(bounds)}" if bounds else kind


def _plain(number: float | Decimal) -> str:
    """A number as an operator would write it: 1.0 as "1", 0.5 as "0.5"."""
    if isinstance(number, float) and number.is_integer():
        return str(int(number))
    return str(number)


def _shown(raw: str) -> str:
    """The value as it was set, quoted when it would not read plainly on one line."""
    if raw.isprintable() and raw.strip() == raw and len(raw) <= 40:
        return raw
    return repr(raw[:40])


class EnvNumbers:
    """Reads numeric variables, keeping each one's range (``ranges``) and what was wrong
    with its value (``errors``, one line per variable, for the system check)."""

    def __init__(self, environ: Mapping[str, str] | None = None):
        self.environ = os.environ if environ is None else environ
        self.ranges: dict[str, tuple[Range, float | int]] = {}
        self.amounts: set[str] = set()  # the USD amounts (budgets) read
        self.errors: dict[str, str] = {}

    def read(
        self,
        name: str,
        default: float | int,
        *,
        minimum: float | None = None,
        maximum: float | None = None,
        above: float | None = None,
        unit: str = "",
    ) -> float | int:
        """``name`` from the environment, or ``default`` when it is unset or empty. An int
        default reads a whole number. A variable read again without a range (as the test
        settings do for their own defaults) keeps the range it was declared with."""
        if minimum is None and maximum is None and above is None and name in self.ranges:
            allowed = self.ranges[name][0]
        else:
            allowed = Range(minimum, maximum, above, whole=isinstance(default, int), unit=unit)
        self.ranges[name] = (allowed, default)
        self.errors.pop(name, None)
        raw = self.environ.get(name, "")
        if not raw.strip():
            return default
        try:
            value = int(raw) if allowed.whole else float(raw)
        except ValueError:
            value = None
        if value is None or not allowed.allows(value):
            self.errors[name] = (
                f"{name}={_shown(raw)} is not allowed: it must be {allowed.describe()} "
                f"(unset: {_plain(default)})."
            )
            return default
        return value

    def usd(self, name: str) -> Decimal | None:
        """An optional amount in USD, exact (Decimal): at least 0, at most 4 decimal places;
        None when unset."""
        self.amounts.add(name)
        self.errors.pop(name, None)
        raw = self.environ.get(name, "")
        if not raw.strip():
            return None
        amount = _usd_amount(raw.strip())
        if amount is None:
            self.errors[name] = (
                f"{name}={_shown(raw)} is not allowed: it must be an amount in USD, at least 0, "
                "with at most 4 decimal places (unset: no limit)."
            )
        return amount

    def language(self, name: str, default: str, *, unset: str) -> str:
        """A language for the LLM: a code Django knows (``ja``, ``zh-hans``) or a short name
        on one line (``Swiss German``), else ``default`` and an error. The value goes into
        the LLM's system prompt, so a line break or an instruction must not get through."""
        self.errors.pop(name, None)
        raw = self.environ.get(name, "")
        value = raw.strip()
        if not value:
            return default
        if _is_language(value):
            return value
        self.errors[name] = (
            f"{name}={_shown(raw)} is not allowed: it must be a language code such as ja or "
            f"zh-hans, or a language's name of at most {MAX_LANGUAGE_NAME} letters, spaces and "
            f"hyphens (unset: {unset})."
        )
        return default


MAX_LANGUAGE_NAME = 40
# Letters of any script, words joined by one space or hyphen: "Swiss German", "日本語".
_LANGUAGE_NAME = re.compile(r"[^\W\d_]+(?:[ -][^\W\d_]+)*")


def _is_language(value: str) -> bool:
    from django.conf.locale import LANG_INFO  # a plain dict; settings may import it

    if value.lower() in LANG_INFO:
        return True
    return len(value) <= MAX_LANGUAGE_NAME and _LANGUAGE_NAME.fullmatch(value) is not None


def _usd_amount(text: str) -> Decimal | None:
    """``text`` as a USD amount (finite, at least 0, at most 4 places), else None."""
    try:
        amount = Decimal(text)
        if amount.is_finite() and amount >= 0 and amount == amount.quantize(Decimal("0.0001")):
            return amount
    except InvalidOperation:  # not a number, or too large to quantize
        pass
    return None
