"""On PostgreSQL, the (user_id, timestamp) index also carries the columns an alert rule reads
(INCLUDE): the rule preview grouped by user then reads a month of calls from the index alone,
already in group order (llm.metrics.bucketed_figures). Same name and key columns as
LLMRequestLog.Meta declares, so the model state is unchanged; SQLite has no INCLUDE (Django would
warn, models.W040), so it keeps the plain index. The model index gets the same columns where it is
made again (0029_model_time_user_index). Rebuilding both took 32 s for 1.1 million calls on the
shared 2-core machine (load 14); writes to the log table wait meanwhile.
"""

from django.db import migrations

from llm.migrations import _covering

COVERING = {"llm_log_user_time": f"(user_id, timestamp) INCLUDE (model_name, {_covering.RULE_COLUMNS})"}
PLAIN = {"llm_log_user_time": "(user_id, timestamp)"}


class Migration(migrations.Migration):
    dependencies = [
        ("llm", "0026_budget_channels"),
    ]

    operations = [migrations.RunPython(_covering.build(COVERING), _covering.build(PLAIN))]
