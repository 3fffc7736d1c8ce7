"""The outbound URL guard (llm/outbound.py, notifiers.post_json): no webhook or channel may make
the server call loopback, private, link-local, CGNAT, multicast, unspecified or metadata
addresses, at save and at delivery, unless OUTBOUND_ALLOWED_NETWORKS names them."""

from __future__ import annotations

import ipaddress
import json
import ssl
import subprocess
import threading
from datetime import UTC, datetime
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import httpx
import pytest
from django.core.exceptions import ImproperlyConfigured

from core.environment import Environment
from llm import alerts, notifiers, outbound
from llm.models import AlertLog
from tests.alert_receivers import RECEIVER_BODY
from tests.factories import make_alert, make_rule

NOW = datetime(2026, 3, 10, 12, 0, tzinfo=UTC)

# (address in a URL, the class the refusal names)
REFUSED = [
    ("127.0.0.1", "loopback"),
    ("127.8.9.10", "loopback"),
    ("[::1]", "loopback"),
    ("[::ffff:127.0.0.1]", "loopback"),  # IPv4-mapped IPv6 is the IPv4 address
    ("169.254.169.254", "metadata"),
    ("[fd00:ec2::254]", "metadata"),
    ("100.100.100.200", "metadata"),
    ("169.254.10.1", "link-local"),
    ("[fe80::1]", "link-local"),
    ("10.1.2.3", "private"),
    ("172.16.0.1", "private"),
    ("192.168.1.1", "private"),
    ("[fd12:3456::1]", "private"),
    ("100.64.0.1", "CGNAT"),
    ("224.0.0.1", "multicast"),
    ("[ff02::1]", "multicast"),
    ("0.0.0.0", "unspecified"),  # noqa: S104 - an address to refuse, not one to bind
    ("[::]", "unspecified"),
    ("240.0.0.1", "reserved"),
    ("2130706433", "loopback"),  # 127.0.0.1 written as one number: the resolver reads it so
    ("0x7f000001", "loopback"),
]


@pytest.fixture
def no_allow_list(settings):
    settings.OUTBOUND_ALLOWED_NETWORKS = []


@pytest.mark.parametrize(("host", "kind"), REFUSED)
def test_each_address_class_is_refused_at_save_with_a_400_naming_the_field(host, kind, api_client, no_allow_list):
    body = {"name": f"Hook {host}", "metric_type": "cost", "threshold": 1, "webhook_url": f"http://{host}/hook"}
    answer = api_client.post("/api/alerts/rules/", body, format="json")
    assert answer.status_code == 400, answer.content
    # (Django's URL check may refuse the odd spellings as well: then both messages are there.)
    message = " ".join(answer.json()["fields"]["webhook_url"])
    assert f"a {kind} address" in message
    assert "OUTBOUND_ALLOWED_NETWORKS" in message


@pytest.mark.parametrize(("host", "kind"), REFUSED)
def test_address_classes_match_pythons_own_reading(host, kind):
    # Independently of the guard's order of checks: ipaddress says the address is not global.
    literal = host.strip("[]")
    try:
        address = ipaddress.ip_address(literal)
    except ValueError:
        address = ipaddress.ip_address(int(literal, 0))
    mapped = getattr(address, "ipv4_mapped", None) or address
    assert not mapped.is_global or mapped.is_multicast
    assert outbound.address_class(address) == kind


@pytest.mark.parametrize("host", ["93.184.216.34", "[2606:4700::1111]", "8.8.8.8"])
def test_public_addresses_are_accepted(host, api_client, no_allow_list):
    body = {"name": f"Public {host}", "metric_type": "cost", "threshold": 1, "webhook_url": f"https://{host}/hook"}
    assert api_client.post("/api/alerts/rules/", body, format="json").status_code == 201


@pytest.mark.parametrize(
    ("url", "message"),
    [
        ("http://localhost:8000/hook", "localhost resolves to 127.0.0.1, a loopback address"),
        ("http://LOCALHOST./hook", "localhost resolves to 127.0.0.1"),
        ("http://vm/hook", "vm resolves to 127.0.0.1"),  # a name from /etc/hosts
        ("http://metadata.google.internal/computeMetadata/v1/", "cloud metadata service"),
        ("ftp://hooks.example.com/hook", "http"),
        ("gopher://127.0.0.1:6379/_INFO", "http"),
    ],
)
def test_names_and_schemes_are_checked_at_save(url, message, api_client, no_allow_list):
    body = {"name": "Named", "metric_type": "cost", "threshold": 1, "webhook_url": url}
    answer = api_client.post("/api/alerts/rules/", body, format="json")
    assert answer.status_code == 400
    assert message in " ".join(answer.json()["fields"]["webhook_url"])


@pytest.mark.django_db
def test_the_allow_list_lets_a_named_network_through(api_client, settings):
    settings.OUTBOUND_ALLOWED_NETWORKS = ["10.0.5.0/24"]
    allowed = {"name": "Internal", "metric_type": "cost", "threshold": 1, "webhook_url": "http://10.0.5.7/hook"}
    assert api_client.post("/api/alerts/rules/", allowed, format="json").status_code == 201
    outside = {**allowed, "name": "Outside", "webhook_url": "http://10.0.6.7/hook"}
    assert api_client.post("/api/alerts/rules/", outside, format="json").status_code == 400


@pytest.mark.django_db
def test_delivery_checks_again_a_url_that_was_allowed_at_save(webhook_receiver, settings):
    # Saved while the allow-list named 127.0.0.1; the list changed since: nothing is sent.
    rule = make_rule(webhook_url=webhook_receiver.url, notify_email=False)
    settings.OUTBOUND_ALLOWED_NETWORKS = []
    alert = make_alert(rule, triggered_at=NOW)
    assert alerts.deliver(alert, NOW)
    alert.refresh_from_db()
    assert webhook_receiver.requests == []
    result = alert.notifications["webhook"]
    assert result["status"] == "error" and result["attempts"] == 0
    assert result["error"].startswith("Refused: 127.0.0.1 is a loopback address")


@pytest.mark.django_db
def test_a_name_resolving_to_loopback_is_refused_at_delivery_and_allowed_by_the_list(webhook_receiver, settings):
    port = webhook_receiver.server.server_port
    url = f"http://localhost:{port}/hook"
    settings.OUTBOUND_ALLOWED_NETWORKS = []
    with pytest.raises(notifiers.DeliveryError, match="localhost resolves to 127.0.0.1"):
        notifiers.post_json(url, {"text": "hi"})
    assert webhook_receiver.requests == []

    settings.OUTBOUND_ALLOWED_NETWORKS = ["127.0.0.1/32"]
    assert notifiers.post_json(url, {"text": "hi"}) == {"http_status": 200, "attempts": 1}
    # Connected to the checked address, with the URL's own Host header.
    (request,) = webhook_receiver.requests
    assert request.headers["Host"] == f"localhost:{port}"
    assert json.loads(request.body) == {"text": "hi"}


@pytest.mark.django_db
def test_the_default_webhook_setting_is_guarded_too(webhook_receiver, settings):
    settings.ALERT_WEBHOOK_URL = "http://169.254.169.254/latest/meta-data/"
    rule = make_rule(notify_email=False)
    alert = make_alert(rule, triggered_at=NOW)
    alerts.deliver(alert, NOW)
    alert.refresh_from_db()
    assert alert.notifications["webhook"]["error"].startswith("Refused: 169.254.169.254 is a metadata address")


@pytest.mark.django_db
def test_redirects_are_not_followed_to_internal_addresses(webhook_receiver):
    webhook_receiver.status = 302
    webhook_receiver.location = "http://169.254.169.254/latest/meta-data/iam/"
    rule = make_rule(webhook_url=webhook_receiver.url, notify_email=False)
    alert = make_alert(rule, triggered_at=NOW)
    alerts.deliver(alert, NOW)
    alert.refresh_from_db()
    assert len(webhook_receiver.requests) == 1  # no second request, anywhere
    assert alert.notifications["webhook"]["error"] == "HTTP 302 Found"
    assert "169.254" not in json.dumps(alert.notifications)


@pytest.mark.django_db
def test_only_a_status_line_is_kept_of_a_failed_answer(webhook_receiver, logged_in_client):
    webhook_receiver.status = 404
    rule = make_rule(webhook_url=webhook_receiver.url, notify_email=False)
    alert = make_alert(rule, triggered_at=NOW)
    alerts.deliver(alert, NOW)
    alert = AlertLog.objects.get(pk=alert.pk)
    assert alert.notifications["webhook"]["error"] == "HTTP 404 Not Found"
    shown = [
        json.dumps(alert.notifications),
        logged_in_client.get("/alerts/").content.decode(),
        logged_in_client.get(f"/alerts/{rule.pk}/").content.decode(),
        logged_in_client.get("/api/alerts/logs/").content.decode(),
    ]
    assert all(RECEIVER_BODY.decode() not in text for text in shown)
    test = logged_in_client.post(f"/api/alerts/rules/{rule.pk}/test/")
    assert test.json()["notifications"]["webhook"]["error"] == "HTTP 404 Not Found"


def test_pinned_url_keeps_host_port_path_query_and_credentials(settings):
    settings.OUTBOUND_ALLOWED_NETWORKS = ["127.0.0.1/32", "::1/128"]
    pinned = outbound.resolve_pinned("http://user:pw@localhost:8123/hook/x?a=1#frag")
    assert pinned.url == "http://user:pw@127.0.0.1:8123/hook/x?a=1"
    assert (pinned.host_header, pinned.server_name) == ("localhost:8123", "localhost")
    six = outbound.resolve_pinned("https://[::1]/")
    assert six.url == "https://[::1]/" and six.host_header == "[::1]" and six.server_name == "::1"


def test_unresolvable_names_are_accepted_at_save_and_refused_at_delivery():
    outbound.validate_outbound_url("https://hooks.example.invalid/x")  # may exist later: no error
    with pytest.raises(outbound.OutboundURLError, match="Cannot resolve hooks.example.invalid"):
        outbound.resolve_pinned("https://hooks.example.invalid/x")


def test_the_allow_list_setting_is_checked_at_start_up():
    env = Environment()
    env.ENVIRON = {"OUTBOUND_ALLOWED_NETWORKS": "127.0.0.1/32, fd00::/8"}
    assert env.ip_networks("OUTBOUND_ALLOWED_NETWORKS", default=[]) == ["127.0.0.1/32", "fd00::/8"]
    env.ENVIRON = {"OUTBOUND_ALLOWED_NETWORKS": "127.0.0.1/32,intranet"}
    with pytest.raises(ImproperlyConfigured, match="OUTBOUND_ALLOWED_NETWORKS.*'intranet'.*not an IP network"):
        env.ip_networks("OUTBOUND_ALLOWED_NETWORKS", default=[])


@pytest.fixture(scope="module")
def tls_receiver(tmp_path_factory):
    """An HTTPS server on 127.0.0.1 whose self-signed certificate names `localhost` only."""
    folder = tmp_path_factory.mktemp("tls")
    cert, key = folder / "cert.pem", folder / "key.pem"
    subprocess.run(
        ["openssl", "req", "-x509", "-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:prime256v1", "-nodes", "-days",
         "1", "-subj", "/CN=localhost", "-addext", "subjectAltName=DNS:localhost", "-keyout", str(key), "-out",
         str(cert)],
        check=True,
        capture_output=True,
    )  # fmt: skip
    seen: list[dict] = []

    class Handler(BaseHTTPRequestHandler):
        def do_POST(self) -> None:  # noqa: N802 - http.server's hook name
            self.rfile.read(int(self.headers.get("Content-Length", 0)))
            seen.append({"host": self.headers["Host"], "sni": getattr(self.connection, "sni", None)})
            self.send_response(204)
            self.end_headers()

        def log_message(self, *args) -> None:
            pass

    server_context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    server_context.load_cert_chain(cert, key)

    def remember_sni(connection, server_name, _context) -> None:
        connection.sni = server_name

    server_context.sni_callback = remember_sni
    server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    server.socket = server_context.wrap_socket(server.socket, server_side=True)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    yield server.server_port, cert, seen
    server.shutdown()
    server.server_close()


def test_https_to_the_pinned_address_verifies_the_certificate_of_the_name(tls_receiver, settings):
    settings.OUTBOUND_ALLOWED_NETWORKS = ["127.0.0.1/32"]
    port, cert, seen = tls_receiver
    trusting = ssl.create_default_context(cafile=str(cert))
    with httpx.Client(verify=trusting, timeout=5) as client:
        # Connected to 127.0.0.1, yet TLS names localhost: SNI and the certificate check use the name.
        response = notifiers.pinned_post(client, f"https://localhost:{port}/hook", b"{}")
        assert response.status_code == 204
        assert seen[-1] == {"host": f"localhost:{port}", "sni": "localhost"}
        # The same server reached by its address: the certificate does not name it, so it is refused.
        with pytest.raises(httpx.ConnectError, match="CERTIFICATE_VERIFY_FAILED|certificate verify failed"):
            notifiers.pinned_post(client, f"https://127.0.0.1:{port}/hook", b"{}")


@pytest.mark.django_db
def test_the_migration_keeps_only_the_status_line_of_answers_stored_before():
    from importlib import import_module

    from django.apps import apps

    migration = import_module("llm.migrations.0015_alert_channels_and_silences")
    rule = make_rule()
    old = make_alert(rule, triggered_at=NOW)
    old_results = {
        "webhook": {"status": "error", "error": "HTTP 500: <html>internal admin page</html>", "attempts": 3},
        "email": {"status": "sent", "recipients": ["a@example.com"]},
    }
    AlertLog.objects.filter(pk=old.pk).update(notifications=old_results)
    untouched = make_alert(rule, triggered_at=NOW)
    kept = {"webhook": {"status": "error", "error": "timed out after 10s", "attempts": 3}}
    AlertLog.objects.filter(pk=untouched.pk).update(notifications=kept)

    migration.keep_only_status_lines(apps, None)
    old.refresh_from_db()
    assert old.notifications["webhook"] == {"status": "error", "error": "HTTP 500", "attempts": 3}
    assert old.notifications["email"] == old_results["email"]
    untouched.refresh_from_db()
    assert untouched.notifications == kept
