from __future__ import annotations

import os
from pathlib import Path

import pytest
from rest_framework.test import APIClient

from tests.factories import make_api_key, make_user
from tests.fake_groq import FakeGroq


@pytest.fixture(scope="session")
def fake_groq_server():
    server = FakeGroq().start()
    yield server
    server.stop()


@pytest.fixture
def fake_groq(fake_groq_server, settings):
    """The fake Groq server, reset, with the app pointed at it (Cerebras and the OpenAI-compatible
    provider too: it speaks their dialects)."""
    fake_groq_server.reset()
    settings.GROQ_BASE_URL = fake_groq_server.base_url
    settings.CEREBRAS_BASE_URL = fake_groq_server.base_url
    settings.OPENAI_BASE_URL = fake_groq_server.openai_base_url
    settings.GROQ_API_KEY = "gsk_test_key"
    settings.CEREBRAS_API_KEY = "cerebras-test-key"
    settings.OPENAI_API_KEY = "openai-test-key"
    for prefix in ("GROQ", "CEREBRAS", "OPENAI"):
        setattr(settings, f"{prefix}_MAX_RETRIES", 0)
        setattr(settings, f"{prefix}_TIMEOUT_SECONDS", 5.0)
    yield fake_groq_server
    fake_groq_server.reset()


@pytest.fixture(autouse=True)
def _test_settings(settings, request):
    settings.PASSWORD_HASHERS = ["django.contrib.auth.hashers.MD5PasswordHasher"]
    if "live_server" in request.fixturenames:
        # The live server's thread shares this test's database: a roll-up it starts after a write
        # could still hold SQLite's table lock when the test flushes its tables. Reads stay exact
        # without it (llm/metrics.py adds the rows above the watermark).
        settings.ROLLUPS_AFTER_WRITE = False
    settings.STORE_PROMPTS = True
    settings.REDACT_PII = False
    settings.EMAIL_BACKEND = "django.core.mail.backends.locmem.EmailBackend"


@pytest.fixture
def api_key(db) -> str:
    _, raw_key = make_api_key("tests")
    return raw_key


@pytest.fixture
def api_client(api_key) -> APIClient:
    client = APIClient()
    client.credentials(HTTP_AUTHORIZATION=f"Bearer {api_key}")
    return client


@pytest.fixture
def anonymous_client() -> APIClient:
    return APIClient()


@pytest.fixture
def staff_user(db):
    """A staff member with the Admin role (every right but a superuser's)."""
    return make_user("alice", "Admin", is_staff=True)


@pytest.fixture
def logged_in_client(staff_user) -> APIClient:
    client = APIClient()
    client.force_login(staff_user)
    return client


# Alerts: real SMTP and webhook peers on 127.0.0.1.


@pytest.fixture(scope="session")
def smtp_server_session():
    from tests.alert_receivers import SMTPServer

    server = SMTPServer().start()
    yield server
    server.stop()


@pytest.fixture
def smtp_server(smtp_server_session, settings):
    """An SMTP server on 127.0.0.1 with Django's SMTP backend pointed at it."""
    smtp_server_session.reset()
    settings.EMAIL_BACKEND = "django.core.mail.backends.smtp.EmailBackend"
    settings.EMAIL_HOST = "127.0.0.1"
    settings.EMAIL_PORT = smtp_server_session.port
    settings.EMAIL_HOST_USER = ""
    settings.EMAIL_HOST_PASSWORD = ""
    settings.EMAIL_USE_TLS = False
    settings.EMAIL_USE_SSL = False
    settings.EMAIL_TIMEOUT = 5
    settings.DEFAULT_FROM_EMAIL = "Observatory <alerts@observatory.test>"
    yield smtp_server_session
    smtp_server_session.reset()


@pytest.fixture(scope="session")
def webhook_receiver_session():
    from tests.alert_receivers import WebhookReceiver

    receiver = WebhookReceiver().start()
    yield receiver
    receiver.stop()


@pytest.fixture
def webhook_receiver(webhook_receiver_session, settings):
    """An HTTP receiver on 127.0.0.1; short webhook timeout and no backoff, so failures are quick."""
    webhook_receiver_session.reset()
    settings.ALERT_WEBHOOK_TIMEOUT_SECONDS = 0.5
    settings.ALERT_WEBHOOK_TRIES = 2
    settings.ALERT_WEBHOOK_RETRY_DELAY_SECONDS = 0
    settings.SITE_URL = "https://observatory.test"
    yield webhook_receiver_session
    webhook_receiver_session.reset()


@pytest.fixture
def model_prices(db) -> None:
    """SPEC's seeded prices, also after a transactional test (live_server) flushed the table."""
    import importlib

    from django.apps import apps

    importlib.import_module("llm.migrations.0002_seed_model_prices").seed_prices(apps, None)


@pytest.fixture
def provider_prices(model_prices) -> None:
    """Cerebras' and OpenAI's seeded prices too (they route their models), also after a flush."""
    import importlib

    from django.apps import apps

    importlib.import_module("llm.migrations.0014_seed_provider_prices").seed_prices(apps, None)


# Dashboard: a real headless Chromium through Playwright.
# Playwright's sync API runs an event loop in the test thread; Django would then refuse ORM calls
# from that thread, though nothing runs concurrently there.
os.environ.setdefault("DJANGO_ALLOW_ASYNC_UNSAFE", "true")
CHROMIUM = "/usr/bin/chromium"


# The suite that runs the tests marked `one_database` ("sqlite" or "postgresql"). `make test` runs
# both suites side by side and gives them to PostgreSQL's: the SQLite suite, with the browser tests,
# was the longer by ~1.5 min. Run alone, a suite on SQLite runs them.
ONE_DATABASE_SUITE = os.environ.get("OBSERVATORY_ONE_DATABASE_SUITE", "sqlite")


def pytest_collection_modifyitems(config, items):
    """Browser tests last: Playwright's event loop stays in the main thread until the session
    ends, and asyncio.run() refuses to start inside it. Tests marked `one_database` run in one of
    the two suites only (ONE_DATABASE_SUITE): `make test` runs the suite on both databases, and
    these take the same path on either (no database, or their own SQLite file in a subprocess).
    Browser tests in the SQLite suite only: they check what the browser draws and runs, which no
    database changes; every page's figures are checked on both databases without a browser
    (tests/test_pages*.py), and `make run` serves SQLite."""
    _shared_rows_last(items)
    items.sort(key=lambda item: item.get_closest_marker("browser") is not None)
    from django.conf import settings

    suite = "sqlite" if settings.DATABASES["default"]["ENGINE"] == "django.db.backends.sqlite3" else "postgresql"
    for item in items:
        if item.get_closest_marker("browser"):  # whatever else it is marked
            if suite != "sqlite":
                item.add_marker(pytest.mark.skip(reason="browser: run in the SQLite suite"))
        elif item.get_closest_marker("one_database") and suite != ONE_DATABASE_SUITE:
            reason = f"one_database: the same on every database, run in the {ONE_DATABASE_SUITE} suite"
            item.add_marker(pytest.mark.skip(reason=reason))


def _shared_rows_last(items: list[pytest.Item]) -> None:
    """In each run of one module's tests, those that read rows made once for the module
    (`module_transaction`) after those that do not: these expect the empty database they always had.
    Runs, not modules: pytest-django has already put a module's transactional tests apart."""
    runs: list[list[pytest.Item]] = []
    for item in items:
        if runs and runs[-1][0].module is item.module:
            runs[-1].append(item)
        else:
            runs.append([item])
    items[:] = [
        item for run in runs for item in sorted(run, key=lambda item: "module_transaction" in item.fixturenames)
    ]


@pytest.fixture(scope="module")
def module_transaction(django_db_setup, django_db_blocker):
    """A transaction around the tests of a module, rolled back after the last: a module-scoped fixture
    that takes this one writes rows that module's tests share once (under `django_db_blocker.unblock()`)
    instead of once per test. Each test's own transaction (`django_db`) is a savepoint inside it, so
    what a test writes is still undone after it. Not for transactional tests: pytest-django runs those
    after the others, when this transaction has ended."""
    from django.db import transaction

    with django_db_blocker.unblock():
        atomic = transaction.atomic()
        atomic.__enter__()
    try:
        yield
    finally:
        with django_db_blocker.unblock():
            transaction.set_rollback(True)
            atomic.__exit__(None, None, None)


@pytest.fixture(scope="session")
def screenshots(tmp_path_factory) -> Path:
    """Where page screenshots go: SCREENSHOT_DIR when set (scripts/update-screenshots collects them
    from there for docs/screenshots), otherwise a temporary folder pytest makes and prunes."""
    if directory := os.environ.get("SCREENSHOT_DIR"):
        return Path(directory)
    return tmp_path_factory.mktemp("screenshots")


@pytest.fixture(scope="session")
def chromium():
    if not os.path.exists(CHROMIUM):
        pytest.fail(f"{CHROMIUM} is missing: run scripts/install-system-deps (Debian package chromium)")
    from playwright.sync_api import sync_playwright

    with sync_playwright() as playwright:
        browser = playwright.chromium.launch(executable_path=CHROMIUM, args=["--disable-gpu"])
        yield browser
        browser.close()


@pytest.fixture
def page_for(chromium, live_server, staff_user):
    """page_for(width) -> a logged-in page (log_in=False: a fresh one); collects console errors and
    failed requests in page.problems."""
    contexts = []

    def open_page(width: int = 1280, *, log_in: bool = True):
        context = chromium.new_context(viewport={"width": width, "height": 900}, accept_downloads=True)
        contexts.append(context)
        page = context.new_page()
        page.problems = []
        page.on("console", lambda message: message.type == "error" and page.problems.append(message.text))
        page.on("pageerror", lambda error: page.problems.append(str(error)))
        page.on("requestfailed", lambda request: page.problems.append(f"failed: {request.url}"))
        page.on(
            "response",
            lambda response: response.status >= 400 and page.problems.append(f"{response.status}: {response.url}"),
        )
        if not log_in:
            return page
        page.goto(f"{live_server.url}/accounts/login/")
        page.fill("#id_username", "alice")
        page.fill("#id_password", "secret-password")
        page.click("button[type=submit]")
        page.wait_for_url(f"{live_server.url}/")
        return page

    yield open_page
    for context in contexts:
        context.close()
