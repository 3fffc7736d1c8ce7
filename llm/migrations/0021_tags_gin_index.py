"""On PostgreSQL, a GIN index on `tags` for the `tag` filter (logs, metrics, export, breakdowns,
sessions, users).

`tag=key:value` is `tags @> '{"key": "value"}'` and `tag=key` is `tags ? 'key'` there
(llm.filters.tag_condition); the default jsonb_ops class answers both, so a rare tag is found
without reading its whole window. SQLite has no such index: its tag filter reads the window's rows.
"""

from django.db import migrations

CREATE = "CREATE INDEX IF NOT EXISTS llm_log_tags_gin ON llm_llmrequestlog USING gin (tags)"
DROP = "DROP INDEX IF EXISTS llm_log_tags_gin"


def create_tags_index(apps, schema_editor):
    if schema_editor.connection.vendor == "postgresql":
        schema_editor.execute(CREATE)


def drop_tags_index(apps, schema_editor):
    if schema_editor.connection.vendor == "postgresql":
        schema_editor.execute(DROP)


class Migration(migrations.Migration):
    dependencies = [
        ("llm", "0020_alert_rule_error_types"),
    ]

    operations = [
        migrations.RunPython(create_tags_index, drop_tags_index, elidable=False),
    ]
