"""axe-core (from npm, `make test` installs it) run in a Playwright page: the WCAG 2.1 A and
AA violations of part of a page."""

from __future__ import annotations

from pathlib import Path

import pytest

AXE = Path(__file__).resolve().parents[2] / "node_modules" / "axe-core" / "axe.min.js"
WCAG_21_AA = ["wcag2a", "wcag2aa", "wcag21a", "wcag21aa"]


def axe_violations(page, selector: str) -> list[str]:
    """The WCAG 2.1 A/AA rules that the element at ``selector`` breaks, each with the
    markup of the first node that breaks it."""
    if not AXE.exists():
        pytest.fail(f"{AXE} is missing: run `npm ci` (make test does)", pytrace=False)
    if not page.evaluate("() => Boolean(window.axe)"):
        page.add_script_tag(path=str(AXE))
    violations = page.evaluate(
        """async ([selector, tags]) => {
            const result = await window.axe.run(document.querySelector(selector), {
                runOnly: { type: 'tag', values: tags },
            });
            return result.violations.map(
                (v) => `${v.id}: ${v.help} (${v.nodes[0] && v.nodes[0].html})`
            );
        }""",
        [selector, WCAG_21_AA],
    )
    return violations
