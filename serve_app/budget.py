"""What a replica holds at once: requests in flight (`InFlight`, which serve_app/shedding.py
bounds), and bytes.

Bytes a replica holds for requests at once (append bodies, inline output answers), shared
fairly between namespaces: past its budget a request is 503 `overloaded` with `Retry-After`
(RFC 9110 §15.6.4), so no burst of big requests takes the replica's memory, and no one
namespace can hold more than its share of it, so a tenant that opens slow or stalled
requests never starves another tenant's.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from contextlib import contextmanager

from actors.admission import retry_after_s
from storage.errors import Overloaded

#: A namespace may hold at most this part of a budget.
NAMESPACE_SHARE = 0.5


class ByteBudget:
    """At most `limit` bytes held at once by all requests, `limit * NAMESPACE_SHARE` by the
    requests of one namespace. `what` names the bytes in the 503's message."""

    def __init__(self, limit: int, *, what: str) -> None:
        self.limit = limit
        self.namespace_limit = int(limit * NAMESPACE_SHARE)
        self.what = what
        self.held = 0
        self._by_namespace: dict[str, int] = {}

    @contextmanager
    def hold(self, namespace: str) -> Iterator[Callable[[int], None]]:
        """`take(n)` holds n more bytes for this request (`Overloaded` when they do not fit);
        all of them are given back when the block ends."""
        taken = 0

        def take(size: int) -> None:
            nonlocal taken
            self.check(namespace, size)
            self.held += size
            self._by_namespace[namespace] = self._by_namespace.get(namespace, 0) + size
            taken += size

        try:
            yield take
        finally:
            self.held -= taken
            left = self._by_namespace.pop(namespace, 0) - taken
            if left:
                self._by_namespace[namespace] = left

    def check(self, namespace: str, size: int) -> None:
        """`Overloaded` unless `size` more bytes fit now, for the replica and for `namespace`."""
        ours = self._by_namespace.get(namespace, 0)
        if self.held + size > self.limit or ours + size > self.namespace_limit:
            raise Overloaded(
                f"this replica holds {self.held} bytes of {self.what} ({ours} for this"
                f" namespace), its most is {self.limit} ({self.namespace_limit} a namespace);"
                " retry after the Retry-After seconds",
                retry_after_s=retry_after_s(1.0),
            )


class InFlight:
    """The requests a replica works on, and its two bounds: how many at once (`limit`), and
    how long a request may have waited before the replica starts on it (`max_queued_s`)."""

    def __init__(self, limit: int, *, max_queued_s: float | None = None) -> None:
        self.limit = limit
        self.max_queued_s = max_queued_s
        self.count = 0
        #: Requests refused since the replica started.
        self.shed = 0

    def enter(self, *, queued_s: float | None = None) -> str | None:
        """Take a place for a request that waited `queued_s` (if known) to get here; else
        why not (and the request counts as shed)."""
        if self.max_queued_s is not None and queued_s is not None and queued_s > self.max_queued_s:
            most = f"{self.max_queued_s:g}"
            why = f"this request waited {queued_s:.1f} s for the replica (at most {most} s)"
        elif self.count >= self.limit:
            why = f"this replica is working on {self.limit} requests"
        else:
            self.count += 1
            return None
        self.shed += 1
        return why

    def leave(self) -> None:
        self.count -= 1
