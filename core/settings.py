"""Settings, read from the environment (and an optional `.env` file) through core/environment.py.

With nothing configured the project runs in debug mode on SQLite. An empty value means the default,
for every variable. With `DEBUG=False` it refuses to start until `DJANGO_SECRET_KEY` and
`ALLOWED_HOSTS` are set. Every variable read here is listed in `.env.example`.
"""

from __future__ import annotations

from datetime import timedelta
from pathlib import Path

from django.core.exceptions import ImproperlyConfigured

from core.environment import Environment, email_settings, load_env_file

BASE_DIR = Path(__file__).resolve().parent.parent

# `.env` next to manage.py, or $OBSERVATORY_ENV_FILE (empty: none, as in the test suite).
ENV_FILE, ENV_FILE_NAMES = load_env_file(BASE_DIR / ".env")
env = Environment(file_path=ENV_FILE, file_names=ENV_FILE_NAMES)

DEBUG = env.bool("DEBUG", default=True)

# A fixed key is fine for a laptop in debug mode and nowhere else.
DEVELOPMENT_SECRET_KEY = "django-insecure-development-only-key-do-not-use-in-production"  # noqa: S105
SECRET_KEY = env.str("DJANGO_SECRET_KEY", default=DEVELOPMENT_SECRET_KEY if DEBUG else "")
if not DEBUG and (not SECRET_KEY or SECRET_KEY == DEVELOPMENT_SECRET_KEY):
    raise ImproperlyConfigured(
        "DJANGO_SECRET_KEY must be set when DEBUG=False. Generate one with "
        "`python -c 'import secrets; print(secrets.token_urlsafe(50))'` and set it in the environment or in .env."
    )

ALLOWED_HOSTS = env.list("ALLOWED_HOSTS", default=["127.0.0.1", "localhost", "[::1]"] if DEBUG else [])
if not DEBUG and not ALLOWED_HOSTS:
    raise ImproperlyConfigured(
        "ALLOWED_HOSTS must be set when DEBUG=False: the host names this site answers to, comma-separated, "
        "e.g. ALLOWED_HOSTS=observatory.example.com."
    )
CSRF_TRUSTED_ORIGINS = env.list("CSRF_TRUSTED_ORIGINS", default=[])
# Django would only say so in a system check, which gunicorn does not run.
if any(not origin.startswith(("http://", "https://")) for origin in CSRF_TRUSTED_ORIGINS):
    raise env.invalid(
        "CSRF_TRUSTED_ORIGINS",
        "has an origin without its scheme",
        [],
        fix="Write each origin with its scheme, e.g. https://observatory.example.com",
    )

INSTALLED_APPS = [
    "django.contrib.admin",
    "django.contrib.auth",
    "django.contrib.contenttypes",
    "django.contrib.sessions",
    "django.contrib.messages",
    "whitenoise.runserver_nostatic",
    "django.contrib.staticfiles",
    "django.contrib.humanize",
    "rest_framework",
    "django_filters",
    "drf_spectacular",
    # Swagger UI's files, served as our own static files (no CDN at run time).
    "drf_spectacular_sidecar",
    # Failed logins and lockouts (llm/logins.py).
    "axes",
    # The audit log (llm/audit.py); before llm, whose admin replaces auditlog's list of entries.
    "auditlog",
    "llm",
]

MIDDLEWARE = [
    # Outermost: times the whole request, gives it its X-Request-ID, logs one line (llm/logging.py).
    "llm.logging.RequestLogMiddleware",
    "django.middleware.security.SecurityMiddleware",
    "llm.middleware.SecurityHeadersMiddleware",
    # Out here (not last) so that the error pages and 503s made below also carry it.
    "django.middleware.clickjacking.XFrameOptionsMiddleware",
    # Above everything that may touch the database (sessions, auth, messages, views): their
    # database errors become 503 here.
    "llm.middleware.FriendlyErrorsMiddleware",
    "whitenoise.middleware.WhiteNoiseMiddleware",
    "django.contrib.sessions.middleware.SessionMiddleware",
    "django.middleware.common.CommonMiddleware",
    "django.middleware.csrf.CsrfViewMiddleware",
    "django.contrib.auth.middleware.AuthenticationMiddleware",
    # Who acts, for the audit log: the user, or the API key (llm/audit.py).
    "llm.audit.AuditMiddleware",
    "django.contrib.messages.middleware.MessageMiddleware",
    # A login django-axes could not record (a NUL, an overlong user name): 400 naming the field.
    "llm.logins.LoginInputMiddleware",
    # Last, as django-axes asks: turns a locked-out login into llm.logins.lockout_response.
    "axes.middleware.AxesMiddleware",
]

ROOT_URLCONF = "core.urls"
WSGI_APPLICATION = "core.wsgi.application"
ASGI_APPLICATION = "core.asgi.application"

TEMPLATES = [
    {
        "BACKEND": "django.template.backends.django.DjangoTemplates",
        "DIRS": [BASE_DIR / "templates"],
        "APP_DIRS": True,
        "OPTIONS": {
            "context_processors": [
                "django.template.context_processors.request",
                "django.contrib.auth.context_processors.auth",
                "django.contrib.messages.context_processors.messages",
            ],
        },
    },
]

DATABASES = {"default": env.db("DATABASE_URL", default=f"sqlite:///{BASE_DIR / 'db.sqlite3'}")}
# Seconds a connection is kept for the next request (0: one per request).
DATABASES["default"]["CONN_MAX_AGE"] = env.int("CONN_MAX_AGE", default=60, minimum=0)
DATABASES["default"]["CONN_HEALTH_CHECKS"] = True
if DATABASES["default"]["ENGINE"] == "django.db.backends.sqlite3":
    # Run on every new connection. WAL lets the dashboard read while a request is being logged.
    # A writer waits for the one writing (busy_timeout) rather than failing with "database is
    # locked": up to 20 s, far above the longest wait measured with 16 clients writing at once
    # (under 1 s; tests/test_concurrent_ingest.py, bench/ingest_load.py), below gunicorn's timeout.
    DATABASES["default"].setdefault("OPTIONS", {})["init_command"] = (
        "PRAGMA journal_mode=WAL; PRAGMA synchronous=NORMAL; PRAGMA busy_timeout=20000;"
    )
    # Transactions take the write lock when they begin, so a transaction that read first never
    # fails on upgrading to a write (SQLite answers that with "database is locked" at once).
    DATABASES["default"]["OPTIONS"]["transaction_mode"] = "IMMEDIATE"
    # The roll-ups' covering indexes (their INCLUDE columns) are PostgreSQL's; SQLite makes them
    # without the extra columns, which Django warned of at every command (`make run` printed it
    # twice): nothing to act on.
    SILENCED_SYSTEM_CHECKS = ["models.W040"]
DEFAULT_AUTO_FIELD = "django.db.models.BigAutoField"

AUTH_PASSWORD_VALIDATORS = [
    {"NAME": "django.contrib.auth.password_validation.UserAttributeSimilarityValidator"},
    {"NAME": "django.contrib.auth.password_validation.MinimumLengthValidator"},
    {"NAME": "django.contrib.auth.password_validation.CommonPasswordValidator"},
    {"NAME": "django.contrib.auth.password_validation.NumericPasswordValidator"},
]

LANGUAGE_CODE = "en-us"
TIME_ZONE = env.time_zone("TIME_ZONE", default="UTC")
USE_I18N = True
USE_TZ = True

STATIC_URL = "static/"
STATIC_ROOT = BASE_DIR / "staticfiles"
STATICFILES_DIRS = [BASE_DIR / "static"]
# Files browsers ask for at the site's root (/favicon.ico), served by WhiteNoise as they are.
WHITENOISE_ROOT = BASE_DIR / "static" / "root"
STORAGES = {
    "default": {"BACKEND": "django.core.files.storage.FileSystemStorage"},
    "staticfiles": {"BACKEND": "whitenoise.storage.CompressedManifestStaticFilesStorage"},
}
if DEBUG:
    # No collectstatic needed while developing.
    STORAGES["staticfiles"]["BACKEND"] = "django.contrib.staticfiles.storage.StaticFilesStorage"
    WHITENOISE_USE_FINDERS = True

# django-axes' first (llm/logins.py): it refuses a locked-out user name or address before the password
# is checked.
AUTHENTICATION_BACKENDS = ["llm.logins.LoginBackend", "django.contrib.auth.backends.ModelBackend"]
# Failed logins (dashboard and admin) per user name and, separately, per address before a lockout,
# and the lockout's length after the last failure (llm/logins.py).
LOGIN_FAILURE_LIMIT = env.int("LOGIN_FAILURE_LIMIT", default=5, minimum=1)
LOGIN_LOCKOUT_MINUTES = env.int("LOGIN_LOCKOUT_MINUTES", default=15, minimum=1)
# Proxies in front that append the client's address to X-Forwarded-For; 0: the address is the
# connection's own. Production runs behind one (docs/nginx.conf.example): read as 0 there, every client
# would have the proxy's address, and five wrong passwords anywhere would lock everyone out.
TRUSTED_PROXY_COUNT = env.int("TRUSTED_PROXY_COUNT", default=0 if DEBUG else 1, minimum=0)
AXES_FAILURE_LIMIT = LOGIN_FAILURE_LIMIT
AXES_COOLOFF_TIME = timedelta(minutes=LOGIN_LOCKOUT_MINUTES)
AXES_LOCKOUT_PARAMETERS = ["username", "ip_address"]
AXES_RESET_ON_SUCCESS = True
AXES_LOCKOUT_CALLABLE = "llm.logins.lockout_response"
AXES_CLIENT_IP_CALLABLE = "llm.logins.client_address"
# No row per successful login: the request log already has one line per request.
AXES_DISABLE_ACCESS_LOG = True
# No "AXES: BEGIN" line from every process and command at start.
AXES_VERBOSE = False

# The audit log (llm/audit.py): one line per audited model. Fields that change on their own (stamps
# written by use or by alert checks) are left out; secrets are recorded as changed, never as values.
AUDITLOG_STORE_JSON_CHANGES = True
AUDITLOG_CID_GETTER = "llm.audit.request_id"
AUDITLOG_INCLUDE_TRACKING_MODELS = (
    {
        "model": "llm.AlertRule",
        "exclude_fields": ["updated_at", "is_firing", "last_value", "last_checked_at", "last_notified_at"],
    },
    {
        "model": "llm.APIKey",
        "exclude_fields": ["last_used_at"],
        "mask_fields": ["key_hash"],
        "mask_callable": "llm.audit.hide",
    },
    {"model": "llm.ModelPrice", "exclude_fields": ["updated_at"]},
    {"model": "llm.DashboardSettings", "exclude_fields": ["served_origin"]},
    {
        "model": "auth.User",
        "exclude_fields": ["last_login"],
        "mask_fields": ["password"],
        "mask_callable": "llm.audit.hide",
        "m2m_fields": ["groups", "user_permissions"],
    },
    {"model": "auth.Group", "m2m_fields": ["permissions"]},
    {"model": "llm.Budget", "exclude_fields": ["updated_at"]},
    {
        "model": "llm.NotificationChannel",
        "exclude_fields": ["consecutive_failures", "last_failure_at", "last_success_at", "last_error"],
        "mask_fields": ["secret", "routing_key"],
        "mask_callable": "llm.audit.hide",
    },
)

LOGIN_URL = "login"
LOGIN_REDIRECT_URL = "/"
LOGOUT_REDIRECT_URL = "login"

# Security headers and cookies: on by default in production (what `check --deploy` asks for), off in
# development, which is served over plain HTTP. Each can be changed, e.g. SECURE_SSL_REDIRECT=False
# when TLS ends at a proxy that already redirects.
SECURE_CONTENT_TYPE_NOSNIFF = True
SECURE_REFERRER_POLICY = "same-origin"
X_FRAME_OPTIONS = "DENY"
SESSION_COOKIE_HTTPONLY = True
SESSION_COOKIE_SECURE = env.bool("SESSION_COOKIE_SECURE", default=not DEBUG)
CSRF_COOKIE_SECURE = env.bool("CSRF_COOKIE_SECURE", default=not DEBUG)
SECURE_SSL_REDIRECT = env.bool("SECURE_SSL_REDIRECT", default=not DEBUG)
SECURE_HSTS_SECONDS = env.int("SECURE_HSTS_SECONDS", default=0 if DEBUG else 60 * 60 * 24 * 30, minimum=0)
SECURE_HSTS_INCLUDE_SUBDOMAINS = env.bool("SECURE_HSTS_INCLUDE_SUBDOMAINS", default=not DEBUG)
# Only says the site may be preloaded; browsers' preload lists also ask for a year of HSTS, and
# someone must submit the site (hstspreload.org).
SECURE_HSTS_PRELOAD = env.bool("SECURE_HSTS_PRELOAD", default=not DEBUG)
# /metrics is scraped, and /health/ probed by load balancers, over plain HTTP inside the network.
SECURE_REDIRECT_EXEMPT = [r"^metrics$", r"^health/?$"]
# Scripts, styles, images and fonts from this site only: no inline script or style, no CDN. Chart.js
# and Swagger UI are served as our own static files; favicons and Swagger UI's icons are data: URIs.
CONTENT_SECURITY_POLICY = "; ".join(
    [
        "default-src 'self'",
        "script-src 'self'",
        "style-src 'self'",
        "img-src 'self' data:",
        "font-src 'self'",
        "connect-src 'self'",
        "object-src 'none'",
        "base-uri 'self'",
        "form-action 'self'",
        "frame-ancestors 'none'",
    ]
)
if not DEBUG:
    # Production runs behind a proxy that ends TLS and says so in X-Forwarded-Proto.
    SECURE_PROXY_SSL_HEADER = ("HTTP_X_FORWARDED_PROTO", "https")

REST_FRAMEWORK = {
    "DEFAULT_AUTHENTICATION_CLASSES": [
        # First, so that an unauthenticated request gets 401 with WWW-Authenticate: Bearer.
        "llm.auth.APIKeyAuthentication",
        "rest_framework.authentication.SessionAuthentication",
    ],
    # A session or a key holding the right the view declares (`required_right`, llm/permissions.py).
    "DEFAULT_PERMISSION_CLASSES": ["llm.permissions.HasRight"],
    "DEFAULT_RENDERER_CLASSES": [
        "llm.api.parsers.JSONRenderer",  # DRF's, with \u escapes for text UTF-8 cannot carry
        "rest_framework.renderers.BrowsableAPIRenderer",
    ],
    # JSON with a nesting limit (a 3,000-level body is a 400, not a RecursionError); forms as DRF's default.
    "DEFAULT_PARSER_CLASSES": [
        "llm.api.parsers.JSONParser",
        "rest_framework.parsers.FormParser",
        "rest_framework.parsers.MultiPartParser",
    ],
    # drf-spectacular's, plus the error answers (400, 401, 403, 404, 415, 503) each operation can give.
    "DEFAULT_SCHEMA_CLASS": "llm.api.errors.ErrorResponsesSchema",
    "EXCEPTION_HANDLER": "llm.api.errors.exception_handler",
    # One pagination for every list: page_size above 500 answers 400 (DRF would cap it silently).
    "DEFAULT_PAGINATION_CLASS": "llm.api.pagination.StrictPageNumberPagination",
    "UNAUTHENTICATED_USER": "django.contrib.auth.models.AnonymousUser",
}

SPECTACULAR_SETTINGS = {
    "TITLE": "LLM Observatory API",
    "DESCRIPTION": (
        "Send prompts through Groq, report LLM calls made elsewhere, and read their metrics.\n\n"
        "Authenticate with an API key (`Authorization: Bearer <key>`) or a logged-in session (which sends its "
        'CSRF token on POST, PUT, PATCH and DELETE). Every error answers JSON: `{"error": "..."}`, and for '
        "bad input (400) `fields`, naming each bad field or query parameter. Each operation lists the errors "
        "it can answer; besides those, any path answers 405 to a method it does not take (with `Allow`) and "
        "406 to an `Accept` header it cannot satisfy, and every operation answers 503 with `Retry-After` "
        "while the database is unavailable."
    ),
    "VERSION": "1.0.0",
    "SERVE_INCLUDE_SCHEMA": False,
    # The schema describes private endpoints: same rule as the API itself.
    "SERVE_PERMISSIONS": ["llm.auth.HasSessionOrAPIKey"],
    "SERVE_AUTHENTICATION": ["llm.auth.APIKeyAuthentication", "rest_framework.authentication.SessionAuthentication"],
    # /api/docs/ loads Swagger UI from drf-spectacular-sidecar's static files, never from a CDN.
    "SWAGGER_UI_DIST": "SIDECAR",
    "SWAGGER_UI_FAVICON_HREF": "SIDECAR",
    "REDOC_DIST": "SIDECAR",
}

# Email (alerts): EMAIL_URL (smtp://user:password@host:587, smtp+tls://..., consolemail://) when set,
# else Django's EMAIL_HOST, EMAIL_PORT, EMAIL_HOST_USER, EMAIL_HOST_PASSWORD, EMAIL_USE_TLS/SSL; with
# neither, mails are written to the console. Sets EMAIL_BACKEND, EMAIL_HOST... and EMAIL_TIMEOUT.
globals().update(email_settings(env))
DEFAULT_FROM_EMAIL = env.str("DEFAULT_FROM_EMAIL", default="LLM Observatory <observatory@localhost>")
SERVER_EMAIL = DEFAULT_FROM_EMAIL

# Groq, through the official SDK.
GROQ_API_KEY = env.str("GROQ_API_KEY", default="")
GROQ_BASE_URL = env.http_url("GROQ_BASE_URL", default="https://api.groq.com")
GROQ_DEFAULT_MODEL = env.str("GROQ_DEFAULT_MODEL", default="llama-3.1-8b-instant")
GROQ_TIMEOUT_SECONDS = env.float("GROQ_TIMEOUT_SECONDS", default=60.0, positive=True)
GROQ_MAX_RETRIES = env.int("GROQ_MAX_RETRIES", default=2, minimum=0)

# Cerebras, through its official SDK (cerebras-cloud-sdk).
CEREBRAS_API_KEY = env.str("CEREBRAS_API_KEY", default="")
CEREBRAS_BASE_URL = env.http_url("CEREBRAS_BASE_URL", default="https://api.cerebras.ai")
CEREBRAS_TIMEOUT_SECONDS = env.float("CEREBRAS_TIMEOUT_SECONDS", default=60.0, positive=True)
CEREBRAS_MAX_RETRIES = env.int("CEREBRAS_MAX_RETRIES", default=2, minimum=0)

# Any OpenAI-compatible server (OpenAI, vLLM, Ollama, Together, ...), through the official openai SDK.
OPENAI_API_KEY = env.str("OPENAI_API_KEY", default="")
OPENAI_BASE_URL = env.http_url("OPENAI_BASE_URL", default="https://api.openai.com/v1")
OPENAI_TIMEOUT_SECONDS = env.float("OPENAI_TIMEOUT_SECONDS", default=60.0, positive=True)
OPENAI_MAX_RETRIES = env.int("OPENAI_MAX_RETRIES", default=2, minimum=0)

# Alerts.
ALERT_EMAIL_RECIPIENTS = env.list("ALERT_EMAIL_RECIPIENTS", default=[])
ALERT_WEBHOOK_URL = env.http_url("ALERT_WEBHOOK_URL", default="")
ALERT_WEBHOOK_TIMEOUT_SECONDS = env.float("ALERT_WEBHOOK_TIMEOUT_SECONDS", default=10.0, positive=True)
ALERT_WEBHOOK_TRIES = env.int("ALERT_WEBHOOK_TRIES", default=3, minimum=1)
# Seconds between webhook tries, times the try number (1 s, 2 s, ...): a short, bounded backoff.
ALERT_WEBHOOK_RETRY_DELAY_SECONDS = env.float("ALERT_WEBHOOK_RETRY_DELAY_SECONDS", default=1.0, minimum=0)
# Where PagerDuty channels send their events (Events API v2); tests point it at a local receiver.
PAGERDUTY_EVENTS_URL = env.http_url("PAGERDUTY_EVENTS_URL", default="https://events.pagerduty.com/v2/enqueue")
# A notification channel that failed this many times in a row is shown as failing (alerts page, /metrics).
ALERT_CHANNEL_FAILING_AFTER = env.int("ALERT_CHANNEL_FAILING_AFTER", default=3, minimum=1)
# Webhooks, channels and every outbound HTTP call refuse loopback, private, link-local, CGNAT,
# multicast and metadata addresses, unless one of these networks (comma-separated CIDRs) holds them.
OUTBOUND_ALLOWED_NETWORKS = env.ip_networks("OUTBOUND_ALLOWED_NETWORKS", default=[])
# A grouped alert rule (group_by) evaluates at most this many groups per check_alerts run (the
# firing ones first, then the worst); the rest are reported in the run's output, not dropped silently.
ALERT_MAX_GROUPS = env.int("ALERT_MAX_GROUPS", default=100, minimum=1)
# Base of the links in alert notices; empty means the address the dashboard is served at.
SITE_URL = env.http_url("SITE_URL", default="")

# Privacy and retention.
STORE_PROMPTS = env.bool("STORE_PROMPTS", default=True)
REDACT_PII = env.bool("REDACT_PII", default=False)
MAX_STORED_TEXT_CHARS = env.int("MAX_STORED_TEXT_CHARS", default=20_000, minimum=0)
RETENTION_DAYS = env.int("RETENTION_DAYS", default=90, minimum=1)
# A text search (`search` on the logs list and page) answers within this many milliseconds on
# PostgreSQL or says what to narrow (400); 0: no limit (llm/paging.py, SearchReading). At most what
# PostgreSQL's statement_timeout takes (a 32-bit int of ms): above it every search was a 500.
SEARCH_TIMEOUT_MS = env.int("SEARCH_TIMEOUT_MS", default=1000, minimum=0, maximum=2**31 - 1)

# Prometheus scraping: when set, GET /metrics needs `Authorization: Bearer <METRICS_TOKEN>` (or an API
# key). With DEBUG=False it always needs one or the other (llm/api/prometheus.py; llm.W017 says so
# when the token is unset). Decided here from DEBUG as configured: the test runner turns
# settings.DEBUG off later, and tests set this directly.
METRICS_TOKEN = env.str("METRICS_TOKEN", default="")
METRICS_REQUIRE_AUTH = not DEBUG

# Rate limits per API key and per logged-in user (llm/throttles.py), counted per calendar minute in
# the database, shared by every worker; 0 turns a limit off. Over the limit: 429 with Retry-After.
PROMPT_RATE_LIMIT = env.int("PROMPT_RATE_LIMIT", default=600, minimum=0)  # prompts a minute
INGEST_RATE_LIMIT = env.int("INGEST_RATE_LIMIT", default=600_000, minimum=0)  # events or spans a minute

# Tag keys whose values have breakdown roll-ups (llm/rollups.py): `breakdown by=tag:<key>` and the
# figures under one `tag=<key>:<value>` filter read them instead of the calls (sources always have
# them). Other keys are read from the calls, exact but slower over long windows. Each key costs the
# roll-up after a write three small queries; a key added later counts once rebuild_rollups has run.
ROLLUP_TAG_KEYS = env.names("ROLLUP_TAG_KEYS", default=["feature", "env"])

# Roll up new calls right after they are written (llm/rollups.py; served by core/asgi.py on
# PostgreSQL, in a thread of the worker's own, after the answer). Only the test suite turns it off:
# for live-server tests and the servers it starts on its own database (tests/test_prompt_server.py),
# which must not still be rolling up while a test's tables are flushed. Reads are exact without it.
ROLLUPS_AFTER_WRITE = env.bool("ROLLUPS_AFTER_WRITE", default=True)

# The log on standard error: "plain" text lines, or "json", one JSON object per line (time, level,
# logger, message, request_id, and per request method, path, status, duration_ms, user or api_key;
# per error the exception) for Loki or any log shipper. See llm/logging.py.
LOG_FORMAT = env.str("LOG_FORMAT", default="plain", choices=["plain", "json"])
LOG_LEVEL = env.str("LOG_LEVEL", default="INFO", choices=["DEBUG", "INFO", "WARNING", "ERROR", "CRITICAL"])
LOGGING = {
    "version": 1,
    "disable_existing_loggers": False,
    "formatters": {
        "plain": {"format": "%(asctime)s %(levelname)s %(name)s %(message)s"},
        "json": {"()": "llm.logging.JSONFormatter"},
    },
    # While the database is down, one line per request (llm.outage), not a traceback each.
    "filters": {"skip_outage_traceback": {"()": "llm.outage.SkipOutageTraceback"}},
    "handlers": {
        "console": {"class": "logging.StreamHandler", "formatter": LOG_FORMAT, "filters": ["skip_outage_traceback"]}
    },
    "root": {"handlers": ["console"], "level": LOG_LEVEL},
    "loggers": {
        # Django's own handlers (a second console copy with DEBUG, mail to ADMINS, which is empty)
        # off: everything goes through the one console handler above, in LOG_FORMAT.
        "django": {"handlers": [], "level": LOG_LEVEL, "propagate": True},
        "django.db.backends": {"level": "WARNING"},
        # The HTTP client under the Groq SDK logs every request it sends at INFO: one line per prompt,
        # which RequestLogMiddleware's line already covers (its failures still show at WARNING).
        "httpx": {"level": "WARNING"},
        # django-axes says at INFO what it does on every login; its warnings (a lockout) stay.
        "axes": {"level": "WARNING"},
    },
}
