"""The dispatcher's autoscaling: replicas = ceil(pending deliveries / target per replica)."""

from __future__ import annotations

import ast
import asyncio
import inspect
from collections.abc import AsyncIterator
from typing import Any

import pytest
from ray.serve.autoscaling_policy import _apply_autoscaling_config
from ray.serve.config import AutoscalingConfig, AutoscalingContext

from actors.webhooks import autoscaling
from actors.webhooks.autoscaling import PENDING_DELIVERIES, PendingDeliveriesPolicy
from actors.webhooks.dispatcher import Outgoing, WebhookDispatcher
from storage.records import Attempt
from tests.unit.fakes import until


def _context(
    pending: dict[str, float] | None,
    *,
    current: int = 1,
    config: AutoscalingConfig | None = None,
    state: dict[str, Any] | None = None,
) -> AutoscalingContext:
    """What Serve's controller hands a policy: `pending` per replica (None: none reported)."""
    return AutoscalingContext(
        deployment_id=None,  # type: ignore[arg-type]  # unused by the policy
        deployment_name="WebhookDispatcher",
        app_name="aos-webhooks",
        current_num_replicas=current,
        target_num_replicas=current,
        running_replicas=[],
        total_num_requests=0.0,
        total_queued_requests=0.0,
        aggregated_metrics={} if pending is None else {PENDING_DELIVERIES: pending},
        raw_metrics={},
        capacity_adjusted_min_replicas=1,
        capacity_adjusted_max_replicas=8,
        policy_state=state or {},
        last_scale_up_time=None,
        last_scale_down_time=None,
        current_time=None,
        config=config or AutoscalingConfig(min_replicas=1, max_replicas=8),
    )


def test_replicas_are_the_pending_deliveries_of_all_replicas_over_the_target():
    policy = PendingDeliveriesPolicy(target_per_replica=100)
    assert policy(_context({"r1": 150.0, "r2": 100.0}, current=2)) == (3, {})
    assert policy(_context({"r1": 100.0}))[0] == 1
    assert policy(_context({"r1": 100.5}))[0] == 2  # a part of a replica's worth is one more


def test_no_pending_deliveries_asks_for_none_and_serve_keeps_min_replicas():
    assert PendingDeliveriesPolicy()(_context({"r1": 0.0, "r2": 0.0}, current=2))[0] == 0


def test_until_a_replica_reports_the_policy_keeps_the_current_target():
    assert PendingDeliveriesPolicy()(_context(None, current=3))[0] == 3


def test_the_default_target_is_128_deliveries_per_replica():
    policy = PendingDeliveriesPolicy()
    assert policy.replicas_for(128) == 1 and policy.replicas_for(129) == 2
    assert policy.replicas_for(-1) == 0  # a count never below zero, whatever arrives


@pytest.mark.parametrize("target", [0, -5])
def test_a_target_that_is_not_positive_is_refused(target):
    with pytest.raises(ValueError, match="target_per_replica"):
        PendingDeliveriesPolicy(target_per_replica=target)


def test_serve_scales_up_at_once_and_down_only_after_the_downscale_delay():
    """Through Serve's own wrapper (bounds, delays), as the controller runs the policy."""
    config = AutoscalingConfig(
        min_replicas=1,
        max_replicas=8,
        upscale_delay_s=0,
        downscale_delay_s=60,
        policy={"policy_function": autoscaling.POLICY, "policy_kwargs": {"target_per_replica": 10}},
    )
    policy = _apply_autoscaling_config(PendingDeliveriesPolicy(**config.policy.policy_kwargs))
    replicas, _ = policy(_context({"r1": 35.0}, current=1, config=config))
    assert replicas == 4
    replicas, state = policy(_context({"r1": 0.0}, current=4, config=config))
    assert replicas == 4  # the backlog is gone, but the 60 s have not passed
    replicas, _ = policy(_context({"r1": 45.0}, current=4, config=config, state=state))
    assert replicas == 5


def test_the_policy_module_imports_nothing_of_ours():
    """Serve pickles it by value into its controller, which may not have our packages."""
    tree = ast.parse(inspect.getsource(autoscaling))
    imported = [
        name
        for node in ast.walk(tree)
        for name in (
            [a.name for a in node.names]
            if isinstance(node, ast.Import)
            else [node.module or ""]
            if isinstance(node, ast.ImportFrom)
            else []
        )
    ]
    ours = ("actors", "storage", "serve_app", "cluster")
    assert not [name for name in imported if name.split(".")[0] in ours]


def test_the_deployment_scales_with_the_policy_up_quickly_and_down_slowly():
    config = AutoscalingConfig(**autoscaling.AUTOSCALING_CONFIG)
    assert config.policy.policy_function == autoscaling.POLICY
    assert config.policy.policy_kwargs == {"target_per_replica": 128}
    assert (config.min_replicas, config.max_replicas) == (1, 8)
    assert config.upscale_delay_s < config.downscale_delay_s


class GatedSender:
    """Stands in for the dispatcher's sender: each send waits until its URL is released."""

    def __init__(self) -> None:
        self.gates: dict[str, asyncio.Event] = {}

    async def send(self, *, url: str, headers: dict[str, str], body: bytes, timeout_s: float):
        await self.gates.setdefault(url, asyncio.Event()).wait()
        return Attempt(1000.0, 1.0, 200)

    def release(self, url: str) -> None:
        self.gates.setdefault(url, asyncio.Event()).set()


@pytest.fixture
def sender() -> GatedSender:
    return GatedSender()


@pytest.fixture
def dispatcher(sender: GatedSender) -> Any:
    """The deployment's class without Serve; its constructor (which opens a real sender)
    is skipped and the gated sender put in its place."""
    instance = object.__new__(WebhookDispatcher.func_or_class)
    instance._sender = sender
    return instance


def _batch(*urls: str) -> list[Outgoing]:
    return [Outgoing(f"d{i}", url, b"{}", (), 5.0) for i, url in enumerate(urls)]


def _pending(dispatcher: Any) -> float:
    return dispatcher.record_autoscaling_stats()[PENDING_DELIVERIES]


async def test_a_delivery_counts_as_pending_until_its_outcome_is_yielded(dispatcher, sender):
    assert _pending(dispatcher) == 0
    first = dispatcher.deliver_many(_batch("http://a/", "http://b/", "http://b/"))
    second = dispatcher.deliver_many(_batch("http://a/"))
    a_outcomes = asyncio.ensure_future(first.__anext__())
    other = asyncio.ensure_future(second.__anext__())
    await until(lambda: _pending(dispatcher) == 4)
    sender.release("http://b/")
    assert sorted(index for index, _ in await a_outcomes) == [1, 2]
    assert _pending(dispatcher) == 2
    sender.release("http://a/")
    assert [index for index, _ in await other] == [0]
    assert [index for index, _ in await first.__anext__()] == [0]
    assert _pending(dispatcher) == 0


async def test_a_caller_that_goes_away_no_longer_counts_its_deliveries(dispatcher, sender):
    stream: AsyncIterator[Any] = dispatcher.deliver_many(_batch("http://a/", "http://b/"))
    sender.release("http://b/")
    await stream.__anext__()
    assert _pending(dispatcher) == 1
    await stream.aclose()  # as when Serve cancels the call of a caller that went away
    assert _pending(dispatcher) == 0
