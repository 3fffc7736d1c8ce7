"""Where the server may send HTTP requests: the guard against server-side request forgery.

A rule's webhook (or a channel's URL) is typed in by users, so without a guard anyone who may edit
a rule could make the server POST to `http://169.254.169.254/...` (cloud metadata), to itself, or
to a service on the private network. So an outbound URL must be `http`/`https`, and every address
its host resolves to must be a public one: not loopback, link-local, private, CGNAT, multicast,
unspecified, reserved or a cloud metadata address, unless OUTBOUND_ALLOWED_NETWORKS names it.

The check runs twice: when a URL is saved (a model validator, so admin and the API refuse it with
the field's name), and at delivery, where `resolve_pinned` resolves the host once, checks every
address, and answers the address to connect to. The caller connects to that very address (keeping
the Host header and TLS server name), so DNS cannot answer a public address to the check and a
private one to the connection (DNS rebinding).
"""

from __future__ import annotations

import ipaddress
import socket
from dataclasses import dataclass
from urllib.parse import urlsplit, urlunsplit

from django.conf import settings
from django.core.exceptions import ValidationError

IPAddress = ipaddress.IPv4Address | ipaddress.IPv6Address

# Host names of cloud metadata services, refused by name whatever they resolve to.
METADATA_HOSTS = frozenset({"metadata.google.internal", "metadata.goog", "metadata", "instance-data"})
METADATA_ADDRESSES = frozenset(
    ipaddress.ip_address(address)
    for address in ("169.254.169.254", "169.254.170.2", "100.100.100.200", "fd00:ec2::254", "fd00:ec2::23")
)
# Carrier-grade NAT (RFC 6598): not "private" to Python, but not reachable from the internet either.
CGNAT = ipaddress.ip_network("100.64.0.0/10")


class OutboundURLError(ValueError):
    """The URL may not be called: the message says why (for a 400, a delivery error, a log line)."""


def address_class(address: IPAddress) -> str | None:
    """The kind of non-public address this is ("loopback", "private", ...), or None for a public one."""
    if isinstance(address, ipaddress.IPv6Address) and address.ipv4_mapped is not None:
        return address_class(address.ipv4_mapped)  # ::ffff:127.0.0.1 is 127.0.0.1
    # Order matters: the metadata addresses are also link-local or private, and say more.
    checks = [
        ("metadata", address in METADATA_ADDRESSES),
        ("unspecified", address.is_unspecified),
        ("loopback", address.is_loopback),
        ("link-local", address.is_link_local),
        ("multicast", address.is_multicast),
        ("CGNAT", isinstance(address, ipaddress.IPv4Address) and address in CGNAT),
        # Before "private": Python counts 240.0.0.0/4 (reserved) as private too.
        ("reserved", address.is_reserved),
        ("private", address.is_private),
        ("non-public", not address.is_global),
    ]
    return next((name for name, matches in checks if matches), None)


def allowed_networks() -> list[ipaddress.IPv4Network | ipaddress.IPv6Network]:
    return [ipaddress.ip_network(network, strict=False) for network in settings.OUTBOUND_ALLOWED_NETWORKS]


def refusal(address: IPAddress) -> str | None:
    """Why the server may not connect to `address` ("a loopback address"), or None when it may."""
    kind = address_class(address)
    if kind is None:
        return None
    if any(address in network for network in allowed_networks() if network.version == address.version):
        return None
    return f"a {kind} address"


def split_url(url: str) -> tuple[str, str, int]:
    """(scheme, host, port) of an http(s) URL; raises OutboundURLError for anything else."""
    try:
        parts = urlsplit(url)
        port = parts.port
    except ValueError as error:
        raise OutboundURLError(f"Not a valid URL: {error}") from None
    if parts.scheme not in ("http", "https"):
        raise OutboundURLError(f"Not an http(s) URL: {url!r}")
    host = (parts.hostname or "").rstrip(".")
    if not host:
        raise OutboundURLError("The URL has no host.")
    return parts.scheme, host, port or (443 if parts.scheme == "https" else 80)


def resolve(host: str, port: int) -> list[IPAddress]:
    """Every address `host` resolves to (an IP literal answers itself); raises OutboundURLError."""
    try:
        return [ipaddress.ip_address(host)]
    except ValueError:
        pass
    try:
        infos = socket.getaddrinfo(host, port, type=socket.SOCK_STREAM)
    except (socket.gaierror, UnicodeError) as error:
        raise OutboundURLError(f"Cannot resolve {host}: {error}") from None
    # The scope id (fe80::1%eth0) is not part of the address class.
    addresses = [ipaddress.ip_address(info[4][0].split("%")[0]) for info in infos]
    return list(dict.fromkeys(addresses))


def check_addresses(host: str, addresses: list[IPAddress]) -> None:
    """Raise OutboundURLError unless every address may be called."""
    if host.lower() in METADATA_HOSTS:
        raise OutboundURLError(f"Refused: {host} is a cloud metadata service.")
    for address in addresses:
        reason = refusal(address)
        if reason:
            what = f"{address} is" if host == str(address) else f"{host} resolves to {address},"
            raise OutboundURLError(f"Refused: {what} {reason} (allow it with OUTBOUND_ALLOWED_NETWORKS).")


@dataclass(frozen=True)
class PinnedURL:
    """A checked URL and the address to connect to: `url` has the address in place of the host;
    `host_header` and `server_name` keep the original name for HTTP and for TLS (SNI, certificate)."""

    url: str
    host_header: str
    server_name: str


def resolve_pinned(url: str) -> PinnedURL:
    """Resolve the URL's host, check every address, and answer the URL pinned to the first one.

    Raises OutboundURLError when any address is refused (a name with one private address among
    public ones is refused: the connection could land on either)."""
    scheme, host, port = split_url(url)
    addresses = resolve(host, port)
    if not addresses:
        raise OutboundURLError(f"Cannot resolve {host}: no address.")
    check_addresses(host, addresses)
    address = addresses[0]
    parts = urlsplit(url)
    literal = f"[{address}]" if address.version == 6 else str(address)
    netloc = literal if parts.port is None else f"{literal}:{parts.port}"
    userinfo, _, host_header = parts.netloc.rpartition("@")  # user:password@ never goes in a Host header
    if userinfo:
        netloc = f"{userinfo}@{netloc}"
    pinned = urlunsplit((scheme, netloc, parts.path or "/", parts.query, ""))
    return PinnedURL(url=pinned, host_header=host_header, server_name=host)


def validate_outbound_url(value: str) -> None:
    """Model validator: refuse a URL the server may not call, as far as can be told now.

    A name that does not resolve today is accepted (it may be created later); delivery checks
    again, every time, so the answer it gets then is what counts."""
    if not value:
        return
    try:
        scheme, host, port = split_url(value)
        try:
            addresses = resolve(host, port)
        except OutboundURLError:
            addresses = []
        check_addresses(host, addresses)
    except OutboundURLError as error:
        raise ValidationError(str(error), code="outbound_url") from None
