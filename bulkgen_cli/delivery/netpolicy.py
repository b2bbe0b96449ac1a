"""Where the notifications of a job submitted over HTTP may go (design.md, "Notifications from HTTP jobs").

A job submitted through `bulkgen serve` carries this policy (the operator's
allow lists at submit time, and the user's own address), and whichever
processor delivers its notifications applies it again when it sends: the
webhook's host is resolved, every address checked, and the request connects to
the checked address itself, so a name that resolves elsewhere between the check
and the connection (DNS rebinding) gains nothing. Jobs submitted with the CLI
carry no policy and keep their behaviour.
"""

from __future__ import annotations

import ipaddress
import socket
from dataclasses import dataclass
from typing import Any, Callable, Union
from urllib.parse import urlsplit

from bulkgen_cli.core.errors import UsageError
from bulkgen_cli.core.text import quoted

Address = Union[ipaddress.IPv4Address, ipaddress.IPv6Address]
Network = Union[ipaddress.IPv4Network, ipaddress.IPv6Network]


class Refused(UsageError):
    """A notification target the job's policy does not allow. `why` is the operator's detail (for the
    server's log: "cannot be resolved", "loopback", ...); the message a user reads never carries it."""

    def __init__(self, message: str, why: str = ""):
        super().__init__(message)
        self.why = why


def not_reachable(host: str, why: str) -> Refused:
    """One sentence whatever the reason: telling "cannot be resolved" from "private" would let a remote user
    learn which internal names exist (design.md, "Notifications from HTTP jobs")."""
    return Refused(f"webhook host {quoted(host)} is not allowed: a webhook reaches only hosts with public "
                   "addresses unless the server's operator allows the host or its network with "
                   "`bulkgen serve --webhook-allow HOST|NETWORK`.", why)


def system_resolve(host: str, port: int) -> list[str]:
    """The addresses `host` resolves to (the system's resolver)."""
    infos = socket.getaddrinfo(host, port, type=socket.SOCK_STREAM)
    return list(dict.fromkeys(str(info[4][0]) for info in infos))


#: The resolver used for every check; tests replace it to control what a name resolves to.
resolve: Callable[[str, int], list[str]] = system_resolve


@dataclass(frozen=True)
class Policy:
    #: hosts (exact names) and networks (CIDR) that webhooks may reach although not public
    webhook_allow: tuple[str, ...] = ()
    #: e-mail domains any address of which is allowed
    email_allow: tuple[str, ...] = ()
    #: the submitting user's own address (from their token)
    user_email: str | None = None

    def to_record(self) -> dict[str, Any]:
        return {"origin": "http", "webhook_allow": list(self.webhook_allow), "email_allow": list(self.email_allow),
                "user_email": self.user_email}

    @classmethod
    def from_record(cls, record: dict[str, Any]) -> Policy:
        return cls(tuple(record.get("webhook_allow") or ()), tuple(record.get("email_allow") or ()),
                   record.get("user_email"))

    def networks(self) -> list[Network]:
        return [ipaddress.ip_network(entry, strict=False) for entry in self.webhook_allow if _is_network(entry)]


def _is_network(entry: str) -> bool:
    try:
        ipaddress.ip_network(entry, strict=False)
    except ValueError:
        return False
    return True


def parse_allow(entries: list[str]) -> tuple[str, ...]:
    """`--webhook-allow` values: a host name, an address or a CIDR network."""
    out = []
    for entry in entries:
        entry = entry.strip().lower()
        if not entry or "/" in entry and not _is_network(entry):
            raise UsageError(f"--webhook-allow {quoted(entry)}: give a host name, an address or a network "
                             "such as 10.0.0.0/8.")
        out.append(entry)
    return tuple(out)


def why_not_public(address: Address) -> str | None:
    """Why a webhook may not reach this address without an allow entry, or None when it is public."""
    if isinstance(address, ipaddress.IPv6Address):
        # An IPv4 address carried inside IPv6 (mapped, 6to4, Teredo's client) is judged as that IPv4
        # address: a relay or tunnel may deliver 2002:7f00:1:: to 127.0.0.1.
        embedded = address.ipv4_mapped or address.sixtofour or (address.teredo[1] if address.teredo else None)
        if embedded is not None:
            address = embedded
    checks = (("loopback", address.is_loopback), ("link-local (cloud metadata lives there)", address.is_link_local),
              ("multicast", address.is_multicast), ("unspecified", address.is_unspecified),
              ("private", address.is_private), ("reserved", address.is_reserved or not address.is_global))
    return next((reason for reason, hit in checks if hit), None)


def check_webhook(url: str, policy: Policy) -> list[str]:
    """The addresses a webhook may connect to (resolved now), or Refused saying why not."""
    parts = urlsplit(url)
    host = (parts.hostname or "").lower()
    try:
        port = parts.port or (443 if parts.scheme == "https" else 80)
    except ValueError:
        raise Refused(f"webhook {quoted(url, 80)}: the port is not a number.") from None
    try:
        addresses = resolve(host, port)
    except (OSError, UnicodeError):
        raise not_reachable(host, "cannot be resolved") from None
    if not addresses:
        raise not_reachable(host, "cannot be resolved")
    if host in policy.webhook_allow:
        return addresses
    networks = policy.networks()
    for text in addresses:
        address = ipaddress.ip_address(text.split("%")[0])
        reason = why_not_public(address)
        if reason and not any(address in net for net in networks if net.version == address.version):
            # The rule, never the address: what the server's resolver answers is not the user's to learn.
            raise not_reachable(host, reason)
    return addresses


def check_email(address: str, policy: Policy) -> None:
    """Refused unless the address is the user's own or in an allowed domain."""
    domain = address.rpartition("@")[2].lower()
    if policy.user_email and address.lower() == policy.user_email.lower():
        return
    if domain in (d.lower() for d in policy.email_allow):
        return
    raise Refused(f"e-mail to {quoted(address)} is not allowed: only to your own address (recorded with your "
                  "token) or to a domain the operator allows with `bulkgen serve --email-allow DOMAIN`.")


def check_channels(channels: list[str], policy: Policy) -> None:
    """Check every channel of a job submitted over HTTP, at submit; Refused names the first that fails."""
    for channel in channels:
        kind, _, target = channel.partition(":")
        if kind == "webhook":
            check_webhook(target, policy)
        elif kind == "email":
            check_email(target, policy)


def pinned_request(url: str, address: str) -> tuple[str, dict[str, str], dict[str, Any]]:
    """The URL that connects to `address` itself, with the Host header and TLS name of the original host."""
    parts = urlsplit(url)
    host = parts.hostname or ""
    literal = f"[{address}]" if ":" in address else address
    netloc = literal + (f":{parts.port}" if parts.port else "")
    headers = {"Host": parts.netloc.rpartition("@")[2]}
    extensions = {"sni_hostname": host} if parts.scheme == "https" else {}
    return parts._replace(netloc=netloc).geturl(), headers, extensions
