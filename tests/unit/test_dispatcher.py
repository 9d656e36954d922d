"""The dispatcher's `deliver_many`: every item sent at once, outcomes streamed as they finish."""

from __future__ import annotations

import asyncio
from dataclasses import dataclass, field

from actors.webhooks.dispatcher import Outgoing, WebhookDispatcher
from storage.records import Attempt
from tests.unit.fakes import WAIT_S


@dataclass
class Sender:
    """Stands in for `WebhookSender`: answers 200 at once, or once a body's gate opens."""

    gates: dict[bytes, asyncio.Event] = field(default_factory=dict)
    headers: list[dict[str, str]] = field(default_factory=list)
    cancelled: int = 0

    async def send(
        self, *, url: str, headers: dict[str, str], body: bytes, timeout_s: float
    ) -> Attempt:
        self.headers.append(headers)
        try:
            if body in self.gates:
                await self.gates[body].wait()
        except asyncio.CancelledError:
            self.cancelled += 1
            raise
        return Attempt(1000.0, 1.0, 200)


def _dispatcher(sender: Sender) -> WebhookDispatcher:
    """The deployment's class without Serve, its sender replaced (no constructor, no I/O)."""
    dispatcher = object.__new__(WebhookDispatcher.func_or_class)  # type: ignore[attr-defined]
    dispatcher._sender = sender
    return dispatcher


def _batch(*bodies: bytes) -> list[Outgoing]:
    return [
        Outgoing(f"msg_{i}", "http://x/", body, ("whsec_c2VjcmV0",), 5.0)
        for i, body in enumerate(bodies)
    ]


async def test_outcomes_that_finish_together_stream_as_one_item_and_a_slow_one_after():
    sender = Sender(gates={b"slow": asyncio.Event()})
    stream = _dispatcher(sender).deliver_many(_batch(b"a", b"slow", b"c"))
    first = await asyncio.wait_for(anext(stream), WAIT_S)
    assert sorted(i for i, _ in first) == [0, 2]
    sender.gates[b"slow"].set()
    rest = [item async for item in stream]
    assert [[i for i, _ in item] for item in rest] == [[1]]
    assert all(
        "webhook-signature" in h and h["webhook-id"].startswith("msg_") for h in sender.headers
    )


async def test_closing_the_stream_cancels_the_sends_still_going():
    sender = Sender(gates={b"hangs": asyncio.Event()})
    stream = _dispatcher(sender).deliver_many(_batch(b"a", b"hangs"))
    await asyncio.wait_for(anext(stream), WAIT_S)
    await stream.aclose()
    await asyncio.sleep(0)
    assert sender.cancelled == 1 and len(sender.headers) == 2
