"""SSRF guard for webhook URLs: refuse any destination inside our own network.

`check_url` is the cheap, DNS-free check for the API edge; `resolve_and_check` (and
`resolve_host`) the delivery-time check of every resolved address. The sender connects to
exactly the addresses `resolve_host` approved (actors/webhooks/sender.py), so a DNS answer
that changes between the check and the connect (rebinding) cannot reach inside. URLs are
parsed by httpx's parser and by yarl's (aiohttp's, which the sender uses), and refused when
the two disagree on the host or port: the host we check is the host it dials.
"""

from __future__ import annotations

import asyncio
import functools
import ipaddress
import socket
from collections.abc import Awaitable, Callable, Iterable, Sequence
from typing import TypeAlias

import aiodns
import httpx
import pycares
from yarl import URL

from actors.limits import MAX_URL_CHARS, check_size, check_storable
from storage.errors import DnsUnavailable, Invalid

Address: TypeAlias = ipaddress.IPv4Address | ipaddress.IPv6Address
Network: TypeAlias = ipaddress.IPv4Network | ipaddress.IPv6Network
# (host, port) -> the addresses it resolves to, as strings ("10.0.0.1", "::1").
Resolver: TypeAlias = Callable[[str, int], Awaitable[Sequence[str]]]

DEFAULT_PORTS = {"http": 80, "https": 443}
#: One DNS query may take this long (seconds) before it is tried once more, then fails.
RESOLVE_TIMEOUT_S = 2.0
RESOLVE_TRIES = 2
# RFC 6052 well-known NAT64 prefix: 64:ff9b::a.b.c.d reaches a.b.c.d.
_NAT64 = ipaddress.IPv6Network("64:ff9b::/96")
# Checked in order; the first that matches names the refusal.
_BLOCKED_KINDS = (
    ("is_unspecified", "unspecified"),
    ("is_loopback", "loopback"),
    ("is_link_local", "link-local"),
    ("is_multicast", "multicast"),
    ("is_site_local", "site-local"),
    ("is_private", "private"),
    ("is_reserved", "reserved"),
)


def parse_allowed_networks(text: str) -> tuple[Network, ...]:
    """Parse a comma-separated CIDR list ("127.0.0.0/8, ::1/128"); ValueError on garbage."""
    networks = []
    for item in (part.strip() for part in text.split(",")):
        if not item:
            continue
        try:
            # strict: "10.1.2.3/8" is more likely a typo than a wish for all of 10/8.
            networks.append(ipaddress.ip_network(item, strict=True))
        except ValueError as exc:
            raise ValueError(f"invalid network {item!r} in allowed list: {exc}") from exc
    return tuple(networks)


def check_shape(url: object) -> str:
    """The URL, if it is a well-formed http(s) URL a webhook may use (no address policy)."""
    if not isinstance(url, str):
        raise Invalid("a webhook URL must be a string")
    _parse(url, None)
    return url


def check_url(url: str, *, allowed: Sequence[Network]) -> tuple[str, int]:
    """Refuse a webhook URL by its shape alone (no DNS); a literal IP is checked too.
    Returns the URL's (host, port)."""
    host, port, _ = _parse(url, allowed)
    return host, port


async def resolve_and_check(
    url: str, *, allowed: Sequence[Network], resolver: Resolver | None = None
) -> list[Address]:
    """Resolve the URL's host and refuse it unless every address is public or allowed.

    Raises `Invalid` for a refused URL, including one whose host does not resolve
    (then `__cause__` is the resolver's `OSError`). Returns the checked addresses.
    """
    host, port, literal = _parse(url, allowed)
    if literal is not None:
        return [literal]
    return await resolve_host(host, port, allowed=allowed, resolver=resolver)


async def resolve_host(
    host: str, port: int, *, allowed: Sequence[Network], resolver: Resolver | None = None
) -> list[Address]:
    """`host`'s addresses, each public or in `allowed`, else `Invalid` (as `resolve_and_check`)."""
    literal = _literal_ip(host)
    addresses = [literal] if literal is not None else await _resolve(host, port, resolver)
    for address in addresses:
        _check_address(address, allowed, host=host)
    return addresses


async def system_resolver(host: str, port: int) -> list[str]:
    """The default resolver: the system's DNS servers and hosts file, asked by c-ares
    (aiodns) on the event loop, each query bounded by `RESOLVE_TIMEOUT_S` x `RESOLVE_TRIES`.

    Not `getaddrinfo` on the default thread pool: its few threads cannot cancel a lookup,
    so a burst of hosts that never answer (a batch of 1,000 such webhook URLs) held every
    other lookup for minutes. Raises `socket.gaierror` when the name does not resolve.
    """
    resolver, gate = _dns()
    try:
        async with gate:
            result = await resolver.getaddrinfo(host, port=port, type=socket.SOCK_STREAM)
    except aiodns.error.DNSError as exc:
        code, *detail = exc.args or (None,)
        reason = detail[0] if detail else "DNS lookup failed"
        # As getaddrinfo says it: the name does not exist, or (EAI_AGAIN) not now.
        eai = socket.EAI_NONAME if code in _NO_SUCH_NAME else socket.EAI_AGAIN
        raise socket.gaierror(eai, reason) from exc
    return [node.addr[0].decode("ascii") for node in result.nodes]


_NO_SUCH_NAME = (pycares.errno.ARES_ENOTFOUND, pycares.errno.ARES_ENODATA)
#: Lookups at once per event loop: a burst queues here instead of flooding the DNS server
#: (1,000 at once made some time out).
MAX_LOOKUPS = 64
_RESOLVERS: dict[asyncio.AbstractEventLoop, tuple[aiodns.DNSResolver, asyncio.Semaphore]] = {}


def _dns() -> tuple[aiodns.DNSResolver, asyncio.Semaphore]:
    """This event loop's c-ares channel and lookup gate (they belong to the loop they were
    made on)."""
    loop = asyncio.get_running_loop()
    made = _RESOLVERS.get(loop)
    if made is None:
        for old in [old for old in _RESOLVERS if old.is_closed()]:
            del _RESOLVERS[old]
        resolver = aiodns.DNSResolver(loop=loop, timeout=RESOLVE_TIMEOUT_S, tries=RESOLVE_TRIES)
        made = _RESOLVERS[loop] = (resolver, asyncio.Semaphore(MAX_LOOKUPS))
    return made


def _parse(url: str, allowed: Sequence[Network] | None) -> tuple[str, int, Address | None]:
    """The URL's host, port and, when the host is a literal IP, that address (checked
    against `allowed` unless it is None). Remembered: the dispatcher checks every send."""
    return _parse_cached(url, None if allowed is None else tuple(allowed))


@functools.lru_cache(maxsize=4096)
def _parse_cached(url: str, allowed: tuple[Network, ...] | None) -> tuple[str, int, Address | None]:
    check_size("webhook URL", len(url), MAX_URL_CHARS)
    parsed = _httpx_url(url)
    if parsed.scheme not in DEFAULT_PORTS:
        raise Invalid(f"webhook URL scheme must be http or https, not {parsed.scheme!r}")
    if not parsed.host:
        raise Invalid("webhook URL has no host")
    if parsed.userinfo:
        raise Invalid("webhook URL must not carry credentials (user:password@)")
    port = DEFAULT_PORTS[parsed.scheme] if parsed.port is None else parsed.port  # 0 is no default
    if not 0 < port < 65536:
        raise Invalid(f"webhook URL port {port} is out of range")
    _check_agreed(url, parsed.raw_host.decode("ascii"), port)
    literal = _literal_ip(parsed.host)
    if literal is None:
        _check_dns_name(parsed.raw_host.decode("ascii"))
    elif allowed is not None:
        _check_address(literal, allowed, host=parsed.host)
    return parsed.host, port, literal


def _httpx_url(url: str) -> httpx.URL:
    check_storable("webhook URL", url)
    try:
        parsed = httpx.URL(url)
        parsed.host  # noqa: B018  # decodes an IDNA A-label, which may be malformed
    except (httpx.InvalidURL, UnicodeError) as exc:  # UnicodeError: idna's IDNAError too
        raise Invalid(f"webhook URL is malformed: {exc}") from exc
    return parsed


def _check_agreed(url: str, raw_host: str, port: int) -> None:
    """yarl (which aiohttp dials with) must read the host (ASCII, IDNA-encoded) and the port
    that httpx read."""
    try:
        other = URL(url)
        other_host, other_port = other.raw_host, other.port
    except (ValueError, TypeError, UnicodeError) as exc:
        raise Invalid(f"webhook URL is malformed: {exc}") from exc
    if _host_key(other_host or "") != _host_key(raw_host) or other_port != port:
        raise Invalid("webhook URL is ambiguous: URL parsers read its host or port differently")


def _host_key(host: str) -> object:
    """A host as compared: an IP literal by its address (yarl rewrites IPv6 ones), a name
    case-blind."""
    try:
        return ipaddress.ip_address(host)
    except ValueError:
        return host.lower()


def _check_dns_name(host: str) -> None:
    """A host name as DNS carries it (RFC 1035 §2.3.4): labels of 1 to 63 octets, 253 in all;
    `host` is the ASCII (IDNA-encoded) form."""
    labels = host.removesuffix(".").split(".")
    if len(host) > 253 or not all(0 < len(label) <= 63 for label in labels):
        raise Invalid(f"webhook URL host {host[:80]!r} is not a valid DNS name")


def _literal_ip(host: str) -> Address | None:
    try:
        return ipaddress.ip_address(host)
    except ValueError:
        pass
    if _ends_in_number(host):
        # "127.1", "2130706433", "0x7f.1": resolvers read these as IPv4 in disguise.
        raise Invalid(f"webhook URL host {host!r} is not a canonical IP address")
    return None


def _ends_in_number(host: str) -> bool:
    """WHATWG's rule: a host whose last label is numeric is an IPv4 address."""
    last = host.rstrip(".").rsplit(".", 1)[-1].lower()
    if last.startswith("0x"):
        return all(c in "0123456789abcdef" for c in last[2:])
    return last.isdigit()


async def _resolve(host: str, port: int, resolver: Resolver | None) -> list[Address]:
    try:
        answers = await (resolver or system_resolver)(host, port)
    except socket.gaierror as exc:
        if exc.errno == socket.EAI_AGAIN:
            raise DnsUnavailable(
                f"cannot resolve webhook host {host!r} just now ({exc.strerror}); retry shortly",
                retry_after_s=RESOLVE_TIMEOUT_S,
            ) from exc
        raise Invalid(f"cannot resolve webhook host {host!r}: {exc}") from exc
    except (OSError, UnicodeError) as exc:  # UnicodeError: the codec refused the name
        raise Invalid(f"cannot resolve webhook host {host!r}: {exc}") from exc
    addresses = _unique(ipaddress.ip_address(answer) for answer in answers)
    if not addresses:
        raise Invalid(f"webhook host {host!r} resolved to no address")
    return addresses


def _unique(addresses: Iterable[Address]) -> list[Address]:
    return list(dict.fromkeys(addresses))


def _check_address(address: Address, allowed: Sequence[Network], *, host: str) -> None:
    target = _embedded_ipv4(address) or address
    if any(a in net for net in allowed for a in (address, target)):
        return
    kind = _blocked_kind(target)
    if kind is not None:
        shown = host if host == str(address) else f"{host} ({address})"
        raise Invalid(f"webhook host {shown} is blocked: {kind} address")


def _embedded_ipv4(address: Address) -> ipaddress.IPv4Address | None:
    """The IPv4 address an IPv6 one really reaches (mapped, 6to4, NAT64), if any."""
    if isinstance(address, ipaddress.IPv4Address):
        return None
    if address.ipv4_mapped is not None:
        return address.ipv4_mapped
    if address.sixtofour is not None:
        return address.sixtofour
    if address in _NAT64:
        return ipaddress.IPv4Address(int(address) & 0xFFFFFFFF)
    return None


def _blocked_kind(address: Address) -> str | None:
    for attribute, kind in _BLOCKED_KINDS:
        if getattr(address, attribute, False):
            return kind
    # Catch-all for special ranges without a flag of their own (e.g. 100.64/10 CGNAT).
    return None if address.is_global else "non-global"
