"""Which Ray cluster a process joins: a private local one, or exactly the address it names.

Ray's own default (`ray.init()` with no address) joins whatever cluster it finds on the
machine: `RAY_ADDRESS`, a `ray start` cluster, or the stale record of a dead one in
`/tmp/ray/ray_current_cluster`, where it then waits forever for a GCS that never answers.
The service never relies on that guess: every process of ours connects through here.
"""

from __future__ import annotations

import logging
import socket
import time
from typing import Any

import ray
from ray._private.authentication.authentication_token_setup import (
    maybe_enable_token_auth_if_token_available,
)

from actors.routing import RAY_NAMESPACE

#: How long to wait for a named cluster's GCS port to accept a TCP connection.
GCS_CONNECT_TIMEOUT_S = 10.0
_PROBE_INTERVAL_S = 0.5


class RayUnreachable(ConnectionError):
    """Nothing accepts connections at the Ray address given (`.address`)."""

    def __init__(self, address: str, cause: OSError) -> None:
        super().__init__(f"no Ray cluster answers at {address} ({cause.strerror or cause})")
        self.address = address


def connect(
    address: str | None,
    *,
    log_to_driver: bool = True,
    timeout_s: float = GCS_CONNECT_TIMEOUT_S,
    metrics_port: int | None = None,
    **local_options: Any,
) -> str:
    """Start a private local Ray cluster (`address` None) or join exactly `address`.

    `address` is a GCS `host:port` or a Ray Client `ray://host:port`. `metrics_port` (where
    the node's metrics agent serves Prometheus metrics; else a free one) and
    `local_options` (e.g. `num_cpus`) apply to a private cluster only. Returns the address
    other processes pass to join the cluster: `address`, or the private cluster's GCS
    `host:port`. Raises `RayUnreachable` within about `timeout_s` seconds when nothing
    listens at `address`.
    """
    common: dict[str, Any] = {
        "namespace": RAY_NAMESPACE,
        "logging_level": logging.WARNING,
        "log_to_driver": log_to_driver,
    }
    if address is not None:
        wait_for_gcs(address, timeout_s)
        # Ray turns token auth on by itself only for a cluster it finds on its own; a named
        # one gets the same: this user's token (~/.ray/auth_token, RAY_AUTH_TOKEN), if any,
        # unless RAY_AUTH_MODE says otherwise. A cluster without auth ignores the token.
        maybe_enable_token_auth_if_token_available(warn_if_disabled=False)
        ray.init(address=address, **common)
        return address
    # "local" starts a new cluster even when another one runs on this machine.
    # The metrics agent runs without the dashboard: metrics are exported all the same.
    ray.init(
        address="local",
        include_dashboard=False,
        _metrics_export_port=metrics_port,
        **common,
        **local_options,
    )
    gcs_address: str = ray.get_runtime_context().gcs_address
    return gcs_address


def metrics_endpoints() -> list[str]:
    """Where the connected cluster's live nodes serve Prometheus metrics: `host:port` each
    (Ray's per-node metrics agents; our metrics are the `ray_aos_*` ones)."""
    return [
        f"{node['NodeManagerAddress']}:{node['MetricsExportPort']}"
        for node in ray.nodes()  # type: ignore[no-untyped-call]
        if node.get("Alive") and node.get("MetricsExportPort", 0) > 0
    ]


def wait_for_gcs(address: str, timeout_s: float) -> None:
    """Return once `address`'s host:port accepts a TCP connection; else `RayUnreachable`."""
    host, _, port = address.removeprefix("ray://").rpartition(":")
    if not host or not port.isdigit() or not 0 < int(port) < 65536:
        raise ValueError(f"a Ray address is host:port or ray://host:port, not {address!r}")
    deadline = time.monotonic() + timeout_s
    while True:
        try:
            socket.create_connection((host.strip("[]"), int(port)), timeout=1.0).close()
            return
        except OSError as exc:
            if time.monotonic() + _PROBE_INTERVAL_S > deadline:
                raise RayUnreachable(address, exc) from exc
        time.sleep(_PROBE_INTERVAL_S)
