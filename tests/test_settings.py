"""Settings come from the environment; production mode refuses unsafe defaults."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent


def settings_in_subprocess(env: dict[str, str], expression: str) -> subprocess.CompletedProcess:
    clean_env = {key: value for key, value in os.environ.items() if key not in ("DEBUG", "DJANGO_SECRET_KEY")}
    for name in ("ALLOWED_HOSTS", "DATABASE_URL"):
        clean_env.pop(name, None)
    clean_env.update(env)
    clean_env["DJANGO_SETTINGS_MODULE"] = "core.settings"
    code = f"import django; django.setup(); from django.conf import settings; print({expression})"
    return subprocess.run(
        [sys.executable, "-c", code], cwd=ROOT, env=clean_env, capture_output=True, text=True, timeout=60
    )


def test_defaults_are_debug_on_sqlite():
    result = settings_in_subprocess({}, "settings.DEBUG, settings.DATABASES['default']['ENGINE']")
    assert result.returncode == 0, result.stderr
    assert "True" in result.stdout and "sqlite3" in result.stdout


def test_production_refuses_to_start_without_secret_key():
    result = settings_in_subprocess({"DEBUG": "False", "ALLOWED_HOSTS": "example.com"}, "1")
    assert result.returncode != 0
    assert "DJANGO_SECRET_KEY" in result.stderr


def test_production_refuses_to_start_without_allowed_hosts():
    result = settings_in_subprocess({"DEBUG": "False", "DJANGO_SECRET_KEY": "x" * 50}, "1")
    assert result.returncode != 0
    assert "ALLOWED_HOSTS" in result.stderr


def test_production_sets_secure_cookies_and_headers():
    result = settings_in_subprocess(
        {"DEBUG": "False", "DJANGO_SECRET_KEY": "x" * 50, "ALLOWED_HOSTS": "obs.example.com"},
        "settings.SESSION_COOKIE_SECURE, settings.CSRF_COOKIE_SECURE, settings.SECURE_HSTS_SECONDS > 0,"
        " settings.SECURE_SSL_REDIRECT, settings.ALLOWED_HOSTS",
    )
    assert result.returncode == 0, result.stderr
    assert result.stdout.strip() == "True True True True ['obs.example.com']"


def test_malformed_value_fails_loudly():
    result = settings_in_subprocess({"GROQ_MAX_RETRIES": "lots"}, "1")
    assert result.returncode != 0


def test_database_url_selects_postgresql():
    result = settings_in_subprocess(
        {"DATABASE_URL": "postgres://u:p@127.0.0.1:5999/obs"}, "settings.DATABASES['default']['ENGINE']"
    )
    assert result.returncode == 0, result.stderr
    assert "postgresql" in result.stdout


def test_env_example_lists_every_configuration_setting():
    names = {line.split("=", 1)[0] for line in (ROOT / ".env.example").read_text().splitlines() if "=" in line}
    spec = [
        "DJANGO_SECRET_KEY",
        "DEBUG",
        "ALLOWED_HOSTS",
        "DATABASE_URL",
        "GROQ_API_KEY",
        "GROQ_BASE_URL",
        "GROQ_DEFAULT_MODEL",
        "GROQ_TIMEOUT_SECONDS",
        "GROQ_MAX_RETRIES",
        "EMAIL_URL",
        "DEFAULT_FROM_EMAIL",
        "ALERT_EMAIL_RECIPIENTS",
        "ALERT_WEBHOOK_URL",
        "STORE_PROMPTS",
        "REDACT_PII",
        "MAX_STORED_TEXT_CHARS",
        "RETENTION_DAYS",
        "METRICS_TOKEN",
        "TIME_ZONE",
    ]
    assert set(spec) <= {name.lstrip("# ").strip() for name in names}
