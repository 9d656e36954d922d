"""Batch submit: `POST /api/v1/jobs:batch`, many submits in one request, each with its own outcome.

Each job of the batch is checked as a single submit's body would be, one by one, so a bad
job fails alone; the good ones go to `ShardClient.submit_many` together (one call and one
group commit per shard). The answer is 200 with one item per job, in order: the status a
single submit would have answered, and its job or its error.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Annotated, Any

from fastapi import APIRouter, Query
from fastapi.responses import JSONResponse
from pydantic import BaseModel, ConfigDict, SkipValidation

from actors.limits import check_batch
from actors.render import job_json
from actors.shard_client import ShardClient
from actors.shard_types import SubmitItem, SubmitResult
from serve_app.deps import Caller, D, submit_namespace
from serve_app.errors import error_json, retry_after, status_of
from serve_app.keys import Principal
from serve_app.models import SubmitRequest
from serve_app.openapi import COMMON, ErrorDetail, responses
from storage.errors import AosError

PATH = "/api/v1/jobs:batch"

router = APIRouter(responses=responses(*COMMON))


class BatchRequest(BaseModel):
    model_config = ConfigDict(extra="forbid")

    #: Documented as submit bodies, but only the list is checked here: the handler checks
    #: each job on its own, so that one bad job fails alone.
    jobs: list[SkipValidation[SubmitRequest]]


class BatchItem(BaseModel):
    """One job's outcome: `status` is what a single submit would have answered (201 created,
    200 the same request again, else an error status), with its `job` or its `error`."""

    status: int
    job: dict[str, Any] | None = None
    error: ErrorDetail | None = None


class BatchReply(BaseModel):
    items: list[BatchItem]


@router.post(
    PATH,
    responses={
        200: {"description": "One item per job, in order.", "model": BatchReply},
        **responses(413),
    },
)
async def submit_batch(
    body: BatchRequest,
    caller: Caller,
    deps: D,
    namespace: Annotated[str | None, Query()] = None,
) -> JSONResponse:
    """Submit up to 1,000 jobs (`{"jobs": [<submit body>, ...]}`); `?namespace=` is the
    namespace of the jobs that name none. Over 1,000 jobs is 413, the whole batch."""
    check_batch(len(body.jobs))
    checked = [_item(job, caller, namespace) for job in body.jobs]
    return await _reply(deps.shards, await submit_checked(deps.shards, checked))


async def submit_checked(
    shards: ShardClient, checked: Sequence[SubmitItem | AosError]
) -> list[SubmitResult]:
    """Submit the jobs that passed the edge's checks (`ShardClient.submit_many`, one call);
    the others keep their error. One result per entry, in order."""
    results = iter(await shards.submit_many([c for c in checked if isinstance(c, SubmitItem)]))
    return [next(results) if isinstance(c, SubmitItem) else SubmitResult(error=c) for c in checked]


def _item(job: object, caller: Principal, namespace: str | None) -> SubmitItem | AosError:
    """One job checked as a single submit checks its body (in the same order, so with the
    same error), or its error."""
    try:
        request = SubmitRequest.parse(job)
        ns = submit_namespace(caller, request.namespace, namespace)
        return SubmitItem(ns, request.job_id, request.spec(), caller.key_id)
    except AosError as exc:
        return exc


async def _reply(shards: ShardClient, outcomes: list[SubmitResult]) -> JSONResponse:
    """200 with `{"items": [...]}`; `Retry-After` when a job met a 503 (retry those)."""
    items = [await _item_json(shards, outcome) for outcome in outcomes]
    waits = [
        o.error.retry_after_s or 1.0 for o in outcomes if o.error and status_of(o.error) == 503
    ]
    headers = {"Retry-After": retry_after(max(waits))} if waits else None
    return JSONResponse({"items": items}, headers=headers)


async def _item_json(shards: ShardClient, outcome: SubmitResult) -> dict[str, Any]:
    if outcome.error is not None:
        return {
            "status": status_of(outcome.error),
            **error_json(outcome.error.code, outcome.error.message),
        }
    if outcome.job is None:
        raise RuntimeError("a submit result holds neither a job nor an error")
    job = job_json(outcome.job, await shards.earlier_versions(outcome.job))
    return {"status": 201 if outcome.created else 200, "job": job}
