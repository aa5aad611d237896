"""The SSRF guard: fan-out connects only to public addresses, unless an endpoint allows more.

An endpoint URL comes from configuration, but the address behind its host name comes
from DNS at connection time. The guard therefore runs twice: when the configuration
loads (:func:`check_endpoint_host`, so a mistake shows at start-up), and on every new
connection after resolution (:func:`resolve_checked`, used by the fan-out transport,
which then connects to the checked address itself: a DNS answer that changes between
the check and the connect cannot redirect it).

Refused unless the endpoint sets ``allow_private_network``: loopback, private (RFC 1918,
unique-local), link-local, shared (CGNAT), multicast, reserved and unspecified
addresses: everything that is not globally routable. Cloud metadata addresses are
refused even then: no subscriber lives there. An IPv6 address that embeds an IPv4 one
(IPv4-mapped ``::ffff:a.b.c.d``, NAT64 ``64:ff9b::a.b.c.d``, 6to4) is judged by the
embedded address as well.

The classification is pure; only the two resolve functions do I/O.
"""

from __future__ import annotations

import asyncio
import ipaddress
import socket
from collections.abc import Awaitable, Callable

from .._errors import UnsafeEndpointError

__all__ = [
    "METADATA_ADDRESSES",
    "Resolver",
    "check_endpoint_host",
    "refusal_reason",
    "resolve_checked",
]

IPAddress = ipaddress.IPv4Address | ipaddress.IPv6Address
#: ``async resolve(host, port) -> addresses``: injectable for tests of a DNS change.
Resolver = Callable[[str, int], Awaitable[list[str]]]

#: Instance metadata services of the major clouds (AWS, ECS tasks, Azure, Alibaba, AWS IPv6).
METADATA_ADDRESSES = frozenset(
    ipaddress.ip_address(text)
    for text in (
        "169.254.169.254",
        "169.254.170.2",
        "168.63.129.16",
        "100.100.100.200",
        "fd00:ec2::254",
    )
)
_NAT64 = ipaddress.ip_network("64:ff9b::/96")


def _embedded_ipv4(address: ipaddress.IPv6Address) -> ipaddress.IPv4Address | None:
    if address.ipv4_mapped is not None:
        return address.ipv4_mapped
    if address in _NAT64:
        return ipaddress.IPv4Address(int(address) & 0xFFFFFFFF)
    if address.sixtofour is not None:
        return address.sixtofour
    return None


def refusal_reason(address: IPAddress | str, *, allow_private_network: bool = False) -> str | None:
    """Why the guard refuses ``address`` (e.g. ``"loopback"``), or None when it may be used."""
    if isinstance(address, str):
        address = ipaddress.ip_address(address.split("%", 1)[0])  # drop an IPv6 zone
    candidates: list[IPAddress] = [address]
    if isinstance(address, ipaddress.IPv6Address):
        embedded = _embedded_ipv4(address)
        if embedded is not None:
            candidates.insert(0, embedded)  # named by what it really reaches
    for candidate in candidates:
        if candidate in METADATA_ADDRESSES:
            return "a cloud metadata address"
    if allow_private_network:
        return None
    for candidate in candidates:
        reason = _kind(candidate)
        if reason is not None:
            return reason
    return None


def _kind(address: IPAddress) -> str | None:
    if address.is_loopback:
        return "a loopback address"
    if address.is_link_local:
        return "a link-local address"
    if address.is_unspecified:
        return "the unspecified address"
    if address.is_multicast:
        return "a multicast address"
    if address.is_private:
        return "a private address"
    if not address.is_global:
        return "not a globally routable address"
    return None


def _literal(host: str) -> IPAddress | None:
    try:
        return ipaddress.ip_address(host.strip("[]").split("%", 1)[0])
    except ValueError:
        return None


def check_endpoint_host(
    endpoint: str, host: str, *, allow_private_network: bool, resolve: bool = True
) -> None:
    """Refuse ``host`` if it is, or (with ``resolve``) resolves to, a refused address.

    Raises UnsafeEndpointError. Resolution uses the system resolver, synchronously: this
    runs when a configuration loads, not on the delivery path. A name that does not
    resolve now passes: the check at connection time still applies.
    """
    literal = _literal(host)
    if literal is not None:
        reason = refusal_reason(literal, allow_private_network=allow_private_network)
        if reason is not None:
            raise UnsafeEndpointError(endpoint, host, reason)
        return
    name = host.rstrip(".").lower()
    if not allow_private_network and (name == "localhost" or name.endswith(".localhost")):
        raise UnsafeEndpointError(endpoint, host, "a loopback name")
    if not resolve:
        return
    try:
        infos = socket.getaddrinfo(host, None, type=socket.SOCK_STREAM)
    except (socket.gaierror, UnicodeError):
        return
    for info in infos:
        address = str(info[4][0])
        reason = refusal_reason(address, allow_private_network=allow_private_network)
        if reason is not None:
            raise UnsafeEndpointError(endpoint, f"{host} ({address})", reason)


async def system_resolve(host: str, port: int) -> list[str]:
    """The addresses of ``host`` from the system resolver (no I/O for a literal address)."""
    literal = _literal(host)
    if literal is not None:
        return [str(literal)]
    loop = asyncio.get_running_loop()
    infos = await loop.getaddrinfo(host, port, type=socket.SOCK_STREAM)
    return list(dict.fromkeys(str(info[4][0]) for info in infos))


async def resolve_checked(
    endpoint: str,
    host: str,
    port: int,
    *,
    allow_private_network: bool,
    resolve: Resolver = system_resolve,
) -> list[str]:
    """Resolve ``host`` and return its addresses; raise UnsafeEndpointError if any is refused.

    Every address is checked, not only the first: a name answering with one public and
    one private address is refused as a whole.
    """
    addresses = await resolve(host, port)
    if not addresses:
        raise OSError(f"{host} resolved to no address")
    for address in addresses:
        reason = refusal_reason(address, allow_private_network=allow_private_network)
        if reason is not None:
            raise UnsafeEndpointError(endpoint, f"{host} ({address})", reason)
    return addresses
