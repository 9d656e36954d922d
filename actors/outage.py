"""A shard's view of its store's health: once a commit fails because the store is
unavailable, new writes are refused at once until a probe finds the store answering again.

Without it, every write that arrived while the store was down waited for a commit of its
own to time out (a store's timeout, ~10 s) before its 503; one behind a failing commit waited
for two. With it, only the writes already in flight when the store went away wait; the rest
are answered 503 `store_unavailable` with `Retry-After` in microseconds, and the shard
writes again as soon as one probe (`Store.ping`) succeeds: no restart, no client's request
spent on finding out.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections.abc import Awaitable, Callable

from storage.errors import StoreUnavailable

log = logging.getLogger(__name__)

#: Between two probes of a store that is down (a probe itself may take the store's timeout).
PROBE_INTERVAL_S = 0.5
#: What a refused write is told to wait (whole seconds on the wire).
OUTAGE_RETRY_AFTER_S = 2.0


class StoreOutage:
    """Closed (writes go to the store) until `begin` opens it; then `check` refuses with
    `StoreUnavailable` and one probe task pings the store every `probe_interval_s` until it
    answers, which closes it. `ping`: the store's `Store.ping`."""

    def __init__(
        self,
        ping: Callable[[], Awaitable[None]],
        *,
        probe_interval_s: float = PROBE_INTERVAL_S,
        retry_after_s: float = OUTAGE_RETRY_AFTER_S,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self._ping = ping
        self._probe_interval_s = probe_interval_s
        self._retry_after_s = retry_after_s
        self._clock = clock
        self._since: float | None = None
        self._probe: asyncio.Task[None] | None = None

    @property
    def down(self) -> bool:
        return self._since is not None

    def begin(self) -> None:
        """A commit failed with `StoreUnavailable`: refuse writes until a probe succeeds."""
        if self._since is None:
            self._since = self._clock()
            log.warning("the store is unavailable: writes are refused until it answers again")
        if self._probe is None or self._probe.done():
            self._probe = asyncio.get_running_loop().create_task(self._until_answered())

    def check(self) -> None:
        """Raise `StoreUnavailable` (with `retry_after_s`) while the store is down."""
        if self._since is not None:
            down_s = self._clock() - self._since
            raise StoreUnavailable(
                f"the store has been unavailable for {down_s:.0f} s; retry shortly",
                retry_after_s=self._retry_after_s,
            )

    async def stop(self) -> None:
        if self._probe is not None:
            self._probe.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._probe

    async def _until_answered(self) -> None:
        while True:
            await asyncio.sleep(self._probe_interval_s)
            try:
                await self._ping()
            except StoreUnavailable:
                continue
            except Exception:  # a backend's bug must not leave writes refused for good
                log.exception("probing the store failed unexpectedly; probing again")
                continue
            if self._since is not None:
                log.warning("the store answers again after %.1f s", self._clock() - self._since)
            self._since = None
            return
