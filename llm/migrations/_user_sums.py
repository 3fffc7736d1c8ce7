"""PostgreSQL-only covering indexes of the daily user roll-ups for migration 0033: the columns the
top users sum (llm.metrics.ranked_users_from_rollups) INCLUDEd, so a window's daily user rows are
read from the index alone rather than from the table, whose rows also hold a latency histogram
(~1 kB a row); the migration loader skips this module (its name starts with "_")."""

# name: (table, key columns: what the window's read filters on, INCLUDEd columns: what it sums).
INDEXES = {
    "llm_dailyusertotals_day_sums": (
        "llm_dailyusertotals",
        ("day",),
        ("user_id", "requests", "errors", "total_tokens", "cost_units"),
    ),
    "llm_dailyuser_model_day_sums": (
        "llm_dailyuserrollup",
        ("model_name", "day"),
        ("user_id", "status", "requests", "total_tokens", "cost_units"),
    ),
}


def columns_of(name: str) -> set[str]:
    """Every column the index `name` holds, key and INCLUDEd."""
    _table, key, included = INDEXES[name]
    return {*key, *included}


def create(apps, schema_editor) -> None:
    if schema_editor.connection.vendor != "postgresql":
        return  # SQLite has no INCLUDE; its (day, ...) unique indexes serve the read
    for name, (table, key, included) in INDEXES.items():
        schema_editor.execute(
            f"CREATE INDEX IF NOT EXISTS {name} ON {table} ({', '.join(key)}) INCLUDE ({', '.join(included)})"
        )


def drop(apps, schema_editor) -> None:
    if schema_editor.connection.vendor != "postgresql":
        return
    for name in INDEXES:
        schema_editor.execute(f"DROP INDEX IF EXISTS {name}")
