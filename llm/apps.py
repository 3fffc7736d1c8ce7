from django.apps import AppConfig


class LlmConfig(AppConfig):
    name = "llm"
    verbose_name = "LLM Observatory"

    def ready(self) -> None:
        from django.db.backends.signals import connection_created
        from django.db.models.signals import post_migrate

        from llm import (
            checks,  # noqa: F401 - registers the system checks
            rollups,
        )
        from llm.metrics import register_sqlite_functions
        from llm.models import calls_recorded
        from llm.permissions import roles_after_migrate

        connection_created.connect(register_sqlite_functions, dispatch_uid="llm_sqlite_functions")
        calls_recorded.connect(rollups.after_write, dispatch_uid="llm_rollups_after_write")
        # After the auth app's permissions exist (its post_migrate handler is connected first).
        post_migrate.connect(roles_after_migrate, dispatch_uid="llm_roles_after_migrate")
