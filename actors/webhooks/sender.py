"""One webhook HTTP attempt on aiohttp: the SSRF check, a per-destination limit, a POST to the
address the check approved, and the outcome as an `Attempt`.

aiohttp rather than httpx: on this hot path a bare aiohttp loop sends ~6,000 requests/s to a
local receiver where httpx sends ~220 (DESIGN-NOTES 31). httpx stays for tests and clients.
"""

from __future__ import annotations

import asyncio
import socket
import ssl
import time
from collections.abc import AsyncIterator, Callable, Sequence
from contextlib import asynccontextmanager
from dataclasses import dataclass
from types import TracebackType

import aiohttp
from aiohttp.abc import AbstractResolver, ResolveResult

from actors.limits import MAX_ATTEMPT_ERROR_CHARS, clip, storable
from actors.webhooks import ssrf
from actors.webhooks.backoff import retry_after_s
from storage.errors import DnsUnavailable, Invalid
from storage.records import Attempt

#: Open connections at most, over all destinations.
MAX_CONNECTIONS = 8192
#: An idle keep-alive connection is closed after this many seconds.
KEEPALIVE_S = 30.0
#: The TCP (and TLS) connect may take at most this long, within the attempt's timeout.
CONNECT_TIMEOUT_S = 5.0
# We only need the status and headers; reading a little lets a small reply keep its
# connection alive, while a huge or endless reply is cut off (its connection is then dropped).
MAX_RESPONSE_BYTES = 64 * 1024


@dataclass(slots=True)
class _Gate:
    """A destination's semaphore and how many sends hold or await it."""

    semaphore: asyncio.Semaphore
    users: int = 0


class WebhookSender:
    """Posts signed webhook bodies; every outcome, failures included, is an `Attempt`.

    Connections are pooled and kept alive (`MAX_CONNECTIONS` in all). Each one goes to an
    address the SSRF guard resolved and approved for that very connection (`resolver`,
    default: the system's DNS), while the URL's host stays in `Host` and is the TLS server
    name: a DNS answer that changes between the check and the connect cannot reach inside
    our network. Concurrency is bounded per destination (host and port, `per_host_limit`),
    so a slow receiver cannot take the capacity other receivers need. Redirects are never
    followed; `ssl_context` (default: the system's trust store) verifies HTTPS receivers.
    """

    def __init__(
        self,
        *,
        per_host_limit: int = 16,
        allowed_networks: Sequence[ssrf.Network] = (),
        resolver: ssrf.Resolver | None = None,
        ssl_context: ssl.SSLContext | None = None,
        clock: Callable[[], float] = time.time,
    ) -> None:
        if per_host_limit < 1:
            raise Invalid(f"per_host_limit must be at least 1, not {per_host_limit}")
        self._per_host_limit = per_host_limit
        self._allowed = tuple(allowed_networks)
        self._resolver = resolver
        self._ssl: ssl.SSLContext | bool = ssl_context or True
        self._clock = clock
        self._gates: dict[tuple[str, int], _Gate] = {}
        self._session: aiohttp.ClientSession | None = None

    async def open(self) -> None:
        if self._session is None:
            connector = aiohttp.TCPConnector(
                limit=MAX_CONNECTIONS,
                limit_per_host=self._per_host_limit,
                keepalive_timeout=KEEPALIVE_S,
                resolver=_CheckingResolver(self._allowed, self._resolver),
                ssl=self._ssl,
            )
            # trust_env=False: a proxy from the environment would dial the destination itself,
            # past our address check, and .netrc credentials must never leak out. No cookies,
            # and replies are not decompressed: we read at most their first bytes.
            self._session = aiohttp.ClientSession(
                connector=connector,
                trust_env=False,
                cookie_jar=aiohttp.DummyCookieJar(),
                auto_decompress=False,
                timeout=aiohttp.ClientTimeout(total=None),
            )

    async def close(self) -> None:
        if self._session is not None:
            await self._session.close()
            self._session = None

    async def __aenter__(self) -> WebhookSender:
        await self.open()
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        await self.close()

    async def send(
        self, *, url: str, headers: dict[str, str], body: bytes, timeout_s: float
    ) -> Attempt:
        """POST `body` to `url` once. Never raises for a delivery failure.

        `timeout_s` bounds the whole attempt (DNS check, connect, send, reply), not
        each phase; time spent queued behind the per-destination limit is not counted.
        A `Retry-After` in the reply (RFC 9110 §10.2.3) is kept as `Attempt.retry_after_s`.
        """
        if self._session is None:
            raise RuntimeError("WebhookSender is not open: call open() or use `async with`")
        started_at, started = self._clock(), time.perf_counter()
        try:
            # The shape and a literal IP (aiohttp does not resolve those) are checked here;
            # a host name is checked by the resolver, for each connection it makes.
            destination = ssrf.check_url(url, allowed=self._allowed)
        except Invalid as exc:
            return _attempt(started_at, started, None, _rejection(exc))
        async with self._slot(destination):
            started_at, started = self._clock(), time.perf_counter()
            status, retry_after, error = await self._try(url, headers, body, timeout_s)
        return _attempt(started_at, started, status, error, retry_after)

    async def _try(
        self, url: str, headers: dict[str, str], body: bytes, timeout_s: float
    ) -> tuple[int | None, float | None, str | None]:
        assert self._session is not None
        connect = aiohttp.ClientTimeout(sock_connect=min(timeout_s, CONNECT_TIMEOUT_S))
        try:
            async with (
                asyncio.timeout(timeout_s),
                self._session.post(
                    url,
                    data=body,
                    headers=headers,
                    allow_redirects=False,
                    timeout=connect,
                ) as response,
            ):
                await _drain(response, MAX_RESPONSE_BYTES)
                waited = retry_after_s(response.headers.get("Retry-After"), now=self._clock())
                return response.status, waited, None
        except (Invalid, DnsUnavailable) as exc:
            return None, None, _rejection(exc)
        except TimeoutError:  # aiohttp's own timeouts are TimeoutErrors too
            return None, None, "timeout"
        except aiohttp.ClientError as exc:
            return None, None, _describe(exc)

    @asynccontextmanager
    async def _slot(self, destination: tuple[str, int]) -> AsyncIterator[None]:
        gate = self._gates.get(destination)
        if gate is None:
            gate = self._gates[destination] = _Gate(asyncio.Semaphore(self._per_host_limit))
        gate.users += 1
        try:
            async with gate.semaphore:
                yield
        finally:
            gate.users -= 1
            if gate.users == 0:
                # Forget idle destinations so the map does not grow with every URL seen.
                del self._gates[destination]


class _CheckingResolver(AbstractResolver):
    """aiohttp's resolver, made of the SSRF guard: it resolves a host for a new connection,
    refuses it (`Invalid`) unless every address is public or allowed, and hands aiohttp
    exactly the addresses it checked, so the connection goes to one of them."""

    def __init__(self, allowed: Sequence[ssrf.Network], resolver: ssrf.Resolver | None) -> None:
        self._allowed = allowed
        self._resolver = resolver

    async def resolve(
        self, host: str, port: int = 0, family: socket.AddressFamily = socket.AF_INET
    ) -> list[ResolveResult]:
        addresses = await ssrf.resolve_host(
            host, port, allowed=self._allowed, resolver=self._resolver
        )
        return [
            ResolveResult(
                hostname=host,
                host=str(address),
                port=port,
                family=socket.AF_INET if address.version == 4 else socket.AF_INET6,
                proto=0,
                flags=socket.AI_NUMERICHOST,
            )
            for address in addresses
        ]

    async def close(self) -> None:
        pass


async def _drain(response: aiohttp.ClientResponse, limit: int) -> None:
    """Read and drop at most `limit` raw bytes of the reply; past that, drop its connection."""
    seen = 0
    while seen < limit:
        chunk = await response.content.readany()
        if not chunk:
            return
        seen += len(chunk)
    response.close()


def _attempt(
    at: float,
    started: float,
    status: int | None,
    error: str | None,
    retry_after: float | None = None,
) -> Attempt:
    duration_ms = (time.perf_counter() - started) * 1000
    return Attempt(
        at=at,
        duration_ms=duration_ms,
        status_code=status,
        error=clip(storable(error), MAX_ATTEMPT_ERROR_CHARS) if error is not None else None,
        retry_after_s=retry_after,
    )


def _rejection(exc: Invalid | DnsUnavailable) -> str:
    if isinstance(exc.__cause__, OSError):
        return f"dns error: {exc.message}"
    return f"blocked: {exc.message}"


def _describe(exc: aiohttp.ClientError) -> str:
    detail = str(exc) or type(exc).__name__
    if isinstance(exc, aiohttp.ClientConnectorError):
        return f"connect error: {detail}"
    if isinstance(exc, aiohttp.ClientOSError | aiohttp.ServerDisconnectedError):
        return f"network error: {detail}"
    if isinstance(exc, aiohttp.ClientPayloadError | aiohttp.ClientResponseError):
        return f"protocol error: {detail}"
    return f"http error: {type(exc).__name__}: {detail}"
