"""On SQLite, two partial indexes over the tagged calls only, for the analytics page's tag keys
(metrics.breakdown_tag_keys: the window's newest 2,000 tagged calls, of all models or of one).

Without them, a window whose calls are mostly untagged is read whole, newest first, to find its
tagged ones: at 1,000,000 calls none tagged, 90 days cost ~435 ms of all models (~150 of one) of
the page's ~470. With them: under 1 ms. The condition is the query's own (`NOT (tags = '{}')`), so
the planner uses them; they hold one entry per tagged call, none for the others. PostgreSQL keeps
its plans (its GIN index on tags, the model index for one model: tests/test_breakdown_tag_keys.py).
"""

from django.db import migrations

INDEXES = {
    "llm_log_tagged_time": "timestamp",
    "llm_log_tagged_model_time": "model_name, timestamp",
}


def create_tagged_indexes(apps, schema_editor):
    if schema_editor.connection.vendor == "sqlite":
        for name, columns in INDEXES.items():
            schema_editor.execute(
                f"CREATE INDEX IF NOT EXISTS {name} ON llm_llmrequestlog ({columns}) WHERE NOT (tags = '{{}}')"
            )


def drop_tagged_indexes(apps, schema_editor):
    if schema_editor.connection.vendor == "sqlite":
        for name in INDEXES:
            schema_editor.execute(f"DROP INDEX IF EXISTS {name}")


class Migration(migrations.Migration):
    dependencies = [
        ("llm", "0037_search_text_index"),
    ]

    operations = [
        migrations.RunPython(create_tagged_indexes, drop_tagged_indexes, elidable=False),
    ]
