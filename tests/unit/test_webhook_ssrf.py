"""The SSRF guard refuses internal destinations; every test resolves through a fake (or, for
the system resolver, a DNS server on loopback)."""

from __future__ import annotations

import asyncio
import ipaddress
import socket
import time
from collections.abc import Sequence

import aiodns
import pytest

from actors.webhooks import ssrf
from actors.webhooks.ssrf import check_url, parse_allowed_networks, resolve_and_check
from storage.errors import DnsUnavailable, Invalid

LOOPBACK = parse_allowed_networks("127.0.0.0/8, ::1/128")


class FakeResolver:
    """Answers from a table and records every lookup; unknown names fail like NXDOMAIN."""

    def __init__(self, table: dict[str, Sequence[str]]) -> None:
        self.table = table
        self.lookups: list[tuple[str, int]] = []

    async def __call__(self, host: str, port: int) -> Sequence[str]:
        self.lookups.append((host, port))
        if host not in self.table:
            raise socket.gaierror(socket.EAI_NONAME, "Name or service not known")
        return self.table[host]


@pytest.mark.parametrize(
    ("url", "reason"),
    [
        ("ftp://example.com/x", "scheme"),
        ("file:///etc/passwd", "scheme"),
        ("gopher://example.com/", "scheme"),
        ("//example.com/hook", "scheme"),
        ("http:///hook", "no host"),
        ("https://user:secret@example.com/hook", "credentials"),
        ("https://user@example.com/hook", "credentials"),
        ("http://example.com\\@127.0.0.1/", "credentials"),
        ("https://example.com/" + "a" * 2048, "longer than 2048"),
        ("http://example.com:99999/", "port"),
        ("http://2130706433/", "canonical"),
        ("http://127.1/", "canonical"),
        ("http://0x7f.0.0.1/", "canonical"),
    ],
)
def test_check_url_refuses_malformed_urls(url: str, reason: str) -> None:
    with pytest.raises(Invalid, match=reason):
        check_url(url, allowed=())


@pytest.mark.parametrize(
    "url",
    [
        "http://127.0.0.1/",
        "http://[::1]:8080/",
        "http://10.0.0.1/",
        "http://172.16.5.4/",
        "http://192.168.1.1/",
        "http://169.254.169.254/latest/meta-data/",
        "http://0.0.0.0/",
        "http://100.64.0.1/",
        "http://224.0.0.1/",
        "http://255.255.255.255/",
        "http://[fe80::1]/",
        "http://[fc00::1]/",
        "http://[fd12:3456::1]/",
        "http://[fec0::1]/",
        "http://[ff02::1]/",
        "http://[::]/",
        "http://[::ffff:10.0.0.1]/",
        "http://[::ffff:169.254.169.254]/",
        "http://[2002:a00:1::]/",
        "http://[64:ff9b::7f00:1]/",
    ],
)
def test_check_url_refuses_literal_internal_ips(url: str) -> None:
    with pytest.raises(Invalid, match="blocked"):
        check_url(url, allowed=())


@pytest.mark.parametrize(
    "url",
    [
        "https://hooks.example.com/jobs?x=1",
        "http://example.com:8080/",
        "https://8.8.8.8/hook",
        "https://[2606:4700::1111]/hook",
        "https://[::ffff:8.8.8.8]/hook",
    ],
)
def test_check_url_accepts_public_urls(url: str) -> None:
    check_url(url, allowed=())


def test_check_url_accepts_literal_ip_inside_allowed_network() -> None:
    check_url("http://127.0.0.1:9000/hook", allowed=LOOPBACK)
    check_url("http://[::1]:9000/hook", allowed=LOOPBACK)


async def test_resolved_public_addresses_are_returned() -> None:
    resolver = FakeResolver({"hooks.example.com": ["93.184.216.34", "2606:2800:220:1::1"]})
    addresses = await resolve_and_check(
        "https://hooks.example.com/x", allowed=(), resolver=resolver
    )
    assert addresses == [
        ipaddress.ip_address("93.184.216.34"),
        ipaddress.ip_address("2606:2800:220:1::1"),
    ]
    assert resolver.lookups == [("hooks.example.com", 443)]


@pytest.mark.parametrize(
    "answer",
    [
        "127.0.0.1",
        "10.0.0.1",
        "169.254.169.254",
        "::1",
        "fd00::1",
        "::ffff:192.168.0.1",
        "fe80::1%eth0",
    ],
)
async def test_name_resolving_to_internal_address_is_refused(answer: str) -> None:
    resolver = FakeResolver({"evil.example.com": [answer]})
    with pytest.raises(Invalid, match=r"evil\.example\.com .* blocked"):
        await resolve_and_check("http://evil.example.com/", allowed=(), resolver=resolver)


async def test_one_internal_address_among_public_ones_is_refused() -> None:
    resolver = FakeResolver({"mixed.example.com": ["93.184.216.34", "10.1.2.3"]})
    with pytest.raises(Invalid, match="private"):
        await resolve_and_check("http://mixed.example.com/", allowed=(), resolver=resolver)


async def test_allowed_network_admits_a_resolved_internal_address() -> None:
    resolver = FakeResolver({"receiver.internal": ["10.20.0.5"]})
    allowed = parse_allowed_networks("10.20.0.0/16")
    addresses = await resolve_and_check(
        "http://receiver.internal:8080/", allowed=allowed, resolver=resolver
    )
    assert addresses == [ipaddress.ip_address("10.20.0.5")]
    assert resolver.lookups == [("receiver.internal", 8080)]


async def test_literal_ip_is_checked_without_dns() -> None:
    resolver = FakeResolver({})
    assert await resolve_and_check(
        "http://127.0.0.1:1234/", allowed=LOOPBACK, resolver=resolver
    ) == [ipaddress.ip_address("127.0.0.1")]
    with pytest.raises(Invalid, match="link-local"):
        await resolve_and_check("http://169.254.169.254/", allowed=(), resolver=resolver)
    assert resolver.lookups == []


async def test_unresolvable_host_is_invalid_with_the_resolver_error_as_cause() -> None:
    with pytest.raises(Invalid, match="cannot resolve") as caught:
        await resolve_and_check("http://nx.example.com/", allowed=(), resolver=FakeResolver({}))
    assert isinstance(caught.value.__cause__, OSError)


async def test_host_with_no_addresses_is_refused() -> None:
    resolver = FakeResolver({"empty.example.com": []})
    with pytest.raises(Invalid, match="no address"):
        await resolve_and_check("http://empty.example.com/", allowed=(), resolver=resolver)


async def test_malformed_url_is_refused_before_any_lookup() -> None:
    resolver = FakeResolver({})
    with pytest.raises(Invalid, match="scheme"):
        await resolve_and_check("ftp://example.com/", allowed=(), resolver=resolver)
    assert resolver.lookups == []


def test_parse_allowed_networks_reads_a_comma_separated_list() -> None:
    assert parse_allowed_networks(" 127.0.0.0/8, ::1/128 ,10.0.0.5") == (
        ipaddress.ip_network("127.0.0.0/8"),
        ipaddress.ip_network("::1/128"),
        ipaddress.ip_network("10.0.0.5/32"),
    )
    assert parse_allowed_networks("") == ()
    assert parse_allowed_networks(" , ") == ()


@pytest.mark.parametrize("text", ["garbage", "127.0.0.0/33", "10.1.2.3/8", "127.0.0.0/8;::1/128"])
def test_parse_allowed_networks_rejects_garbage(text: str) -> None:
    with pytest.raises(ValueError, match="allowed list"):
        parse_allowed_networks(text)


async def test_lookups_that_never_answer_all_fail_at_once_within_the_timeout(monkeypatch) -> None:
    """A DNS server that never answers (a batch of 200 such hosts) holds no lookup longer
    than the timeout, and holds no other lookup at all: they run side by side."""
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as silent:
        silent.bind(("127.0.0.1", 0))
        loop = asyncio.get_running_loop()
        channel = aiodns.DNSResolver(
            loop=loop, nameservers=[f"127.0.0.1:{silent.getsockname()[1]}"], timeout=0.2, tries=1
        )
        monkeypatch.setitem(ssrf._RESOLVERS, loop, (channel, asyncio.Semaphore(ssrf.MAX_LOOKUPS)))
        started = time.monotonic()
        results = await asyncio.gather(
            *(ssrf.resolve_and_check(f"http://h{i}.example.com/", allowed=()) for i in range(200)),
            return_exceptions=True,
        )
    # A timeout says nothing of the URL: retry later (503), not "invalid" (422).
    assert all(isinstance(r, DnsUnavailable) and r.retry_after_s for r in results), results[:3]
    assert time.monotonic() - started < 10  # one after another: 200 x 0.2 s = 40 s


@pytest.mark.parametrize(
    "url",
    [
        "http://1.2.3.4\\@evil.example/",  # httpx: user "1.2.3.4\" at evil.example; yarl: refused
        "http://a.example\\b.example/",
    ],
)
def test_urls_the_two_parsers_read_differently_are_refused(url: str) -> None:
    with pytest.raises(Invalid, match=r"webhook URL (is malformed|is ambiguous|must not carry)"):
        check_url(url, allowed=())


async def test_the_system_resolver_reads_the_hosts_file() -> None:
    assert "127.0.0.1" in await ssrf.system_resolver("localhost", 80)


async def test_a_lookup_that_fails_for_now_is_retryable_and_a_missing_name_is_invalid() -> None:
    async def flaky(host: str, port: int) -> Sequence[str]:
        if host == "busy.example":
            raise socket.gaierror(socket.EAI_AGAIN, "Temporary failure in name resolution")
        raise socket.gaierror(socket.EAI_NONAME, "Name or service not known")

    with pytest.raises(DnsUnavailable, match="just now"):
        await resolve_and_check("http://busy.example/", allowed=(), resolver=flaky)
    with pytest.raises(Invalid, match="cannot resolve"):
        await resolve_and_check("http://missing.example/", allowed=(), resolver=flaky)
