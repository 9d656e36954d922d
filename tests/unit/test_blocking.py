"""Blocking code runs coroutines through `cluster.blocking.run`, from any thread or loop."""

from __future__ import annotations

import asyncio

import pytest

from cluster import blocking
from storage.errors import NotFound


async def _answer() -> int:
    await asyncio.sleep(0)
    return 42


def test_run_returns_the_coroutines_result_from_plain_code():
    assert blocking.run(_answer()) == 42


async def test_run_works_inside_a_running_event_loop():
    # asyncio.run() would refuse here; bootstrap.start is called from async code (bench).
    assert blocking.run(_answer()) == 42


def test_run_raises_the_coroutines_error():
    async def missing() -> None:
        raise NotFound("no such job")

    with pytest.raises(NotFound, match="no such job"):
        blocking.run(missing())
