"""The `session_id` filter's index, and on PostgreSQL trigram indexes for `search`.

`search` is `icontains` on the prompt and the response, which Django writes as
`UPPER(prompt_text::text) LIKE UPPER('%…%')`: no b-tree helps, so without these a search reads
every row of its window. A GIN index with pg_trgm's `gin_trgm_ops` over `UPPER(…)` answers that
LIKE directly (for search text of 3 characters or more). It needs the pg_trgm extension, which
only a superuser (or, from PostgreSQL 13, a database owner: pg_trgm is a trusted extension) may
create: when this database user may not, the migration skips the indexes with a warning, and the
system check llm.W003 says what to run (searches still work, without the index).
SQLite has no such index: its search stays bounded by the time window.
"""

import sys

from django.db import DatabaseError, migrations, models, transaction

TRIGRAM_INDEXES = {
    "llm_log_prompt_trgm": "prompt_text",
    "llm_log_response_trgm": "response_text",
}


def create_trigram_indexes(apps, schema_editor):
    connection = schema_editor.connection
    if connection.vendor != "postgresql":
        return
    with connection.cursor() as cursor:
        try:
            with transaction.atomic(using=connection.alias):
                cursor.execute("CREATE EXTENSION IF NOT EXISTS pg_trgm")
        except DatabaseError as error:
            sys.stderr.write(
                f"\nWarning: the search indexes were not created: this database user may not create the "
                f"pg_trgm extension ({str(error).strip()}). Searches still work, reading every row of their "
                f"window. See `manage.py check --database default` (llm.W003) for what to run.\n"
            )
            return
        for name, column in TRIGRAM_INDEXES.items():
            cursor.execute(
                f"CREATE INDEX IF NOT EXISTS {name} ON llm_llmrequestlog USING gin (UPPER({column}) gin_trgm_ops)"
            )


def drop_trigram_indexes(apps, schema_editor):
    if schema_editor.connection.vendor != "postgresql":
        return
    with schema_editor.connection.cursor() as cursor:
        for name in TRIGRAM_INDEXES:
            cursor.execute(f"DROP INDEX IF EXISTS {name}")


class Migration(migrations.Migration):
    dependencies = [
        ("llm", "0007_alert_channels"),
    ]

    operations = [
        migrations.AddIndex(
            model_name="llmrequestlog",
            index=models.Index(fields=["session_id", "timestamp"], name="llm_log_session_time"),
        ),
        migrations.RunPython(create_trigram_indexes, drop_trigram_indexes, elidable=False),
    ]
