"""Settings come from the environment and an optional .env; an empty value means the default; a bad
value stops the start naming the variable and the fix; production mode refuses unsafe defaults; the
suite itself ignores the developer's .env and shell.

Settings are built in subprocesses with a clean, explicit environment (tests/checkout.py), one
subprocess for a whole table of cases where possible.
"""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys

import pytest
from django.conf import settings as django_settings
from django.core.exceptions import ImproperlyConfigured
from django.core.mail import send_mail

from core import settings as settings_module
from core.environment import Environment, email_settings
from core.settings import DEVELOPMENT_SECRET_KEY
from tests.checkout import ROOT, clean_environment, clone_checkout

PRODUCTION = {"DEBUG": "False", "DJANGO_SECRET_KEY": "k" * 25 + "ey" * 20, "ALLOWED_HOSTS": "obs.example.com"}

# Builds core/settings.py once per case, each in a fresh namespace with the case's variables, and
# answers per case either {"error": message} or {"settings": {name: repr(value)}}.
SETTINGS_SCRIPT = """
import json, os, runpy, sys
from django.core.exceptions import ImproperlyConfigured
request = json.loads(sys.stdin.read())
base = dict(os.environ)
answers = {}
for name, variables in request["cases"].items():
    os.environ.clear()
    os.environ.update(base)
    os.environ.update(variables)
    try:
        namespace = runpy.run_path("core/settings.py")
    except ImproperlyConfigured as error:
        answers[name] = {"error": str(error)}
        continue
    answers[name] = {"settings": {key: repr(eval(key, namespace)) for key in request["show"]}}
    answers[name]["read"] = sorted(namespace["env"].defaults)
print(json.dumps(answers))
"""


def build_settings(cases: dict[str, dict[str, str]], show: list[str] = ()) -> dict[str, dict]:
    """Each case's settings, from a clean environment: no .env file, nothing from this shell."""
    result = subprocess.run(
        [sys.executable, "-c", SETTINGS_SCRIPT],
        input=json.dumps({"cases": cases, "show": list(show)}),
        cwd=ROOT,
        env=clean_environment(OBSERVATORY_ENV_FILE=""),
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert result.returncode == 0, result.stderr
    return json.loads(result.stdout)


def settings_of(variables: dict[str, str], *names: str) -> dict[str, str]:
    answer = build_settings({"case": variables}, names)["case"]
    assert "error" not in answer, answer
    return answer["settings"]


def env_example_lines() -> list[str]:
    return (ROOT / ".env.example").read_text().splitlines()


def env_example_names(lines: list[str] | None = None) -> dict[str, bool]:
    """Each variable in .env.example -> whether its line is commented out."""
    names = {}
    for line in env_example_lines() if lines is None else lines:
        match = re.match(r"^(# )?([A-Z][A-Z0-9_]*)=", line)
        if match:
            names[match.group(2)] = bool(match.group(1))
    return names


def test_defaults_are_debug_on_sqlite_with_console_mail():
    values = settings_of(
        {}, "DEBUG", "DATABASES['default']['ENGINE']", "SECRET_KEY", "EMAIL_BACKEND", "SITE_URL", "GROQ_API_KEY"
    )
    assert values == {
        "DEBUG": "True",
        "DATABASES['default']['ENGINE']": "'django.db.backends.sqlite3'",
        "SECRET_KEY": repr(DEVELOPMENT_SECRET_KEY),
        "EMAIL_BACKEND": "'django.core.mail.backends.console.EmailBackend'",
        # Empty: links in alert notices follow the address the dashboard is served at.
        "SITE_URL": "''",
        "GROQ_API_KEY": "''",
    }


def test_an_empty_value_means_the_default_for_every_variable():
    """`DATABASE_URL=` once gave `KeyError: 'ENGINE'`, `DJANGO_SECRET_KEY=` a 500 on every page."""
    answers = build_settings(
        {
            "unset": {},
            "empty": dict.fromkeys(env_example_names(), ""),
            "blank": dict.fromkeys(env_example_names(), " "),
        },
        ["{k: v for k, v in globals().items() if k.isupper() and k != 'ENV_FILE_NAMES'}"],
    )
    assert "error" not in answers["empty"], answers["empty"]
    assert answers["empty"]["settings"] == answers["unset"]["settings"]
    assert answers["blank"]["settings"] == answers["unset"]["settings"]


def test_a_dotenv_copied_from_the_example_starts_in_development(tmp_path):
    (tmp_path / ".env").write_text((ROOT / ".env.example").read_text())
    answer = build_settings({"copied": {"OBSERVATORY_ENV_FILE": str(tmp_path / ".env")}}, ["DEBUG", "SECRET_KEY"])
    assert answer["copied"]["settings"] == {"DEBUG": "True", "SECRET_KEY": repr(DEVELOPMENT_SECRET_KEY)}


def test_dotenv_values_apply_and_the_environment_wins_over_them(tmp_path):
    (tmp_path / ".env").write_text("GROQ_DEFAULT_MODEL=qwen/qwen3-32b\nRETENTION_DAYS=30\nTIME_ZONE='Europe/Paris'\n")
    values = settings_of(
        {"OBSERVATORY_ENV_FILE": str(tmp_path / ".env"), "RETENTION_DAYS": "7"},
        "GROQ_DEFAULT_MODEL",
        "RETENTION_DAYS",
        "TIME_ZONE",
    )
    assert values == {"GROQ_DEFAULT_MODEL": "'qwen/qwen3-32b'", "RETENTION_DAYS": "7", "TIME_ZONE": "'Europe/Paris'"}


def test_values_are_parsed_strictly_but_kindly():
    values = settings_of(
        {
            "STORE_PROMPTS": "no",
            "REDACT_PII": "ON",
            "GROQ_TIMEOUT_SECONDS": " 2.5 ",
            "ALLOWED_HOSTS": " a.example.com , b.example.com,",
            "LOG_LEVEL": "warning",
            # Taken literally: django-environ alone reads "$x" as "the value of variable x".
            "DJANGO_SECRET_KEY": "$starts-with-a-dollar",
            "ROLLUP_TAG_KEYS": " feature , team,feature,",
        },
        "STORE_PROMPTS",
        "REDACT_PII",
        "GROQ_TIMEOUT_SECONDS",
        "ALLOWED_HOSTS",
        "LOGGING['root']['level']",
        "SECRET_KEY",
        "ROLLUP_TAG_KEYS",
    )
    assert values == {
        "STORE_PROMPTS": "False",
        "REDACT_PII": "True",
        "GROQ_TIMEOUT_SECONDS": "2.5",
        "ALLOWED_HOSTS": "['a.example.com', 'b.example.com']",
        "LOGGING['root']['level']": "'WARNING'",
        "SECRET_KEY": "'$starts-with-a-dollar'",
        "ROLLUP_TAG_KEYS": "['feature', 'team']",
    }


# (variables, what the message must say besides the variable's name)
BAD_SETTINGS = {
    "bool": ({"DEBUG": "maybe"}, "True or False"),
    "misspelled bool": ({"STORE_PROMPTS": "Flase"}, "True or False"),
    "int": ({"GROQ_MAX_RETRIES": "lots"}, "whole number"),
    "float int": ({"CONN_MAX_AGE": "1.5"}, "whole number"),
    "negative retries": ({"GROQ_MAX_RETRIES": "-1"}, "at least 0"),
    "float": ({"GROQ_TIMEOUT_SECONDS": "10s"}, "a number"),
    "not a number": ({"GROQ_TIMEOUT_SECONDS": "nan"}, "a number"),
    "negative timeout": ({"GROQ_TIMEOUT_SECONDS": "-5"}, "more than 0"),
    "zero mail timeout": ({"EMAIL_TIMEOUT": "0"}, "more than 0"),
    "negative webhook timeout": ({"ALERT_WEBHOOK_TIMEOUT_SECONDS": "-1"}, "more than 0"),
    "no webhook tries": ({"ALERT_WEBHOOK_TRIES": "0"}, "at least 1"),
    "negative webhook retry delay": ({"ALERT_WEBHOOK_RETRY_DELAY_SECONDS": "-1"}, "at least 0"),
    "negative connection age": ({"CONN_MAX_AGE": "-1"}, "at least 0"),
    "negative hsts": ({"SECURE_HSTS_SECONDS": "-1"}, "at least 0"),
    "retention": ({"RETENTION_DAYS": "0"}, "at least 1"),
    "text cap": ({"MAX_STORED_TEXT_CHARS": "-1"}, "at least 0"),
    "port": ({"EMAIL_PORT": "70000"}, "at most 65535"),
    "database garbage": ({"DATABASE_URL": "bogus"}, "postgres://"),
    "database engine": ({"DATABASE_URL": "mysql://u@h/db"}, "SQLite or PostgreSQL"),
    "database port": ({"DATABASE_URL": "postgres://u:hunter2@h:port/db"}, "not a database URL"),
    "database name": ({"DATABASE_URL": "postgres://u@h:5432"}, "names no database"),
    "mail url": ({"EMAIL_URL": "mail.example.com"}, "smtp://"),
    "tls and ssl": ({"EMAIL_USE_TLS": "True", "EMAIL_USE_SSL": "True"}, "one or the other"),
    "groq url": ({"GROQ_BASE_URL": "api.groq.com"}, "http:// or https://"),
    "site url": ({"SITE_URL": "observatory.example.com"}, "http:// or https://"),
    "webhook url": ({"ALERT_WEBHOOK_URL": "hooks.example.com/x"}, "http:// or https://"),
    "csrf origin": ({"CSRF_TRUSTED_ORIGINS": "https://a.example.com,b.example.com"}, "with its scheme"),
    "time zone": ({"TIME_ZONE": "Mars/Olympus_Mons"}, "time zone name"),
    "log level": ({"LOG_LEVEL": "loud"}, "DEBUG, INFO, WARNING, ERROR, CRITICAL"),
    "rollup tag key": ({"ROLLUP_TAG_KEYS": "feature," + "k" * 101}, "not a name of 1 to 100 characters"),
    "env file": ({"OBSERVATORY_ENV_FILE": "/nonexistent/.env"}, "no such file"),
    "production without secret key": ({"DEBUG": "False", "ALLOWED_HOSTS": "obs.example.com"}, "token_urlsafe"),
    "production with the development key": (
        {**PRODUCTION, "DJANGO_SECRET_KEY": DEVELOPMENT_SECRET_KEY},
        "must be set when DEBUG=False",
    ),
    "production without allowed hosts": ({**PRODUCTION, "ALLOWED_HOSTS": ""}, "ALLOWED_HOSTS=obs"),
}
EXPECTED_NAME = {
    "production without secret key": "DJANGO_SECRET_KEY",
    "production with the development key": "DJANGO_SECRET_KEY",
    "production without allowed hosts": "ALLOWED_HOSTS",
    "tls and ssl": "EMAIL_USE_SSL",
    "env file": "OBSERVATORY_ENV_FILE",
}


@pytest.fixture(scope="module")
def bad_setting_errors() -> dict[str, dict]:
    return build_settings({case: variables for case, (variables, _) in BAD_SETTINGS.items()})


@pytest.mark.parametrize("case", BAD_SETTINGS)
def test_a_bad_value_stops_the_start_naming_the_variable_and_the_fix(case, bad_setting_errors):
    variables, explanation = BAD_SETTINGS[case]
    message = bad_setting_errors[case].get("error")
    assert message is not None, f"{variables} was accepted"
    assert EXPECTED_NAME.get(case, next(iter(variables))) in message
    assert explanation in message
    if case not in EXPECTED_NAME:
        assert "remove the line (or leave it empty) to use the default" in message
    assert "hunter2" not in message, "passwords are not echoed"


@pytest.mark.one_database  # subprocesses with a clean environment: SQLite whatever the suite uses
def test_manage_py_check_shows_where_a_bad_value_was_set(tmp_path):
    (tmp_path / "my.env").write_text("DEBUG=yes please\n")
    result = subprocess.run(
        [sys.executable, "manage.py", "check"],
        cwd=ROOT,
        env=clean_environment(OBSERVATORY_ENV_FILE=str(tmp_path / "my.env")),
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert result.returncode != 0
    assert f"ImproperlyConfigured: DEBUG='yes please' (in {tmp_path / 'my.env'}) is not True or False" in result.stderr


@pytest.mark.one_database  # subprocesses with a clean environment: SQLite whatever the suite uses
def test_manage_py_check_on_sqlite_warns_of_what_to_act_on_only(tmp_path):
    """SQLite cannot hold the roll-ups' covering indexes' extra columns (Django's models.W040, true
    of every SQLite database, checked with the database as `migrate` does): not shown. A missing
    GROQ_API_KEY still is."""
    result = subprocess.run(
        [sys.executable, "manage.py", "check", "--database", "default"],
        cwd=ROOT,
        env=clean_environment(OBSERVATORY_ENV_FILE="", DATABASE_URL=f"sqlite:///{tmp_path / 'db.sqlite3'}"),
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert result.returncode == 0, result.stderr
    assert "models.W040" not in result.stderr
    assert "(llm.W001) GROQ_API_KEY is not set" in result.stderr
    assert "System check identified 1 issue (2 silenced)." in result.stderr


def test_production_sets_secure_cookies_and_headers():
    values = settings_of(
        PRODUCTION,
        "SESSION_COOKIE_SECURE",
        "CSRF_COOKIE_SECURE",
        "SECURE_HSTS_SECONDS",
        "SECURE_HSTS_INCLUDE_SUBDOMAINS",
        "SECURE_HSTS_PRELOAD",
        "SECURE_SSL_REDIRECT",
        "ALLOWED_HOSTS",
    )
    assert values == {
        "SESSION_COOKIE_SECURE": "True",
        "CSRF_COOKIE_SECURE": "True",
        "SECURE_HSTS_SECONDS": str(60 * 60 * 24 * 30),
        "SECURE_HSTS_INCLUDE_SUBDOMAINS": "True",
        "SECURE_HSTS_PRELOAD": "True",
        "SECURE_SSL_REDIRECT": "True",
        "ALLOWED_HOSTS": "['obs.example.com']",
    }
    # Behind a proxy that already redirects to HTTPS, the redirect can be turned off.
    assert settings_of({**PRODUCTION, "SECURE_SSL_REDIRECT": "False"}, "SECURE_SSL_REDIRECT") == {
        "SECURE_SSL_REDIRECT": "False"
    }


def test_database_url_selects_postgresql():
    values = settings_of({"DATABASE_URL": "postgres://u:p@127.0.0.1:5999/obs"}, "DATABASES['default']['ENGINE']")
    assert values == {"DATABASES['default']['ENGINE']": "'django.db.backends.postgresql'"}


# .env.example holds to what the settings read.


def test_env_example_lists_every_variable_the_settings_read():
    answers = build_settings({"development": {}, "production": PRODUCTION})
    read = set(answers["development"]["read"]) | set(answers["production"]["read"])
    assert len(read) > 30
    assert set(env_example_names()) == read


def test_env_example_explains_each_variable_and_leaves_optional_ones_commented_out():
    lines = env_example_lines()
    for number, line in enumerate(lines):
        if not re.match(r"^(# )?[A-Z][A-Z0-9_]*=", line):
            continue
        # Above each variable (or the group it belongs to), a comment that says what it is.
        above = number - 1
        while above >= 0 and re.match(r"^(# )?[A-Z][A-Z0-9_]*=", lines[above]):
            above -= 1
        assert above >= 0 and lines[above].startswith("# "), f"no comment above {line!r}"
    uncommented = {name for name, commented in env_example_names().items() if not commented}
    # The one line the README asks a new user to fill in.
    assert uncommented == {"GROQ_API_KEY"}


# Email: EMAIL_URL, else Django's EMAIL_HOST family, else the console.


SMTP = "django.core.mail.backends.smtp.EmailBackend"
CONSOLE = "django.core.mail.backends.console.EmailBackend"


@pytest.mark.parametrize(
    ("variables", "expected"),
    [
        ({}, {"EMAIL_BACKEND": CONSOLE, "EMAIL_TIMEOUT": 10.0}),
        (
            {"EMAIL_HOST": "smtp.example.com", "EMAIL_HOST_USER": "me", "EMAIL_HOST_PASSWORD": "pw"},
            {
                "EMAIL_BACKEND": SMTP,
                "EMAIL_HOST": "smtp.example.com",
                "EMAIL_PORT": 25,
                "EMAIL_HOST_USER": "me",
                "EMAIL_HOST_PASSWORD": "pw",
                "EMAIL_USE_TLS": False,
            },
        ),
        (
            {"EMAIL_HOST": "smtp.example.com", "EMAIL_USE_TLS": "True"},
            {"EMAIL_BACKEND": SMTP, "EMAIL_PORT": 587, "EMAIL_USE_TLS": True},
        ),
        (
            {"EMAIL_HOST": "smtp.example.com", "EMAIL_USE_SSL": "yes"},
            {"EMAIL_BACKEND": SMTP, "EMAIL_PORT": 465, "EMAIL_USE_SSL": True},
        ),
        ({"EMAIL_HOST": "smtp.example.com", "EMAIL_PORT": "2525"}, {"EMAIL_BACKEND": SMTP, "EMAIL_PORT": 2525}),
        # EMAIL_URL wins over the EMAIL_HOST family.
        (
            {"EMAIL_URL": "smtp+tls://u:p@mail.example.com:587", "EMAIL_HOST": "ignored.example.com"},
            {"EMAIL_BACKEND": SMTP, "EMAIL_HOST": "mail.example.com", "EMAIL_PORT": 587, "EMAIL_USE_TLS": True},
        ),
        (
            {"EMAIL_URL": "consolemail://", "EMAIL_HOST": "ignored.example.com"},
            {"EMAIL_BACKEND": CONSOLE, "EMAIL_HOST": None},
        ),
        ({"EMAIL_TIMEOUT": "2.5"}, {"EMAIL_TIMEOUT": 2.5}),
    ],
)
def test_email_settings(variables, expected):
    config = email_settings(Environment(variables))
    assert {name: config.get(name) for name in expected} == expected


def test_email_host_settings_deliver_to_a_real_smtp_server(smtp_server_session, settings):
    config = email_settings(Environment({"EMAIL_HOST": "127.0.0.1", "EMAIL_PORT": str(smtp_server_session.port)}))
    smtp_server_session.reset()
    for name, value in config.items():
        setattr(settings, name, value)
    send_mail("Hello", "From the EMAIL_HOST settings.", "alerts@observatory.test", ["oncall@example.com"])
    assert [message["Subject"] for message in smtp_server_session.messages] == ["Hello"]
    assert smtp_server_session.envelopes == [("alerts@observatory.test", ["oncall@example.com"])]


SEND_MAIL = (
    "import django; django.setup(); from django.core.mail import send_mail; "
    "send_mail('From a subprocess', 'body', 'alerts@observatory.test', ['oncall@example.com'])"
)


@pytest.mark.parametrize(
    "variables",
    [
        pytest.param({"EMAIL_HOST": "127.0.0.1", "EMAIL_PORT": "{port}"}, id="EMAIL_HOST"),
        # EMAIL_URL wins: the EMAIL_HOST beside it does not exist.
        pytest.param({"EMAIL_URL": "smtp://127.0.0.1:{port}", "EMAIL_HOST": "nowhere.invalid"}, id="EMAIL_URL"),
    ],
)
@pytest.mark.one_database  # subprocesses with a clean environment: SQLite whatever the suite uses
def test_settings_send_mail_through_the_configured_server(variables, smtp_server_session):
    smtp_server_session.reset()
    port = str(smtp_server_session.port)
    result = subprocess.run(
        [sys.executable, "-c", SEND_MAIL],
        cwd=ROOT,
        env=clean_environment(
            OBSERVATORY_ENV_FILE="",
            DJANGO_SETTINGS_MODULE="core.settings",
            **{name: value.format(port=port) for name, value in variables.items()},
        ),
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert result.returncode == 0, result.stderr
    assert [message["Subject"] for message in smtp_server_session.messages] == ["From a subprocess"]


def test_environment_reports_a_missing_required_value():
    with pytest.raises(ImproperlyConfigured, match="REQUIRED_THING must be set"):
        Environment({"REQUIRED_THING": ""}).str("REQUIRED_THING")


# The suite itself: independent of the developer's .env and shell.


@pytest.mark.django_db
def test_suite_reads_no_dotenv_nor_shell_settings(django_user_model):
    """Runs in every suite run, and below in a clone with a hostile .env and shell."""
    # As read (pytest-django turns settings.DEBUG off while tests run).
    assert settings_module.DEBUG is True
    assert django_settings.SECRET_KEY == DEVELOPMENT_SECRET_KEY
    assert django_settings.GROQ_API_KEY == ""
    assert django_settings.ENV_FILE is None
    # Subprocesses started by tests get none of the shell's settings variables either.
    assert not {"DEBUG", "DJANGO_SECRET_KEY", "GROQ_API_KEY", "ALLOWED_HOSTS"} & set(os.environ)
    if "DATABASE_URL" not in os.environ:
        assert django_settings.DATABASES["default"]["ENGINE"] == "django.db.backends.sqlite3"
    assert django_user_model.objects.count() == 0  # the test database answers


@pytest.mark.one_database  # subprocesses with a clean environment: SQLite whatever the suite uses
def test_a_hostile_dotenv_and_shell_do_not_affect_the_suite(tmp_path):
    checkout = clone_checkout(tmp_path / "observatory")
    (checkout / ".env").write_text(
        "DEBUG=False\n"
        "DATABASE_URL=postgres://nobody:nothing@127.0.0.1:1/missing\n"
        "GROQ_API_KEY=gsk_from_dotenv\n"
        "DJANGO_SECRET_KEY=from-dotenv\n"
        "LOG_LEVEL=loud\n"
    )
    hostile_shell = {"DEBUG": "no", "GROQ_API_KEY": "gsk_from_shell", "DJANGO_SETTINGS_MODULE": "core.settings"}
    result = subprocess.run(
        [
            sys.executable,
            "-m",
            "pytest",
            "-q",
            "tests/test_settings.py::test_suite_reads_no_dotenv_nor_shell_settings",
        ],
        cwd=checkout,
        env=clean_environment(**hostile_shell),
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert result.returncode == 0, result.stdout + result.stderr
    assert "1 passed" in result.stdout
