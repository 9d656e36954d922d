"""Calls to a shard actor are bounded: one Ray holds (restarting, or on a node just lost)
becomes `ShardUnavailable` after `call_timeout_s`, a long-poll after its own wait too.

A fake actor handle stands in for Ray's: `handle.method.remote(...)` returns what awaits."""

from __future__ import annotations

import asyncio
import time
from typing import Any

import pytest

from actors.shard_client import _ActorShard
from storage.errors import ShardUnavailable


class Method:
    def __init__(self, handle: Handle, name: str) -> None:
        self._handle, self._name = handle, name

    def remote(self, *args: Any, **kwargs: Any) -> asyncio.Future[Any]:
        self._handle.calls.append((self._name, kwargs))
        return self._handle.answer(self._name, kwargs)


class Handle:
    """Answers every call after `delay_s` (forever when None) with the method's name."""

    def __init__(self, delay_s: float | None) -> None:
        self.delay_s = delay_s
        self.calls: list[tuple[str, dict[str, Any]]] = []

    def __getattr__(self, name: str) -> Method:
        return Method(self, name)

    def answer(self, name: str, kwargs: dict[str, Any]) -> asyncio.Future[Any]:
        future = asyncio.get_running_loop().create_future()
        if self.delay_s is not None:
            result = [name] * len(kwargs.get("calls", [])) if name == "many" else name
            asyncio.get_running_loop().call_later(self.delay_s, future.set_result, result)
        return future


async def timed(call: Any) -> tuple[Any, float]:
    started = time.monotonic()
    try:
        result = await call
    except ShardUnavailable as exc:
        result = exc
    return result, time.monotonic() - started


async def test_a_call_to_a_shard_that_does_not_answer_is_unavailable_after_the_bound():
    shard = _ActorShard(Handle(None), call_timeout_s=0.2)
    result, took_s = await timed(shard.get("acme", job_id="j"))
    assert isinstance(result, ShardUnavailable) and result.retry_after_s
    assert 0.2 <= took_s < 5


async def test_a_coalesced_write_waits_at_most_the_bound_even_behind_a_call_already_out():
    handle = Handle(None)
    shard = _ActorShard(handle, call_timeout_s=0.4)
    first = asyncio.ensure_future(shard.append("acme", job_id="j", chunks=[b"a"]))
    await asyncio.sleep(0.05)  # the first write's call is out: the next one waits for it...
    assert len(handle.calls) == 1
    second, took_s = await timed(shard.append("acme", job_id="j", chunks=[b"b"]))
    # ...but not for it to time out (at 0.4 s) and then for its own call (0.75 s in all)
    assert isinstance(second, ShardUnavailable) and took_s < 0.6
    assert isinstance((await timed(first))[0], ShardUnavailable)


async def test_a_long_poll_may_wait_its_own_timeout_beyond_the_bound():
    shard = _ActorShard(Handle(0.5), call_timeout_s=0.2)
    result, _ = await timed(shard.watch("acme", job_id="j", revision=1, timeout_s=0.6))
    assert result == "watch"
    result, _ = await timed(shard.watch("acme", job_id="j", revision=1, timeout_s=0.0))
    assert isinstance(result, ShardUnavailable)


@pytest.mark.parametrize("delay_s", [0.0, 0.05])
async def test_a_shard_that_answers_within_the_bound_is_answered(delay_s):
    shard = _ActorShard(Handle(delay_s), call_timeout_s=1.0)
    assert await shard.get("acme", job_id="j") == "get"
    assert await shard.append("acme", job_id="j", chunks=[b"a"]) == "append"
