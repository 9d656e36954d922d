"""Coroutines run to completion from blocking code: the Python client's calls, bootstrap's."""

from __future__ import annotations

import asyncio
import functools
import threading
from collections.abc import Coroutine
from typing import Any, TypeVar

T = TypeVar("T")


def run(call: Coroutine[Any, Any, T]) -> T:
    """`call`'s result (or its exception), from any thread, even one whose own event loop
    is running (inside an async Ray actor, or async code that calls blocking code)."""
    return asyncio.run_coroutine_threadsafe(call, _loop()).result()


@functools.cache
def _loop() -> asyncio.AbstractEventLoop:
    """One event loop in a daemon thread, for the whole process."""
    loop = asyncio.new_event_loop()
    threading.Thread(target=loop.run_forever, name="aos-blocking", daemon=True).start()
    return loop
