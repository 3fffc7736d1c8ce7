from __future__ import annotations

import pytest
from rest_framework.test import APIClient

from llm.models import APIKey
from tests.fake_groq import FakeGroq


@pytest.fixture(scope="session")
def fake_groq_server():
    server = FakeGroq().start()
    yield server
    server.stop()


@pytest.fixture
def fake_groq(fake_groq_server, settings):
    """The fake Groq server, reset, with the app pointed at it."""
    fake_groq_server.reset()
    settings.GROQ_BASE_URL = fake_groq_server.base_url
    settings.GROQ_API_KEY = "gsk_test_key"
    settings.GROQ_MAX_RETRIES = 0
    settings.GROQ_TIMEOUT_SECONDS = 5.0
    yield fake_groq_server
    fake_groq_server.reset()


@pytest.fixture(autouse=True)
def _test_settings(settings):
    settings.PASSWORD_HASHERS = ["django.contrib.auth.hashers.MD5PasswordHasher"]
    settings.STORE_PROMPTS = True
    settings.REDACT_PII = False
    settings.EMAIL_BACKEND = "django.core.mail.backends.locmem.EmailBackend"


@pytest.fixture
def api_key(db) -> str:
    _, raw_key = APIKey.generate("tests")
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
def staff_user(django_user_model):
    return django_user_model.objects.create_user("alice", "alice@example.com", "secret-password", is_staff=True)


@pytest.fixture
def logged_in_client(staff_user) -> APIClient:
    client = APIClient()
    client.force_login(staff_user)
    return client


# Alerts (issue 4): real SMTP and webhook peers on 127.0.0.1.


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
