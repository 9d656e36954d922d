"""How e2e tests wait for the service: poll a condition until a deadline, never a bare sleep."""

from __future__ import annotations

import time
from collections.abc import Callable
from typing import TypeVar

T = TypeVar("T")

POLL_INTERVAL_S = 0.05


def wait_until(
    predicate: Callable[[], T],
    *,
    timeout_s: float,
    what: str,
    state: Callable[[], object] | None = None,
    interval_s: float = POLL_INTERVAL_S,
) -> T:
    """Call `predicate` until it returns something truthy, and return that.

    Raises AssertionError naming `what` (and `state()`, when given) if `timeout_s`
    passes first. An exception raised by `predicate` ends the wait at once.
    """
    deadline = time.monotonic() + timeout_s
    while True:
        value = predicate()
        if value:
            return value
        if time.monotonic() >= deadline:
            now = f"; now: {state()!r}" if state is not None else ""
            raise AssertionError(f"timed out after {timeout_s:g} s waiting for {what}{now}")
        time.sleep(interval_s)  # the poll interval of this helper, not synchronisation
