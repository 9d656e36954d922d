"""The FastAPI app and its Ray Serve deployment (`Api`), plus the builder RayService imports."""

from __future__ import annotations

import asyncio
from typing import Any

from fastapi import FastAPI
from fastapi.responses import JSONResponse
from ray import serve

from actors.shard_actor import create_shards
from serve_app import admin, context, errors, jobs, output, sse, webhooks
from serve_app.context import ApiConfig

#: Streams and long-polls hold a request slot for minutes: the default of 5 would let six
#: open streams block every route (DESIGN.md, Ray pitfalls). Past the queue: 503, not a hang.
MAX_ONGOING_REQUESTS = 5000
MAX_QUEUED_REQUESTS = 2000

app = FastAPI(title="Async Output Service", version="1")
errors.install(app)
for module in (jobs, output, sse, admin, webhooks):
    app.include_router(module.router)


@app.get("/healthz")
async def healthz() -> dict[str, str]:
    return {"status": "ok"}


@app.get("/readyz")
async def readyz() -> JSONResponse:
    ctx = context.get()
    try:
        await ctx.store.ping()
        await ctx.ping_shards()
    except Exception as exc:  # readiness reports any failure; the cause is in the body
        body = errors.to_response(exc).body
        return JSONResponse({"status": "unavailable", "detail": body.decode()}, status_code=503)
    return JSONResponse({"status": "ready"})


@serve.deployment(
    name="Api",
    ray_actor_options={"num_cpus": 0},
    max_ongoing_requests=MAX_ONGOING_REQUESTS,
    max_queued_requests=MAX_QUEUED_REQUESTS,
    health_check_period_s=10,
)
@serve.ingress(app)
class Api:
    """One ingress replica: opens its store connection and finds (or creates) the shards."""

    async def __init__(
        self, config: ApiConfig, shard_options: dict[str, Any] | None = None
    ) -> None:
        shards = create_shards(
            num_shards=config.num_shards, store_url=config.store_url, config=shard_options
        )
        await asyncio.gather(*(shard.ready.remote() for shard in shards))
        await context.open_context(config)


def build(args: dict[str, Any]) -> Any:
    """Application builder for `serveConfigV2` (import_path: serve_app.app:build)."""
    shard_options = args.pop("shard_options", None)
    replicas = int(args.pop("num_replicas", 1))
    return Api.options(num_replicas=replicas).bind(ApiConfig(**args), shard_options)
