"""The templates as files: short lines, and one home for the scroll box around tables and for the chart scripts."""

from __future__ import annotations

from pathlib import Path

import pytest
from django.template import Context, Template, TemplateSyntaxError

pytestmark = pytest.mark.one_database  # reads the templates, no database

TEMPLATES = Path(__file__).resolve().parent.parent / "templates"
MAX_LINE_LENGTH = 120  # as ruff's line-length for the Python code


def template_files() -> list[Path]:
    files = sorted(TEMPLATES.rglob("*.html"))
    assert len(files) > 10  # the glob found the templates folder
    return files


def test_no_template_line_is_longer_than_120_characters():
    long_lines = [
        f"{path.relative_to(TEMPLATES)}:{number}: {len(line)} characters"
        for path in template_files()
        for number, line in enumerate(path.read_text(encoding="utf-8").splitlines(), start=1)
        if len(line) > MAX_LINE_LENGTH
    ]
    assert long_lines == []


@pytest.mark.parametrize(
    ("markup", "home"),
    [
        ("table-wrap", "llm/templatetags/dashboard.py (the scroll_table tag)"),
        ("chart.umd", "templates/dashboard/_chart_scripts.html"),
        ('json_script:"chart-data"', "templates/dashboard/_chart_scripts.html"),
    ],
)
def test_repeated_markup_has_one_home(markup, home):
    written_in = [
        str(path.relative_to(TEMPLATES)) for path in template_files() if markup in path.read_text(encoding="utf-8")
    ]
    expected = [] if home.startswith("llm/") else [home.removeprefix("templates/")]
    assert written_in == expected, f"{markup!r} belongs in {home}"


def render(source: str, **context) -> str:
    return Template("{% load dashboard %}" + source).render(Context(context))


def test_scroll_table_wraps_the_table_in_a_focusable_named_region():
    html = render(
        '{% scroll_table "Alert rules" %}<table><tr><td>{{ cell }}</td></tr></table>{% endscroll_table %}', cell="<b>"
    )
    assert html == (
        '<div class="table-wrap" tabindex="0" role="region" aria-label="Alert rules">'
        "<table><tr><td>&lt;b&gt;</td></tr></table></div>"
    )


def test_scroll_table_takes_its_label_from_a_variable_and_escapes_it():
    html = render("{% scroll_table label %}<table></table>{% endscroll_table %}", label='Users "top" & <more>')
    assert 'aria-label="Users &quot;top&quot; &amp; &lt;more&gt;"' in html


@pytest.mark.parametrize("tag", ["{% scroll_table %}", '{% scroll_table "a" "b" %}'])
def test_scroll_table_needs_exactly_one_label(tag):
    with pytest.raises(TemplateSyntaxError, match="one argument"):
        render(tag + "<table></table>{% endscroll_table %}")
