"""The dispatcher client: concurrent sends batched into streaming calls, failures as attempts."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from typing import Any

import pytest

from actors.webhooks.delivery import Sending
from actors.webhooks.dispatcher import Outgoing
from actors.webhooks.dispatcher_client import DispatcherClient
from storage.records import Attempt, Delivery
from tests.unit.fakes import WAIT_S, until

_END = object()


class Call:
    """One `deliver_many` call: its batch, and a stream of outcomes the test feeds."""

    def __init__(self, batch: list[Outgoing], started_at: float) -> None:
        self.batch = batch
        self.started_at = started_at
        self._items: asyncio.Queue[Any] = asyncio.Queue()

    def answer(self, *outcomes: tuple[int, int]) -> None:
        """Stream one item: [(index, attempt with status code), ...]."""
        self._items.put_nowait([(i, Attempt(1000.0, 1.0, code)) for i, code in outcomes])

    def fail(self, exc: Exception) -> None:
        self._items.put_nowait(exc)

    def end(self) -> None:
        self._items.put_nowait(_END)

    async def stream(self) -> AsyncIterator[list[tuple[int, Attempt]]]:
        while True:
            item = await self._items.get()
            if item is _END:
                return
            if isinstance(item, Exception):
                raise item
            yield item


class FakeDispatcher:
    """Stands in for the Serve handle: `handle.options(stream=True).deliver_many.remote(batch)`."""

    def __init__(self) -> None:
        self.calls: list[Call] = []
        self.down: Exception | None = None

    def options(self, *, stream: bool) -> FakeDispatcher:
        assert stream
        return self

    @property
    def deliver_many(self) -> FakeDispatcher:
        return self

    def remote(self, batch: list[Outgoing]) -> AsyncIterator[list[tuple[int, Attempt]]]:
        if self.down is not None:
            raise self.down
        call = Call(batch, asyncio.get_running_loop().time())
        self.calls.append(call)
        return call.stream()


@pytest.fixture
def dispatcher() -> FakeDispatcher:
    return FakeDispatcher()


@pytest.fixture
def client(dispatcher: FakeDispatcher) -> DispatcherClient:
    return DispatcherClient(lambda: dispatcher, max_starting=1)


def _delivery(name: str) -> Delivery:
    return Delivery(name, "acme", "j", 0, "job.completed", "http://x/", name.encode(), 1000.0)


def _send(client: DispatcherClient, name: str) -> asyncio.Task[Attempt]:
    return asyncio.create_task(client.send(_delivery(name), ("whsec_x",), 5.0))


async def _call(dispatcher: FakeDispatcher, number: int) -> Call:
    await until(lambda: len(dispatcher.calls) >= number)
    return dispatcher.calls[number - 1]


async def _outcome(send: asyncio.Task[Attempt]) -> Attempt:
    return await asyncio.wait_for(send, WAIT_S)


def _names(call: Call) -> list[str]:
    return [item.delivery_id for item in call.batch]


async def test_sends_queued_while_a_call_starts_go_out_together(client, dispatcher):
    first = _send(client, "a")
    call = await _call(dispatcher, 1)
    later = [_send(client, name) for name in ("b", "c", "d")]
    await until(lambda: len(client._queue) == 3)
    assert len(dispatcher.calls) == 1  # the first call is still starting
    call.answer((0, 200))
    call.end()
    second = await _call(dispatcher, 2)
    assert _names(call) == ["a"] and _names(second) == ["b", "c", "d"]
    assert second.batch[0].body == b"b" and second.batch[0].secrets == ("whsec_x",)
    second.answer((0, 200), (1, 201), (2, 202))
    second.end()
    assert [(await _outcome(t)).status_code for t in (first, *later)] == [200, 200, 201, 202]


async def test_outcomes_reach_their_senders_as_they_stream(client, dispatcher):
    a, b = _send(client, "a"), _send(client, "b")
    call = await _call(dispatcher, 1)
    assert _names(call) == ["a", "b"]
    call.answer((1, 204))
    assert (await _outcome(b)).status_code == 204
    assert not a.done()
    call.answer((0, 500))
    call.end()
    assert (await _outcome(a)).status_code == 500


async def test_a_dispatcher_error_fails_each_unfinished_item(client, dispatcher):
    a, b = _send(client, "a"), _send(client, "b")
    call = await _call(dispatcher, 1)
    call.answer((0, 200))
    call.fail(RuntimeError("replica died"))
    assert (await _outcome(a)).status_code == 200
    failed = await _outcome(b)
    assert failed.status_code is None and "RuntimeError: replica died" in failed.error


async def test_a_dispatcher_that_cannot_be_called_fails_every_item(client, dispatcher):
    dispatcher.down = ConnectionError("no replicas")
    attempts = [await _outcome(_send(client, name)) for name in ("a", "b")]
    assert [a.status_code for a in attempts] == [None, None]
    assert all("dispatcher unavailable" in a.error for a in attempts)


async def test_a_stream_that_ends_early_fails_the_items_without_an_outcome(client, dispatcher):
    a, b = _send(client, "a"), _send(client, "b")
    call = await _call(dispatcher, 1)
    call.answer((1, 200))
    call.end()
    assert (await _outcome(b)).status_code == 200
    missing = await _outcome(a)
    assert missing.status_code is None and missing.error == "the dispatcher returned no outcome"


async def test_a_hanging_batch_holds_the_next_one_back_only_for_start_s(client, dispatcher):
    hanging = _send(client, "slow")
    first = await _call(dispatcher, 1)
    quick = _send(client, "quick")
    second = await _call(dispatcher, 2)  # starts although the first streamed nothing
    waited_s = second.started_at - first.started_at
    assert DispatcherClient.START_S * 0.9 <= waited_s < DispatcherClient.START_S + 1.0
    second.answer((0, 200))
    assert (await _outcome(quick)).status_code == 200
    assert not hanging.done()
    first.end()
    assert (await _outcome(hanging)).error == "the dispatcher returned no outcome"


async def _collect(stream: AsyncIterator[list[tuple[int, Attempt]]]) -> list[list[tuple[int, int]]]:
    """What a `send_many` caller gets: each list streamed, as (index, status code)."""
    return [[(i, a.status_code) for i, a in outcomes] async for outcomes in stream]


async def test_send_many_gets_outcomes_that_stream_together_as_one_list(client, dispatcher):
    def many(*names: str) -> asyncio.Task[list[list[tuple[int, int]]]]:
        items = [Sending(_delivery(name), ("whsec_x",), 5.0) for name in names]
        return asyncio.create_task(_collect(client.send_many(items)))

    first, second = many("a", "b", "c"), many("d")
    call = await _call(dispatcher, 1)
    assert _names(call) == ["a", "b", "c", "d"]  # two callers, one call
    call.answer((3, 201), (2, 202), (0, 200))
    call.answer((1, 500))
    call.end()
    assert await asyncio.wait_for(first, WAIT_S) == [[(2, 202), (0, 200)], [(1, 500)]]
    assert await asyncio.wait_for(second, WAIT_S) == [[(0, 201)]]


async def test_send_many_of_nothing_yields_nothing(client, dispatcher):
    assert await _collect(client.send_many([])) == []
    assert dispatcher.calls == []


async def test_calls_held_open_by_a_hanging_receiver_never_hold_back_a_new_send(dispatcher):
    """Each of 40 calls gets its other outcomes but one delivery hangs: the calls stay open,
    and a send after them still goes out in a call of its own at once."""
    client = DispatcherClient(lambda: dispatcher, max_starting=1)
    hanging = []
    for n in range(40):
        hanging += [_send(client, f"hang-{n}"), _send(client, f"ok-{n}")]
        call = await _call(dispatcher, n + 1)
        call.answer((1, 200))  # the first outcome: no longer starting, still open
    fresh = _send(client, "fresh")
    call = await _call(dispatcher, 41)
    assert _names(call) == ["fresh"]
    call.answer((0, 204))
    assert (await _outcome(fresh)).status_code == 204
    assert not any(task.done() for task in hanging[::2])
    for task in hanging:
        task.cancel()
