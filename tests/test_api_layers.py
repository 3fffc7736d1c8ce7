"""Imports point one way: pages never import the API, and no API view module uses another as a
library (shared pieces live below: models, llm/serializers.py, llm/filters.py, llm/metrics.py,
llm/traces.py, or the shared API modules named here)."""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

pytestmark = pytest.mark.one_database  # reads the source, no database

LLM = Path(__file__).resolve().parent.parent / "llm"
# Modules of llm/api/ that every API view module may import: they hold no view of an endpoint.
SHARED_API_MODULES = {"llm.api.base", "llm.api.pagination", "llm.api.params", "llm.api.errors", "llm.api.parsers"}
PAGES = ["views.py", "dashboard.py", "forms.py"]


def imported_modules(path: Path) -> set[str]:
    """Every module `path` imports, as dotted names (`from llm.api import logs` gives llm.api.logs)."""
    modules = set()
    for node in ast.walk(ast.parse(path.read_text(), filename=str(path))):
        if isinstance(node, ast.Import):
            modules.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            modules.add(node.module)
            modules.update(f"{node.module}.{alias.name}" for alias in node.names)
    return modules


def api_view_modules() -> list[Path]:
    return sorted(
        path
        for path in (LLM / "api").glob("*.py")
        if path.name != "__init__.py" and f"llm.api.{path.stem}" not in SHARED_API_MODULES
    )


def test_the_helper_sees_both_import_forms(tmp_path):
    source = tmp_path / "sample.py"
    source.write_text("import llm.api.logs\nfrom llm.api import metrics\nfrom llm.api.ingest import read_body\n")
    assert {"llm.api.logs", "llm.api.metrics", "llm.api.ingest"} <= imported_modules(source)


def test_there_are_view_modules_to_check():
    names = {path.stem for path in api_view_modules()}
    assert {"logs", "feedback", "metrics", "ingest", "traces", "alerts", "export", "docs", "prompt"} <= names


@pytest.mark.parametrize("path", api_view_modules(), ids=lambda path: path.name)
def test_no_api_view_module_imports_another(path):
    own = f"llm.api.{path.stem}"
    view_modules = {f"llm.api.{other.stem}" for other in api_view_modules()} - {own}
    assert imported_modules(path) & view_modules == set()


@pytest.mark.parametrize("name", PAGES)
def test_pages_import_nothing_from_the_api(name):
    imported = imported_modules(LLM / name)
    assert [module for module in imported if module == "llm.api" or module.startswith("llm.api.")] == []


def test_the_shared_api_modules_import_no_view_module():
    view_modules = {f"llm.api.{path.stem}" for path in api_view_modules()}
    for name in SHARED_API_MODULES:
        path = LLM / "api" / f"{name.rsplit('.', 1)[1]}.py"
        assert imported_modules(path) & view_modules == set(), name


def test_serializers_live_in_one_module():
    # Request and answer shapes are declared in llm/serializers.py, not beside the views.
    homes = set()
    for path in LLM.rglob("*.py"):
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.ClassDef) and node.name.endswith("Serializer"):
                homes.add(path.relative_to(LLM).as_posix())
    assert homes == {"serializers.py"}
