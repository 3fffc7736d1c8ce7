from django.apps import AppConfig


class LlmConfig(AppConfig):
    name = "llm"
    verbose_name = "LLM Observatory"

    def ready(self) -> None:
        from django.db.backends.signals import connection_created

        from llm import checks  # noqa: F401 - registers the system checks
        from llm.metrics import register_sqlite_functions

        connection_created.connect(register_sqlite_functions, dispatch_uid="llm_sqlite_functions")
