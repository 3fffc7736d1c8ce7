"""Settings from the environment: django-environ, forgiving about empty values and strict about bad ones.

- An empty value means "use the default", for every setting. A `.env` copied from `.env.example` has
  lines such as `DATABASE_URL=`; django-environ would hand Django an empty database config
  (`KeyError: 'ENGINE'`) or an empty secret key.
- A malformed value stops the start with ImproperlyConfigured naming the variable, where it was set
  and how to fix it. django-environ alone reads `DEBUG=Flase` as False and `GROQ_TIMEOUT_SECONDS=1e3`
  as 13.
- Every name read is recorded in `Environment.defaults`, so a test can hold `.env.example` to what
  the settings actually read.
- A value starting with `$` is taken literally: django-environ would read `$abc` as "the value of the
  variable abc", and a generated secret key may start with `$`.
"""

from __future__ import annotations

import ipaddress
import math
import os
import warnings
import zoneinfo
from collections.abc import Iterable, Mapping
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import environ
from django.core.exceptions import ImproperlyConfigured

# Which .env file to read: unset means `.env` next to manage.py; empty means none (the test suite).
ENV_FILE_VARIABLE = "OBSERVATORY_ENV_FILE"
NOTSET = environ.Env.NOTSET
TRUE_WORDS = frozenset({"true", "yes", "on", "1", "t", "y"})
FALSE_WORDS = frozenset({"false", "no", "off", "0", "f", "n"})
# Values of these are never echoed in an error message.
SECRET_WORDS = ("SECRET", "PASSWORD", "TOKEN", "KEY")
SUPPORTED_DATABASES = {"django.db.backends.sqlite3": "SQLite", "django.db.backends.postgresql": "PostgreSQL"}
KIND_NAMES = {bool: "True or False", int: "a whole number", float: "a number"}
# Names that came from a .env file. Kept here because manage.py imports the settings a second time
# after a failed first import, and by then the file's values are already in os.environ.
_names_from_file: set[str] = set()


def load_env_file(default_path: Path) -> tuple[Path | None, frozenset[str]]:
    """Copy the KEY=value lines of the .env file into os.environ (variables already set win).

    The file is $OBSERVATORY_ENV_FILE when that is set (empty: no file at all), else `default_path`
    when it exists. Returns the file read and the names that came from it.
    """
    chosen = os.environ.get(ENV_FILE_VARIABLE)
    if chosen is None:
        path = default_path if default_path.is_file() else None
    elif not chosen.strip():
        path = None
    else:
        path = Path(chosen).expanduser()
        if not path.is_file():
            raise ImproperlyConfigured(
                f"{ENV_FILE_VARIABLE}={chosen!r}: no such file. Point it at your .env file, "
                "or set it empty to read none."
            )
    if path is None:
        return None, frozenset()
    before = set(os.environ)
    environ.Env.read_env(path)
    _names_from_file.update(set(os.environ) - before)
    return path, frozenset(_names_from_file)


def parse_bool(text: str) -> bool:
    word = text.strip().lower()
    if word in TRUE_WORDS:
        return True
    if word in FALSE_WORDS:
        return False
    raise ValueError(text)


class Environment(environ.Env):
    """django-environ's Env (same methods: str, bool, int, float, list, db_url, email_url...) with
    empty values meaning the default, strict parsing, error messages that say how to fix, and
    `minimum`/`maximum` bounds on numbers."""

    def __init__(
        self,
        source: Mapping[str, str] | None = None,
        *,
        file_path: Path | None = None,
        file_names: Iterable[str] = (),
    ) -> None:
        super().__init__()
        self.ENVIRON = os.environ if source is None else source
        self.file_path = file_path
        self.file_names = frozenset(file_names)
        # Every variable read, with its default, in reading order.
        self.defaults: dict[str, Any] = {}

    # Reading and parsing.

    def raw(self, var: str) -> str:
        """The value as set, stripped; "" when unset or empty."""
        return str(self.ENVIRON.get(var, "")).strip()

    def get_value(self, var: str, cast: Any = None, default: Any = NOTSET, parse_default: bool = False) -> Any:
        self.defaults.setdefault(var, default)
        text = self.raw(var)
        if not text:
            if default is NOTSET:
                raise ImproperlyConfigured(f"{var} must be set (in the environment or in .env).")
            if parse_default and isinstance(default, str):
                return self.parse_value(default, cast)
            return default
        if cast is None and default is not None and default is not NOTSET:
            cast = type(default)  # as django-environ does: env("X", default=5) is an int
        try:
            return self._parse(text, cast)
        except (ValueError, TypeError) as error:
            raise self.invalid(var, f"is not {KIND_NAMES.get(cast, 'valid')}", default) from error

    @staticmethod
    def _parse(text: str, cast: Any) -> Any:
        if cast is bool:
            return parse_bool(text)
        if cast is int:
            return int(text)
        if cast is float:
            number = float(text)
            if not math.isfinite(number):
                raise ValueError(text)
            return number
        if cast is list:
            return [item.strip() for item in text.split(",") if item.strip()]
        if isinstance(cast, list):
            return [cast[0](item.strip()) for item in text.split(",") if item.strip()]
        return environ.Env.parse_value(text, cast)

    def invalid(self, var: str, problem: str, default: Any = NOTSET, fix: str = "") -> ImproperlyConfigured:
        """An error naming the variable, its value (unless secret), where it was set and the way out."""
        where = f"in {self.file_path}" if var in self.file_names and self.file_path else "in the environment"
        if default is not NOTSET and default not in ("", None, []):
            fallback = f"remove the line (or leave it empty) to use the default, {default}"
        else:
            fallback = "remove the line (or leave it empty) to use the default"
        fix = fix or "Fix the value"
        return ImproperlyConfigured(f"{var}={self._shown(var)} ({where}) {problem}. {fix}, or {fallback}.")

    def _shown(self, var: str) -> str:
        text = self.raw(var)
        if any(word in var for word in SECRET_WORDS):
            return "<hidden>"
        if "://" in text:
            parts = urlsplit(text)
            if parts.password:
                text = text.replace(f":{parts.password}@", ":***@", 1)
        return repr(text)

    # django-environ's methods, with bounds and clearer errors.

    def str(
        self, var: str, default: Any = NOTSET, multiline: bool = False, choices: Iterable[str] | Any = NOTSET
    ) -> Any:
        value = super().str(var, default=default, multiline=multiline)
        if choices is NOTSET or value == default:
            return value
        # Case does not matter ("debug" for DEBUG); the answer is spelled as in `choices`.
        by_folded = {choice.casefold(): choice for choice in choices}
        if value.casefold() not in by_folded:
            raise self.invalid(var, f"is not one of {', '.join(by_folded.values())}", default)
        return by_folded[value.casefold()]

    def int(self, var: str, default: Any = NOTSET, *, minimum: int | None = None, maximum: int | None = None) -> Any:
        return self._bounded(var, super().int(var, default=default), default, minimum, maximum)

    def float(
        self,
        var: str,
        default: Any = NOTSET,
        *,
        minimum: float | None = None,
        maximum: float | None = None,
        positive: bool = False,
    ) -> Any:
        value = self._bounded(var, super().float(var, default=default), default, minimum, maximum)
        if positive and value is not None and value <= 0:
            raise self.invalid(var, "must be more than 0", default)
        return value

    def _bounded(self, var: str, value: Any, default: Any, minimum: Any, maximum: Any) -> Any:
        if value is None or value == default:
            return value
        if minimum is not None and value < minimum:
            raise self.invalid(var, f"must be at least {minimum}", default)
        if maximum is not None and value > maximum:
            raise self.invalid(var, f"must be at most {maximum}", default)
        return value

    def db_url(self, var: str = "DATABASE_URL", default: Any = NOTSET, engine: str | None = None) -> dict[str, Any]:
        url = self.get_value(var, default=default)
        fix = "Use postgres://user:password@host:5432/name or sqlite:////absolute/path/db.sqlite3"
        try:
            with warnings.catch_warnings():
                warnings.simplefilter("ignore")  # django-environ warns, then returns an unusable config
                config = self.db_url_config(url, engine=engine)
        except (ImproperlyConfigured, ValueError) as error:
            raise self.invalid(var, f"is not a database URL ({error})", fix=fix) from error
        if config.get("ENGINE") not in SUPPORTED_DATABASES:
            raise self.invalid(var, "is not a SQLite or PostgreSQL URL", fix=fix)
        if not config.get("NAME"):
            raise self.invalid(var, "names no database", fix=fix)
        return config

    db = db_url

    def email_url(self, var: str = "EMAIL_URL", default: Any = NOTSET, backend: str | None = None) -> Any:
        url = self.get_value(var, default=default)
        if url is None:
            return None
        try:
            config = self.email_url_config(url, backend=backend)
        except (ImproperlyConfigured, ValueError) as error:
            schemes = ", ".join(f"{scheme}://" for scheme in self.EMAIL_SCHEMES)
            raise self.invalid(var, f"is not a mail URL ({error})", fix=f"Start it with one of {schemes}") from error
        # Unset parts (no port in smtp://host) keep Django's defaults.
        return {name: value for name, value in config.items() if value is not None}

    email = email_url

    def http_url(self, var: str, default: Any = NOTSET) -> Any:
        """A URL starting with http:// or https://, with a host."""
        value = self.str(var, default=default)
        if value == default:
            return value
        parts = urlsplit(value)
        if parts.scheme not in ("http", "https") or not parts.hostname:
            raise self.invalid(var, "is not an http:// or https:// URL", default)
        return value

    def ip_networks(self, var: str, default: Any = NOTSET) -> Any:
        """A comma-separated list of IP networks ("127.0.0.1/32, 10.0.0.0/8"), each checked."""
        values = self.list(var, default=default)
        for value in values:
            try:
                ipaddress.ip_network(value.strip(), strict=False)
            except ValueError as error:
                raise self.invalid(var, f"has {value!r}, which is not an IP network ({error})", default) from error
        return [value.strip() for value in values if value.strip()]

    def time_zone(self, var: str, default: Any = NOTSET) -> Any:
        value = self.str(var, default=default)
        try:
            zoneinfo.ZoneInfo(value)
        except (zoneinfo.ZoneInfoNotFoundError, ValueError) as error:
            raise self.invalid(
                var, "is not a time zone name", default, fix="Use a name such as Europe/Paris"
            ) from error
        return value

    def names(self, var: str, default: Any = NOTSET, *, max_chars: int = 100) -> Any:
        """A comma-separated list of names (tag keys: "feature, env"), each 1 to `max_chars`
        characters with no control character; duplicates dropped, order kept."""
        values = [value.strip() for value in self.list(var, default=default) if value.strip()]
        for value in values:
            if len(value) > max_chars or any(ord(character) < 32 for character in value):
                # The value is not quoted: the variable's name may say KEY (see _shown).
                number = values.index(value) + 1
                problem = f"has, as name {number}, not a name of 1 to {max_chars} characters without control characters"
                raise self.invalid(var, problem, default)
        return list(dict.fromkeys(values))


def email_settings(env: Environment) -> dict[str, Any]:
    """Django's EMAIL_* settings: from EMAIL_URL when it is set, else from Django's own EMAIL_HOST,
    EMAIL_PORT, EMAIL_HOST_USER, EMAIL_HOST_PASSWORD, EMAIL_USE_TLS/SSL (SMTP when EMAIL_HOST is set),
    else the console backend, which writes each mail to the log."""
    # Every variable is read whichever wins, so a typo in one fails loudly and all are recorded.
    from_url = env.email_url("EMAIL_URL", default=None)
    host = env.str("EMAIL_HOST", default="")
    use_tls = env.bool("EMAIL_USE_TLS", default=False)
    use_ssl = env.bool("EMAIL_USE_SSL", default=False)
    # The usual port of each kind of connection, unless one is named.
    port = env.int("EMAIL_PORT", default=465 if use_ssl else 587 if use_tls else 25, minimum=1, maximum=65535)
    user = env.str("EMAIL_HOST_USER", default="")
    password = env.str("EMAIL_HOST_PASSWORD", default="")
    timeout = env.float("EMAIL_TIMEOUT", default=10.0, positive=True)
    if use_tls and use_ssl:
        raise ImproperlyConfigured(
            "EMAIL_USE_TLS and EMAIL_USE_SSL are both True: a connection uses one or the other. "
            "Set EMAIL_USE_TLS=True for STARTTLS (usually port 587) or EMAIL_USE_SSL=True for port 465."
        )
    if from_url is not None:
        config = from_url
    elif host:
        config = {
            "EMAIL_BACKEND": "django.core.mail.backends.smtp.EmailBackend",
            "EMAIL_HOST": host,
            "EMAIL_PORT": port,
            "EMAIL_HOST_USER": user,
            "EMAIL_HOST_PASSWORD": password,
            "EMAIL_USE_TLS": use_tls,
            "EMAIL_USE_SSL": use_ssl,
        }
    else:
        config = {"EMAIL_BACKEND": "django.core.mail.backends.console.EmailBackend"}
    return {**config, "EMAIL_TIMEOUT": timeout}
