"""The packages depend on each other one way only: ops -> generation -> huey_tasks -> cms,
and the example site's articles -> cms.

Every import counts, deferred ones (inside functions) included; docs/architecture.md draws
the same map. The suite keeps a rule of its own: no module of it imports a test module, a
conftest.py or a test package. What tests share lives in tests/support, and shared fixtures
live in the nearest conftest.py, which pytest loads by itself.
"""

import ast
from pathlib import Path

import pytest
from django.conf import settings

# Each package and the packages it may import (besides itself).
ALLOWED = {
    "cms": set(),
    "huey_tasks": {"cms"},
    "generation": {"huey_tasks", "cms"},
    "ops": {"generation", "huey_tasks", "cms"},
    # The example site is content only: it knows the image model, nothing of the pipeline.
    "articles": {"cms"},
}
ROOT = Path(settings.BASE_DIR)


def imported_packages(path: Path) -> set[tuple[str, int]]:
    """The project packages ``path`` imports, with the line of each import."""
    found = set()
    for node in ast.walk(ast.parse(path.read_text(), str(path))):
        if isinstance(node, ast.Import):
            names = [alias.name for alias in node.names]
        elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
            names = [node.module]
        else:
            continue
        found.update((name.split(".")[0], node.lineno) for name in names)
    return {(name, line) for name, line in found if name in ALLOWED}


def modules(package: str) -> list[Path]:
    return sorted(path for path in (ROOT / package).rglob("*.py") if "migrations" not in path.parts)


@pytest.mark.parametrize("package", sorted(ALLOWED))
def test_imports_follow_the_arrows(package):
    wrong = [
        f"{path.relative_to(ROOT)}:{line} imports {name}"
        for path in modules(package)
        for name, line in sorted(imported_packages(path))
        if name != package and name not in ALLOWED[package]
    ]
    assert not wrong, "\n".join(wrong)


def test_the_check_sees_deferred_imports(tmp_path):
    module = tmp_path / "module.py"
    module.write_text("def f():\n    from generation.models import GenerationJob\n")
    assert imported_packages(module) == {("generation", 2)}


TESTS = ROOT / "tests"
SHARED = "tests.support"


def _module_name(path: Path) -> str:
    parts = list(path.relative_to(ROOT).with_suffix("").parts)
    if parts[-1] == "__init__":
        parts.pop()
    return ".".join(parts)


def _resolve(path: Path, node: ast.ImportFrom) -> list[str]:
    """The absolute names an ``import`` or ``from ... import`` statement names."""
    if node.level == 0:
        base = node.module or ""
    else:
        package = _module_name(path).split(".")
        if path.name != "__init__.py":
            package.pop()
        package = package[: len(package) - (node.level - 1)]
        base = ".".join([*package, node.module] if node.module else package)
    # ``from tests import e2e`` imports the module tests.e2e, not only the package.
    return [f"{base}.{alias.name}" if base else alias.name for alias in node.names]


def suite_imports(path: Path, source: str | None = None) -> set[tuple[str, int]]:
    """The modules of the suite that the module at ``path`` imports, other than
    tests.support, with the line of each import. A bare ``conftest`` or ``test_*`` name
    counts too, because pytest's rootdir-relative imports make those importable. ``source``
    stands in for the file's text."""
    found = set()
    text = path.read_text() if source is None else source
    for node in ast.walk(ast.parse(text, str(path))):
        if isinstance(node, ast.Import):
            names = [alias.name for alias in node.names]
        elif isinstance(node, ast.ImportFrom):
            names = _resolve(path, node)
        elif (
            isinstance(node, ast.Assign)
            and any(getattr(target, "id", None) == "pytest_plugins" for target in node.targets)
            and isinstance(node.value, ast.List | ast.Tuple)
        ):
            names = [elt.value for elt in node.value.elts if isinstance(elt, ast.Constant)]
        else:
            continue
        for name in names:
            first = name.split(".")[0]
            in_suite = first == "tests" or first == "conftest" or first.startswith("test_")
            shared = name == SHARED or name.startswith(SHARED + ".") or name == "tests"
            if in_suite and not shared:
                found.add((name, node.lineno))
    return found


def test_no_test_module_imports_another():
    wrong = [
        f"{path.relative_to(ROOT)}:{line} imports {name}"
        for path in sorted(TESTS.rglob("*.py"))
        for name, line in sorted(suite_imports(path))
    ]
    assert not wrong, (
        "Share helpers through tests/support and fixtures through conftest.py:\n" + "\n".join(wrong)
    )


def test_the_check_sees_imports_of_test_modules():
    source = (
        "from tests.generation.test_pipeline import run\n"
        "from tests.e2e import BROWSER_TEST\n"
        "from . import conftest\n"
        "from .test_costs import make\n"
        "import conftest\n"
        "from tests.support.factories import make_request\n"
        "from tests import support\n"
        "def f():\n"
        "    from tests.reliability.conftest import helper\n"
        'pytest_plugins = ["tests.support.queue_backends", "tests.huey_tasks.conftest"]\n'
    )
    found = suite_imports(TESTS / "generation" / "test_example.py", source)
    assert found == {
        ("tests.generation.test_pipeline.run", 1),
        ("tests.e2e.BROWSER_TEST", 2),
        ("tests.generation.conftest", 3),
        ("tests.generation.test_costs.make", 4),
        ("conftest", 5),
        ("tests.reliability.conftest.helper", 9),
        ("tests.huey_tasks.conftest", 10),
    }
