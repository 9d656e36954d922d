"""The Ray Serve deployment of the API (`Api`), and the builder RayService imports."""

from __future__ import annotations

import asyncio
import gc
import os
import resource
from typing import Any

from fastapi import FastAPI
from ray import serve

from actors.shard_actor import create_shards
from actors.shard_client import ShardClient
from serve_app.app import create_app
from serve_app.deps import ApiConfig, Deps
from serve_app.stream_server import StreamServer, listening_ports, serve_beside
from storage.registry import open_store

#: Streams and long-polls hold a request slot for minutes: the default of 5 would let six
#: open streams block every route (DESIGN-NOTES.md, Ray pitfalls). 10,000 streams must fit
#: in one replica (the other may be restarting), with room for the requests beside them:
#: past this, a request waits in the replica's queue for a stream to end. Past the queue: 503.
MAX_ONGOING_REQUESTS = 20_000
MAX_QUEUED_REQUESTS = 2000
#: The collector's thresholds in an `Api` replica (CPython's are 700, 10, 10). An update of a
#: job followed by thousands of streams makes a few short-lived objects per stream (its
#: wait, the update, the frame's message): at 700 a replica with 5,000 streams ran ~10
#: young collections per update, a third of its CPU, and a full collection (300 ms at
#: 5,000 streams) every few updates: the fan-out's p99 (DESIGN-NOTES 53).
GC_THRESHOLDS = (10_000, 10, 10)


#: The `Api` deployment's options; bench/spine.py gives its no-op baseline the same ones.
OPTIONS: dict[str, Any] = {
    "ray_actor_options": {"num_cpus": 0},
    "max_ongoing_requests": MAX_ONGOING_REQUESTS,
    "max_queued_requests": MAX_QUEUED_REQUESTS,
    "health_check_period_s": 10,
}


def actor_options(node_resource: str = "") -> dict[str, Any]:
    """The `Api` replicas' Ray options: with `node_resource` named, only on nodes offering it
    (e.g. "node:__internal_head__", to keep them beside the head node's ingress)."""
    options: dict[str, Any] = dict(OPTIONS["ray_actor_options"])
    if node_resource:
        options["resources"] = {node_resource: 0.001}
    return options


@serve.deployment(name="Api", **OPTIONS)
@serve.ingress()
class Api:
    """One ingress replica: opens its store connection and finds (or creates) the shards,
    then Serve asks it for its app (`__serve_build_asgi_app__`, after the constructor)."""

    async def __init__(  # type: ignore[misc]  # Serve supports async constructors
        self, config: ApiConfig, shard_options: dict[str, Any] | None = None
    ) -> None:
        raise_open_file_limit()
        gc.set_threshold(*GC_THRESHOLDS)
        create_shards(
            num_shards=config.num_shards, store_url=config.store_url, config=shard_options
        )
        store = open_store(config.store_url)
        await store.open()
        shards = await ShardClient.discover(
            num_shards=config.num_shards, store=store, call_timeout_s=config.shard_call_timeout_s
        )
        self._app = create_app(Deps.create(config, store, shards))
        self._streams: asyncio.Task[StreamServer | None] | None = None
        if os.environ.get("RAY_SERVE_ENABLE_HA_PROXY") == "1":  # HAProxy sends streams there
            self._streams = asyncio.create_task(serve_beside(self._app, _serve_ports))

    def __serve_build_asgi_app__(self) -> FastAPI:
        return self._app


def _serve_ports() -> list[tuple[str, int]]:
    """Where Serve's direct-ingress server of this replica listens: the one port of Serve's
    range (`RAY_SERVE_DIRECT_INGRESS_{MIN,MAX}_HTTP_PORT`) this process listens on."""
    low = int(os.environ.get("RAY_SERVE_DIRECT_INGRESS_MIN_HTTP_PORT", "30000"))
    high = int(os.environ.get("RAY_SERVE_DIRECT_INGRESS_MAX_HTTP_PORT", "31000"))
    return listening_ports(low, high)


def raise_open_file_limit() -> int:
    """Raise this process's soft open-file limit to its hard one (each open stream holds a
    socket); the limit now."""
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if soft != hard:
        resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))
    return hard


def build(args: dict[str, Any]) -> Any:
    """Application builder for `serveConfigV2` (import_path: serve_app.deployment:build)."""
    shard_options = args.pop("shard_options", None)
    replicas = int(args.pop("num_replicas", 1))
    return Api.options(num_replicas=replicas).bind(  # type: ignore[attr-defined]
        ApiConfig(**args), shard_options
    )
