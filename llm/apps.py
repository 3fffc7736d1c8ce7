from django.apps import AppConfig


class LlmConfig(AppConfig):
    name = "llm"
    verbose_name = "LLM Observatory"

    def ready(self) -> None:
        from django.db.backends.signals import connection_created

        from llm import (
            checks,  # noqa: F401 - registers the system checks
            rollups,
        )
        from llm.metrics import register_sqlite_functions
        from llm.models import calls_recorded

        connection_created.connect(register_sqlite_functions, dispatch_uid="llm_sqlite_functions")
        calls_recorded.connect(rollups.after_write, dispatch_uid="llm_rollups_after_write")
