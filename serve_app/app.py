"""The HTTP API as a FastAPI app, built around the dependencies it is given.

`create_app(deps)` is the whole API; the Serve deployment (`serve_app.deployment`)
builds one per replica over the shard actors, tests build one over in-process shards.
"""

from __future__ import annotations

from fastapi import FastAPI
from fastapi.responses import JSONResponse

from actors.limits import MAX_BATCH_BODY_BYTES
from serve_app import (
    admin,
    batch,
    errors,
    jobs,
    openapi,
    output,
    producer,
    sse,
    versions,
    webhooks,
)
from serve_app.deps import D, Deps
from serve_app.guard import Guard
from serve_app.request_metrics import RequestMetrics
from serve_app.shedding import Shedder


def create_app(deps: Deps | None = None, *, request_metrics: bool = True) -> FastAPI:
    """The API; without `deps` now, set `app.state.deps` before it serves a request.
    `request_metrics=False` leaves out the request metrics (bench/metrics.py's baseline)."""
    app = FastAPI(title="Async Output Service", version="1")
    app.state.deps = deps
    errors.install(app)
    openapi.install(app)
    # Innermost: a stream is served here, after the guard, without FastAPI's routing.
    app.add_middleware(sse.StreamDoor)
    # Every /api/ request: the key first, then a bounded body (a batch submit's may be larger).
    app.add_middleware(Guard, body_limits={batch.PATH: MAX_BATCH_BODY_BYTES})
    app.add_middleware(Shedder)  # outside the Guard: a request shed costs no key check
    if request_metrics:  # outermost (added last): the guard's and shedder's refusals count
        app.add_middleware(RequestMetrics)
    for module in (jobs, batch, output, versions, producer, sse, admin, webhooks):
        app.include_router(module.router)
    app.add_api_route("/healthz", healthz, methods=["GET"])
    app.add_api_route(
        "/readyz",
        readyz,
        methods=["GET"],
        responses={503: {"description": "Not ready: `{status, detail}` names the cause."}},
    )
    return app


async def healthz() -> dict[str, str]:
    """Liveness: the replica answers."""
    return {"status": "ok"}


async def readyz(deps: D) -> JSONResponse:
    """Readiness: the store and every shard answer (503 with the cause when not)."""
    try:
        await deps.store.ping()
        await deps.shards.ping_all()
    except Exception as exc:  # readiness reports any failure; the cause is in the body
        body = bytes(errors.to_response(exc).body)
        return JSONResponse(
            {"status": "unavailable", "detail": body.decode()},
            status_code=503,
            headers={"Retry-After": "1"},  # also keeps HAProxy from answering it as overload
        )
    return JSONResponse({"status": "ready"})
