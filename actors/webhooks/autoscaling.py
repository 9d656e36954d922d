"""The webhook dispatcher's autoscaling policy: replicas follow the deliveries they hold.

Serve pickles this module by value into its controller (`AutoscalingPolicy`), so it
imports nothing of ours: the controller need not have our packages on its path.
"""

from __future__ import annotations

import math
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from ray.serve.config import AutoscalingContext

#: The dispatcher's custom metric (`record_autoscaling_stats`): deliveries a replica has
#: accepted in `deliver_many` and not yet answered, a count.
PENDING_DELIVERIES = "pending_deliveries"
#: The policy's import path, as the deployment and ray-cluster.yaml name it.
POLICY = "actors.webhooks.autoscaling:PendingDeliveriesPolicy"
#: Deliveries one replica should hold. It sends up to 64 at once to one destination (the
#: sender's per-host limit) and 512 overall, so past this it is mostly queueing.
DEFAULT_TARGET_PER_REPLICA = 128
#: The dispatcher deployment's autoscaling: 1 to 8 replicas; up after 5 s of wanting more,
#: down after 60 s of wanting fewer. Each replica's count is averaged over 15 s: a backlog
#: that lasts counts in full after 15 s, a burst over before the next sample adds no
#: replica. ray-cluster.yaml repeats it (more replicas allowed there).
AUTOSCALING_CONFIG: dict[str, Any] = {
    "min_replicas": 1,
    "max_replicas": 8,
    "look_back_period_s": 15,
    "upscale_delay_s": 5,
    "downscale_delay_s": 60,
    "policy": {
        "policy_function": POLICY,
        "policy_kwargs": {"target_per_replica": DEFAULT_TARGET_PER_REPLICA},
    },
}


class PendingDeliveriesPolicy:
    """replicas = ceil(pending deliveries across all replicas / `target_per_replica`).

    Units: `target_per_replica` is deliveries (a count) per replica. Each replica's
    `pending_deliveries` reaches the controller aggregated over the deployment's
    `look_back_period_s` by its `aggregation_function` (a time-weighted mean by default);
    the policy sums them. Serve applies `min_replicas`/`max_replicas`, the scaling factors
    and `upscale_delay_s`/`downscale_delay_s` around the number returned. Until a replica
    has reported the metric the policy keeps the current target: no data is not no load.
    """

    def __init__(self, target_per_replica: float = DEFAULT_TARGET_PER_REPLICA) -> None:
        if not target_per_replica > 0:
            raise ValueError(f"target_per_replica must be positive, not {target_per_replica!r}")
        self.target_per_replica = target_per_replica

    def __call__(self, ctx: AutoscalingContext) -> tuple[int, dict[str, Any]]:
        per_replica = (ctx.aggregated_metrics or {}).get(PENDING_DELIVERIES)
        if not per_replica:
            return ctx.target_num_replicas, {}
        return self.replicas_for(sum(per_replica.values())), {}

    def replicas_for(self, pending: float) -> int:
        """Replicas wanted for `pending` deliveries (before Serve's bounds and delays)."""
        return math.ceil(max(0.0, pending) / self.target_per_replica)
