"""The Ray edge coalesces one tick's writes for a shard into one actor call (`many`), and
each caller still gets exactly its own result or error. A fake handle stands in for Ray."""

from __future__ import annotations

import asyncio
from typing import Any

import pytest

from actors.commands import JobSpec
from actors.shard_client import _ActorShard
from storage.errors import Conflict, ShardUnavailable


class FakeMethod:
    def __init__(self, handle: FakeHandle, name: str) -> None:
        self.handle, self.name = handle, name

    def remote(self, *args: Any, **kwargs: Any) -> Any:
        self.handle.calls.append((self.name, args, kwargs))
        return self.handle.answer(self.name, args, kwargs)


class FakeHandle:
    """Records each actor call; `many` answers each inner call like the shard would."""

    def __init__(
        self, *, fail_many: BaseException | None = None, gate: asyncio.Event | None = None
    ) -> None:
        self.calls: list[tuple[str, tuple[Any, ...], dict[str, Any]]] = []
        self.fail_many = fail_many
        self.gate = gate  # when given, every call waits for it

    def __getattr__(self, name: str) -> FakeMethod:
        return FakeMethod(self, name)

    async def answer(self, name: str, args: tuple[Any, ...], kwargs: dict[str, Any]) -> Any:
        await asyncio.sleep(0)
        if self.gate is not None:
            await self.gate.wait()
        if name == "many":
            if self.fail_many is not None:
                raise self.fail_many
            return [self.one(*call) for call in args[0]]
        return self.one(name, args, kwargs)

    @staticmethod
    def one(name: str, args: tuple[Any, ...], kwargs: dict[str, Any]) -> Any:
        if kwargs.get("job_id") == "taken":
            return Conflict("job 'taken' exists with a different request")
        return (name, kwargs.get("job_id"))


async def test_writes_of_one_tick_go_in_one_call_and_each_caller_gets_its_own_answer():
    handle = FakeHandle()
    shard = _ActorShard(handle)
    results = await asyncio.gather(
        shard.append("acme", job_id="a", chunks=[b"x"]),
        shard.cancel("acme", job_id="b", actor="me"),
        shard.append("acme", job_id="taken", chunks=[b"y"]),
        return_exceptions=True,
    )
    assert [name for name, _, _ in handle.calls] == ["many"]
    inner = handle.calls[0][1][0]
    assert [(name, kwargs["job_id"]) for name, _, kwargs in inner] == [
        ("append", "a"),
        ("cancel", "b"),
        ("append", "taken"),
    ]
    assert results[0] == ("append", "a") and results[1] == ("cancel", "b")
    assert isinstance(results[2], Conflict)  # the error of that call only


async def test_a_complete_goes_alone_never_holding_other_writes():
    """A complete may take seconds (a json document check): coalesced, it would hold the
    appends sent with it."""
    handle = FakeHandle()
    shard = _ActorShard(handle)
    await asyncio.gather(
        shard.append("acme", job_id="a", chunks=[b"x"]),
        shard.complete("acme", job_id="b", completion=None),
    )
    assert sorted(name for name, _, _ in handle.calls) == ["append", "complete"]


async def test_a_lone_write_is_sent_as_itself():
    handle = FakeHandle()
    assert await _ActorShard(handle).append("acme", job_id="a", chunks=[b"x"]) == ("append", "a")
    assert [name for name, _, _ in handle.calls] == ["append"]


async def test_writes_of_separate_ticks_go_in_separate_calls():
    handle = FakeHandle()
    shard = _ActorShard(handle)
    await shard.append("acme", job_id="a", chunks=[b"x"])
    await shard.append("acme", job_id="b", chunks=[b"y"])
    assert [name for name, _, _ in handle.calls] == ["append", "append"]


async def test_reads_and_submits_with_a_webhook_are_never_held_for_others():
    handle = FakeHandle()
    shard = _ActorShard(handle)
    hooked = JobSpec.from_metadata(None, webhook_url="https://example.com/hook")
    plain = JobSpec.from_metadata(None)
    await asyncio.gather(
        shard.get("acme", job_id="r"),
        shard.submit("acme", job_id="h", spec=hooked),
        shard.submit("acme", job_id="p1", spec=plain),
        shard.submit("acme", job_id="p2", spec=plain),
    )
    names = sorted(name for name, _, _ in handle.calls)
    assert names == ["get", "many", "submit"]
    alone = next(kwargs for name, _, kwargs in handle.calls if name == "submit")
    assert alone["job_id"] == "h"


async def test_a_failed_call_fails_every_write_it_carried():
    handle = FakeHandle(fail_many=ShardUnavailable("the shard is restarting; retry shortly"))
    shard = _ActorShard(handle)
    results = await asyncio.gather(
        shard.append("acme", job_id="a", chunks=[b"x"]),
        shard.append("acme", job_id="b", chunks=[b"y"]),
        return_exceptions=True,
    )
    assert all(isinstance(result, ShardUnavailable) for result in results)


async def test_a_caller_that_goes_away_does_not_disturb_the_others():
    handle = FakeHandle()
    shard = _ActorShard(handle)
    leaving = asyncio.ensure_future(shard.append("acme", job_id="a", chunks=[b"x"]))
    staying = asyncio.ensure_future(shard.append("acme", job_id="b", chunks=[b"y"]))
    await asyncio.sleep(0)
    leaving.cancel()
    assert await staying == ("append", "b")
    with pytest.raises(asyncio.CancelledError):
        await leaving


async def test_while_a_call_is_out_later_writes_wait_and_go_together_when_it_returns():
    gate = asyncio.Event()
    handle = FakeHandle(gate=gate)
    shard = _ActorShard(handle)
    first = asyncio.ensure_future(shard.append("acme", job_id="a", chunks=[b"x"]))
    later = []
    for i in range(3):  # each in a tick of its own, while the first call is out
        for _ in range(3):
            await asyncio.sleep(0)
        later.append(asyncio.ensure_future(shard.append("acme", job_id=f"b{i}", chunks=[b"y"])))
    for _ in range(3):
        await asyncio.sleep(0)
    assert [name for name, _, _ in handle.calls] == ["append"]
    gate.set()
    results = await asyncio.gather(first, *later)
    assert [name for name, _, _ in handle.calls] == ["append", "many"]
    assert [kwargs["job_id"] for _, _, kwargs in handle.calls[1][1][0]] == ["b0", "b1", "b2"]
    assert results == [("append", "a"), ("append", "b0"), ("append", "b1"), ("append", "b2")]
