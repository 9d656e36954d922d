"""One webhook HTTP attempt: SSRF re-check, per-destination limit, POST, outcome as an Attempt."""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator, Callable, Sequence
from contextlib import asynccontextmanager
from dataclasses import dataclass
from types import TracebackType

import httpx

from actors.limits import MAX_ATTEMPT_ERROR_CHARS, clip, storable
from actors.webhooks import ssrf
from storage.errors import Invalid
from storage.records import Attempt

MAX_CONNECTIONS = 512
MAX_KEEPALIVE_CONNECTIONS = 128
KEEPALIVE_EXPIRY_S = 30.0
# We only need the status; reading a little lets a small reply keep its connection
# alive, while a huge or endless reply is cut off (its connection is then dropped).
MAX_RESPONSE_BYTES = 64 * 1024


@dataclass(slots=True)
class _Gate:
    """A destination's semaphore and how many sends hold or await it."""

    semaphore: asyncio.Semaphore
    users: int = 0


class WebhookSender:
    """Posts signed webhook bodies; every outcome, failures included, is an `Attempt`.

    The client is injectable (`http`); when none is given, `open()` makes a pooled
    one and `close()` closes it. Concurrency is bounded per destination (host and
    port), so a slow receiver cannot take the capacity other receivers need.
    """

    def __init__(
        self,
        *,
        http: httpx.AsyncClient | None = None,
        per_host_limit: int = 16,
        allowed_networks: Sequence[ssrf.Network] = (),
        resolver: ssrf.Resolver | None = None,
        clock: Callable[[], float] = time.time,
    ) -> None:
        if per_host_limit < 1:
            raise Invalid(f"per_host_limit must be at least 1, not {per_host_limit}")
        self._http = http
        self._owns_http = http is None
        self._per_host_limit = per_host_limit
        self._allowed = tuple(allowed_networks)
        self._resolver = resolver
        self._clock = clock
        self._gates: dict[tuple[str, int | None], _Gate] = {}

    async def open(self) -> None:
        if self._http is None:
            self._http = _new_client()

    async def close(self) -> None:
        if self._owns_http and self._http is not None:
            await self._http.aclose()
            self._http = None

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
        """
        client = self._client()
        started_at, started = self._clock(), time.perf_counter()
        try:
            ssrf.check_url(url, allowed=self._allowed)
        except Invalid as exc:
            return _attempt(started_at, started, None, _rejection(exc))
        async with self._slot(_destination(url)):
            started_at, started = self._clock(), time.perf_counter()
            status, error = await self._try(client, url, headers, body, timeout_s)
        return _attempt(started_at, started, status, error)

    def _client(self) -> httpx.AsyncClient:
        if self._http is None:
            raise RuntimeError("WebhookSender is not open: call open() or use `async with`")
        return self._http

    async def _try(
        self,
        client: httpx.AsyncClient,
        url: str,
        headers: dict[str, str],
        body: bytes,
        timeout_s: float,
    ) -> tuple[int | None, str | None]:
        try:
            async with asyncio.timeout(timeout_s):
                # At delivery time, not only at registration: DNS may have changed since.
                await ssrf.resolve_and_check(url, allowed=self._allowed, resolver=self._resolver)
                return await _post(client, url, headers, body, timeout_s), None
        except Invalid as exc:
            return None, _rejection(exc)
        except (TimeoutError, httpx.TimeoutException):
            return None, "timeout"
        except httpx.HTTPError as exc:
            return None, _describe(exc)

    @asynccontextmanager
    async def _slot(self, destination: tuple[str, int | None]) -> AsyncIterator[None]:
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


def _new_client() -> httpx.AsyncClient:
    limits = httpx.Limits(
        max_connections=MAX_CONNECTIONS,
        max_keepalive_connections=MAX_KEEPALIVE_CONNECTIONS,
        keepalive_expiry=KEEPALIVE_EXPIRY_S,
    )
    # trust_env=False: a proxy from the environment would dial the destination
    # itself, past our address check, and .netrc credentials must never leak out.
    return httpx.AsyncClient(limits=limits, follow_redirects=False, trust_env=False)


async def _post(
    client: httpx.AsyncClient, url: str, headers: dict[str, str], body: bytes, timeout_s: float
) -> int:
    # follow_redirects=False per request too, whatever the injected client says: a
    # redirect could point anywhere, including inside our network.
    async with client.stream(
        "POST", url, headers=headers, content=body, timeout=timeout_s, follow_redirects=False
    ) as response:
        await _drain(response, MAX_RESPONSE_BYTES)
        return response.status_code


async def _drain(response: httpx.Response, limit: int) -> None:
    """Read and drop at most `limit` raw (still compressed) bytes of the reply."""
    if response.is_stream_consumed:
        return  # built in memory (e.g. by a test transport): nothing left on the wire
    seen = 0
    async for chunk in response.aiter_raw():
        seen += len(chunk)
        if seen >= limit:
            break


def _destination(url: str) -> tuple[str, int | None]:
    parsed = httpx.URL(url)
    return parsed.host, parsed.port


def _attempt(at: float, started: float, status: int | None, error: str | None) -> Attempt:
    duration_ms = (time.perf_counter() - started) * 1000
    return Attempt(
        at=at,
        duration_ms=duration_ms,
        status_code=status,
        error=clip(storable(error), MAX_ATTEMPT_ERROR_CHARS) if error is not None else None,
    )


def _rejection(exc: Invalid) -> str:
    if isinstance(exc.__cause__, OSError):
        return f"dns error: {exc.message}"
    return f"blocked: {exc.message}"


def _describe(exc: httpx.HTTPError) -> str:
    detail = str(exc) or type(exc).__name__
    if isinstance(exc, httpx.ConnectError):
        return f"connect error: {detail}"
    if isinstance(exc, httpx.NetworkError):
        return f"network error: {detail}"
    if isinstance(exc, httpx.ProtocolError):
        return f"protocol error: {detail}"
    return f"http error: {type(exc).__name__}: {detail}"
