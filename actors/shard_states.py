"""Where each shard runs and how it is doing, for operators: one bounded look at every slot."""

from __future__ import annotations

import asyncio
from typing import Any

from actors.shard_client import ShardClient
from storage.errors import AosError

#: How long the listing waits for one shard: one restarting, or on a node just lost, is
#: "unavailable" then, and the listing still answers at once.
STATS_TIMEOUT_S = 2.0
#: The figures each shard reports, in this order; None where it does not answer.
FIELDS = ("slot", "node", "epoch", "liveJobs", "pendingWrites", "state")


async def shard_states(
    shards: ShardClient, *, timeout_s: float = STATS_TIMEOUT_S
) -> list[dict[str, Any]]:
    """Every slot's `{slot, node, epoch, liveJobs, pendingWrites, state}`, in slot order,
    asked concurrently. `node` is the Ray node id (hex) of the actor; `state` one of
    "serving", "starting" (taking its lease, reloading its jobs), "fenced" (a newer copy
    took its lease: it writes nothing more) or "unavailable" (no answer within `timeout_s`:
    restarting, or its node was lost), with the other figures None then."""
    return list(
        await asyncio.gather(
            *(_state(shards, slot, timeout_s) for slot in range(shards.num_shards))
        )
    )


async def _state(shards: ShardClient, slot: int, timeout_s: float) -> dict[str, Any]:
    try:
        stats = await asyncio.wait_for(shards.shard(slot).stats(), timeout_s)
    except (TimeoutError, AosError):
        stats = {"state": "unavailable"}
    return {field: stats.get(field) for field in FIELDS} | {"slot": slot}
