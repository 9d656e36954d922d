"""Webhook tracking endpoints: a job's deliveries with every attempt, and manual retry."""

from __future__ import annotations

from typing import Any

from fastapi import APIRouter
from fastapi.responses import JSONResponse

from actors.render import delivery_json
from serve_app.deps import Caller, D, Ns
from serve_app.openapi import COMMON, responses

router = APIRouter(prefix="/api/v1", responses=responses(*COMMON, 404))


@router.get("/jobs/{job_id}/webhooks")
async def job_deliveries(job_id: str, ns: Ns, deps: D) -> dict[str, Any]:
    await deps.shards.get(ns, job_id)  # 404 for a job this namespace does not have
    deliveries = await deps.store.list_deliveries(ns, job_id)
    return {"items": [delivery_json(d) for d in deliveries]}


@router.post("/webhooks/deliveries/{delivery_id}/retry", status_code=202, responses=responses(409))
async def retry(delivery_id: str, ns: Ns, caller: Caller, deps: D) -> JSONResponse:
    """Send the delivery again now, with the same webhook-id."""
    delivery = await deps.shards.retry_delivery(ns, delivery_id, actor=caller.key_id)
    return JSONResponse(delivery_json(delivery), status_code=202)
