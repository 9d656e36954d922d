"""The webhook dispatcher on real Serve: scaled on the deliveries it holds, a backlog sent by
every replica, a held receiver delaying no other.

Each test deploys its own dispatcher application (quick metrics, small limits) beside the
session's service and deletes it after. The receiver holds requests at a gate the test
opens, so every assertion is about what is held where, never about how long it took.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import itertools
import threading
import time
from collections.abc import Coroutine, Iterator
from dataclasses import dataclass, field
from typing import Any, TypeVar

import pytest
from ray import serve

from actors.webhooks.autoscaling import AUTOSCALING_CONFIG, PENDING_DELIVERIES
from actors.webhooks.dispatcher import DEPLOYMENT_NAME, MAX_ONGOING_CALLS, WebhookDispatcher
from actors.webhooks.dispatcher_client import DispatcherClient
from storage.records import Attempt, Delivery
from tests.e2e.receiver import Received, Receiver, running_receiver
from tests.e2e.waiting import wait_until

pytestmark = pytest.mark.e2e
T = TypeVar("T")

#: Each replica sends at most this many requests at once to one receiver.
PER_HOST = 3
#: Deliveries one replica should hold: a backlog of 2 * TARGET wants two replicas.
TARGET = 4
#: The request limit the dispatcher had before (`max_ongoing_requests`).
OLD_LIMIT = 64
TIMEOUT_S = 60.0
_ids = itertools.count()


@dataclass
class Gate:
    """A receiver's answer that holds each request until the test opens the gate."""

    opened: threading.Event = field(default_factory=threading.Event)
    lock: threading.Lock = field(default_factory=threading.Lock)
    inside: int = 0
    most: int = 0

    def __call__(self, _: Received) -> int:
        with self.lock:
            self.inside += 1
            self.most = max(self.most, self.inside)
        try:
            self.opened.wait(TIMEOUT_S)
        finally:
            with self.lock:
                self.inside -= 1
        return 200


class Loop:
    """An event loop in a thread: the dispatcher clients run there, as in a shard, while the
    test waits on Serve and the receivers."""

    def __init__(self) -> None:
        self.loop = asyncio.new_event_loop()
        self.thread = threading.Thread(target=self.loop.run_forever, daemon=True)
        self.thread.start()

    def submit(self, call: Coroutine[Any, Any, T]) -> concurrent.futures.Future[T]:
        return asyncio.run_coroutine_threadsafe(call, self.loop)

    def client(self, handle: Any, **options: Any) -> DispatcherClient:
        async def make() -> DispatcherClient:
            return DispatcherClient(lambda: handle, **options)

        return self.submit(make()).result()

    def stop(self) -> None:
        self.loop.call_soon_threadsafe(self.loop.stop)
        self.thread.join(10)


@pytest.fixture
def loop() -> Iterator[Loop]:
    running = Loop()
    yield running
    running.stop()


@pytest.fixture
def gate(receiver: Receiver) -> Iterator[Gate]:
    """`receiver`'s path /held holds every request until the gate opens (at the latest when
    the test ends, so a failed test leaves nothing held)."""
    held = Gate()
    receiver.answers["/held"] = held
    yield held
    held.opened.set()


@pytest.fixture
def other_receiver() -> Iterator[Receiver]:
    """A second receiver, on its own port: another destination to the sender."""
    with running_receiver() as receiver:
        yield receiver


def _deploy(name: str, **options: Any) -> Any:
    app = WebhookDispatcher.options(**options).bind(
        allowed_networks="127.0.0.0/8", per_host_limit=PER_HOST
    )
    serve.run(app, name=name, route_prefix=None)
    return serve.get_deployment_handle(DEPLOYMENT_NAME, app_name=name)


@pytest.fixture
def autoscaled(service: Any) -> Iterator[tuple[str, Any]]:
    """A dispatcher that scales on pending deliveries, 1 to 2 replicas, within seconds."""
    name = "aos-webhooks-autoscaled"
    config = {
        **AUTOSCALING_CONFIG,
        "max_replicas": 2,
        "metrics_interval_s": 0.5,  # replicas push their metrics every 10 s by default
        "look_back_period_s": 2,
        "upscale_delay_s": 0,
        "downscale_delay_s": 2,
        "policy": {**AUTOSCALING_CONFIG["policy"], "policy_kwargs": {"target_per_replica": TARGET}},
    }
    handle = _deploy(name, autoscaling_config=config)
    yield name, handle
    serve.delete(name)


@pytest.fixture
def one_replica(service: Any) -> Iterator[Any]:
    """A dispatcher pinned to one replica (no autoscaling): its request limit alone."""
    name = "aos-webhooks-one-replica"
    handle = _deploy(name, num_replicas=1, autoscaling_config=None)
    yield handle
    serve.delete(name)


def _running(app: str) -> int:
    deployment = serve.status().applications[app].deployments[DEPLOYMENT_NAME]
    return deployment.replica_states.get("RUNNING", 0)


def _pending(handle: Any) -> float:
    """The pending deliveries of the replica the handle picks (with two, the less busy)."""
    return float(handle.record_autoscaling_stats.remote().result()[PENDING_DELIVERIES])


def _send(loop: Loop, client: DispatcherClient, url: str) -> concurrent.futures.Future[Attempt]:
    n = next(_ids)
    delivery = Delivery(f"msg_{n}", "e2e", f"j{n}", 0, "job.completed", url, b"{}", time.time())
    return loop.submit(client.send(delivery, (), TIMEOUT_S))


def _all_delivered(sent: list[concurrent.futures.Future[Attempt]]) -> None:
    done, _ = concurrent.futures.wait(sent, timeout=TIMEOUT_S)
    assert len(done) == len(sent)
    assert [f.result().status_code for f in sent] == [200] * len(sent)


def test_a_backlog_scales_the_dispatcher_out_is_sent_by_both_replicas_then_scales_in(
    autoscaled, loop, gate, receiver, other_receiver
):
    app, handle = autoscaled
    assert _running(app) == 1

    # One shard's backlog, 2 * TARGET deliveries: the one replica sends PER_HOST of them
    # and queues the rest behind its per-host limit.
    shard = loop.client(handle)
    backlog = [_send(loop, shard, receiver.url + "/held") for _ in range(2 * TARGET)]
    wait_until(lambda: gate.inside == PER_HOST, timeout_s=30, what="the receiver's limit held")
    wait_until(lambda: _running(app) == 2, timeout_s=30, what="a second replica")
    # Once the handle knows it, it prefers the new replica, which holds nothing yet.
    wait_until(lambda: _pending(handle) == 0, timeout_s=30, what="the handle to reach it")

    # Later sends (calls of one, as under light load) go to the replica with fewer calls:
    # the receiver now holds more requests at once than one replica may send it.
    later = loop.client(handle, max_batch=1)
    backlog += [_send(loop, later, receiver.url + "/held") for _ in range(2 * PER_HOST)]
    wait_until(
        lambda: gate.most > PER_HOST,
        timeout_s=30,
        what="both replicas sending to the held receiver",
        state=lambda: gate.most,
    )

    # Both replicas are at the held receiver's limit, and another receiver is still served.
    fast = _send(loop, shard, other_receiver.url + "/fast")
    assert fast.result(timeout=30).status_code == 200
    assert gate.inside > PER_HOST and not any(f.done() for f in backlog)

    gate.opened.set()
    _all_delivered(backlog)
    wait_until(lambda: _running(app) == 1, timeout_s=30, what="scaling back to one replica")


def test_calls_held_by_a_hanging_receiver_never_queue_calls_for_others(
    one_replica, loop, gate, receiver, other_receiver
):
    """A call stays open until its last delivery ends: a hanging receiver can hold far more
    calls than the old limit of 64, and the next call must still reach the replica."""
    held = OLD_LIMIT + 8
    assert held < MAX_ONGOING_CALLS
    shard = loop.client(one_replica, max_batch=1, max_starting=held)
    calls = [_send(loop, shard, receiver.url + "/held") for _ in range(held)]
    wait_until(lambda: _pending(one_replica) == held, timeout_s=30, what="every call held")
    wait_until(lambda: gate.inside == PER_HOST, timeout_s=30, what="the receiver's limit held")

    other_shard = loop.client(one_replica)
    fast = _send(loop, other_shard, other_receiver.url + "/fast")
    assert fast.result(timeout=30).status_code == 200
    assert gate.inside == PER_HOST and not any(f.done() for f in calls)

    gate.opened.set()
    _all_delivered(calls)
    assert _pending(one_replica) == 0
