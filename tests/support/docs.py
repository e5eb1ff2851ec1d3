"""Numbers the documentation states, read from it, so that tests hold the code to them."""

from __future__ import annotations

import re
from pathlib import Path

from django.conf import settings

DOCS = Path(settings.BASE_DIR) / "docs"


def documented_number(page: str, pattern: str) -> int:
    """The number that ``pattern``'s one group finds on ``docs/<page>``; the page must
    state it exactly once. Lines are joined first: a phrase may wrap."""
    text = " ".join((DOCS / page).read_text().split())
    found = re.findall(pattern, text)
    assert len(found) == 1, f"docs/{page} states {pattern!r} {len(found)} times, not once"
    return int(found[0])
