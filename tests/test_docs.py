"""The README and docs/ stay navigable and true: every relative link (and heading anchor) resolves,
the README stays a short front page, and the names it gives (settings, commands) exist."""

from __future__ import annotations

import re
from pathlib import Path

import pytest
from django.conf import settings
from django.core.management import get_commands

pytestmark = pytest.mark.one_database  # reads the docs, no database

ROOT = Path(settings.BASE_DIR)
README = ROOT / "README.md"
DOCS = sorted((ROOT / "docs").glob("*.md"))
SDK_README = ROOT / "sdk" / "README.md"
README_MAX_LINES = 250

FENCED_CODE = re.compile(r"^(```|~~~).*?^\1", re.MULTILINE | re.DOTALL)
HTML_COMMENT = re.compile(r"<!--.*?-->", re.DOTALL)
INLINE_CODE = re.compile(r"`[^`\n]*`")
# [text](target) and ![alt](target); an optional "title" after the target is ignored.
LINK = re.compile(r"!?\[[^\]]*\]\(\s*<?([^)\s>]+)>?(?:\s+\"[^\"]*\")?\s*\)")
HEADING = re.compile(r"^#{1,6}\s+(.+?)\s*#*\s*$", re.MULTILINE)


def prose(markdown: str) -> str:
    """The text a reader sees as Markdown: code blocks and comments hold no links or headings."""
    return HTML_COMMENT.sub("", FENCED_CODE.sub("", markdown))


def heading_anchors(markdown: str) -> set[str]:
    """Anchors GitHub gives the headings: lower case, punctuation dropped, spaces to hyphens, and
    -1, -2, … on repeats."""
    anchors: set[str] = set()
    seen: dict[str, int] = {}
    for heading in HEADING.findall(prose(markdown)):
        slug = re.sub(r"[^\w\- ]", "", heading.replace("`", "").strip().lower()).replace(" ", "-")
        count = seen.get(slug, 0)
        seen[slug] = count + 1
        anchors.add(slug if count == 0 else f"{slug}-{count}")
    return anchors


def broken_links(page: Path) -> list[str]:
    """Each relative link of `page` whose file, or whose heading anchor, does not exist."""
    problems = []
    for target in LINK.findall(INLINE_CODE.sub("", prose(page.read_text()))):
        if re.match(r"^[a-z][a-z0-9+.-]*:", target, re.IGNORECASE):
            continue  # http:, https:, mailto: … are not files of this repository
        path_part, _, anchor = target.partition("#")
        linked = (page.parent / path_part).resolve() if path_part else page
        if not linked.exists():
            problems.append(f"{page.name}: {target} (no such file)")
        elif anchor and linked.suffix == ".md" and anchor not in heading_anchors(linked.read_text()):
            problems.append(f"{page.name}: {target} (no such heading in {linked.name})")
    return problems


def test_docs_pages_exist():
    names = {page.name for page in DOCS}
    expected = {"api.md", "ingest.md", "alerts.md", "prometheus.md", "configuration.md", "deployment.md"}
    assert expected | {"benchmarks.md", "development.md"} <= names


@pytest.mark.parametrize("page", [README, *DOCS, SDK_README], ids=lambda page: page.relative_to(ROOT).as_posix())
def test_every_relative_link_resolves(page):
    assert broken_links(page) == []


def test_link_checker_finds_missing_files_and_anchors(tmp_path):
    (tmp_path / "other.md").write_text("# Other page\n\n## The `GET /metrics` part\n\n## Repeat\n\n## Repeat\n")
    (tmp_path / "image.png").write_bytes(b"")
    page = tmp_path / "page.md"
    page.write_text(
        "# Page\n\n## Local heading\n\n"
        "[ok](other.md) [ok](other.md#the-get-metrics-part) [ok](other.md#repeat-1) [ok](#local-heading)\n"
        "![ok](image.png) [outside](https://example.com/missing.md) `[in code](gone.md)`\n"
        "[gone](gone.md) [bad anchor](other.md#nowhere) [bad local](#elsewhere)\n\n"
        "```sh\n# not a heading\n[in a code block](gone-too.md)\n```\n"
        "<!-- [in a comment](gone-as-well.md) -->\n"
    )
    assert broken_links(page) == [
        "page.md: gone.md (no such file)",
        "page.md: other.md#nowhere (no such heading in other.md)",
        "page.md: #elsewhere (no such heading in page.md)",
    ]


def test_readme_is_a_short_front_page():
    text = README.read_text()
    assert len(text.splitlines()) < README_MAX_LINES
    assert "make run" in text and "make test" in text
    makefile_targets = set(re.findall(r"^([a-z-]+):", (ROOT / "Makefile").read_text(), re.MULTILINE))
    assert {"run", "test"} <= makefile_targets


def test_readme_links_every_docs_page():
    linked = {Path(target.partition("#")[0]).name for target in LINK.findall(prose(README.read_text()))}
    assert {page.name for page in DOCS} <= linked


def test_configuration_page_names_every_setting_of_env_example():
    example = (ROOT / ".env.example").read_text()
    variables = re.findall(r"^(?:# )?([A-Z][A-Z0-9_]*)=", example, re.MULTILINE)
    assert len(variables) > 15
    configuration = (ROOT / "docs" / "configuration.md").read_text()
    first_cells = [line.split("|")[1] for line in configuration.splitlines() if line.startswith("| ")]
    missing = [name for name in variables if not any(f"`{name}`" in cell for cell in first_cells)]
    assert missing == []


def test_management_commands_named_in_the_docs_exist():
    commands = set(get_commands())
    named = set()
    for page in [README, *DOCS]:
        named |= set(re.findall(r"manage\.py ([a-z_]+)", page.read_text()))
    assert {"check_alerts", "create_api_key", "generate_sample_data", "purge_logs"} <= named
    assert named - commands == set()
