"""PostgreSQL-only covering indexes of the log table (INCLUDE the columns an alert rule reads), for
migrations 0027 and 0029; the migration loader skips this module (its name starts with "_")."""

TABLE = "llm_llmrequestlog"
RULE_COLUMNS = "status, error_type, total_tokens, cost_estimate, latency_ms, ttft_ms"


def build(definitions: dict[str, str]):
    """A RunPython step that makes each named index `CREATE INDEX name ON table <columns>` on
    PostgreSQL (dropping the one of that name first) and does nothing elsewhere."""

    def run(apps, schema_editor) -> None:
        if schema_editor.connection.vendor != "postgresql":
            return
        for name, columns in definitions.items():
            schema_editor.execute(f"DROP INDEX IF EXISTS {name}")
            schema_editor.execute(f"CREATE INDEX {name} ON {TABLE} {columns}")

    return run
