"""Job endpoints: submit, read, list, long-poll status, progress, complete, cancel, delete."""

from __future__ import annotations

import asyncio
import base64
import binascii
import json
import time
from typing import Annotated, Any

from fastapi import APIRouter, Query, Response
from fastapi.responses import JSONResponse

from actors.commands import check_job_id, parse_status
from actors.limits import MAX_TAG_CHARS, check_text
from actors.render import job_json, status_json
from actors.resume import job_token
from actors.shard_client import ShardClient
from actors.timestamps import EARLIEST_S, END_S
from serve_app.deps import Caller, D, Ns, submit_namespace
from serve_app.durations import DateTime, to_epoch
from serve_app.etags import Condition, EntityTag, IfNoneMatch
from serve_app.models import CompleteRequest, ProgressPatch, SubmitRequest
from serve_app.openapi import COMMON, responses
from storage.errors import BadRequest, Invalid
from storage.records import Job, JobQuery

router = APIRouter(prefix="/api/v1/jobs", responses=responses(*COMMON))

#: How long a long-poll waits before asking again a shard that is a commit behind the store.
_LAGGING_SHARD_S = 0.005


@router.post(
    "",
    status_code=201,
    responses={200: {"description": "The same request was already accepted."}, **responses(409)},
)
async def submit(
    body: SubmitRequest,
    caller: Caller,
    deps: D,
    namespace: Annotated[str | None, Query()] = None,
) -> JSONResponse:
    ns = submit_namespace(caller, body.namespace, namespace)
    job, created = await deps.shards.submit(
        ns, body.spec(), job_id=body.job_id, actor=caller.key_id
    )
    location = f"/api/v1/jobs/{job.job_id}?namespace={ns}"
    return JSONResponse(
        await job_record(deps.shards, job),
        status_code=201 if created else 200,
        headers={"Location": location},
    )


@router.get("")
async def list_jobs(
    ns: Ns,
    deps: D,
    status: str | None = None,
    tag: str | None = None,
    created_after: Annotated[DateTime | None, Query(alias="createdAfter")] = None,
    created_before: Annotated[DateTime | None, Query(alias="createdBefore")] = None,
    limit: Annotated[int, Query(ge=1, le=1000)] = 100,
    cursor: str | None = None,
) -> dict[str, Any]:
    query = JobQuery(
        status=parse_status(status) if status is not None else None,
        tag=check_text("tag", tag, MAX_TAG_CHARS),
        created_from=to_epoch("createdAfter", created_after) if created_after else None,
        created_to=to_epoch("createdBefore", created_before) if created_before else None,
        before=_decode_cursor(cursor) if cursor else None,
        limit=limit + 1,
    )
    jobs = await deps.store.list_jobs(ns, query)
    page, more = jobs[:limit], len(jobs) > limit
    return {
        "items": [await job_record(deps.shards, job) for job in page],
        "nextCursor": _encode_cursor(page[-1]) if more else None,
    }


@router.get("/{job_id}", responses=responses(304, 404))
async def get_job(job_id: str, ns: Ns, deps: D, condition: Condition) -> Response:
    job = await deps.shards.get(ns, job_id)
    tag = etag(job)
    if condition is not None and condition.matches(tag):
        return Response(status_code=304, headers={"ETag": str(tag)})
    return JSONResponse(await job_record(deps.shards, job), headers={"ETag": str(tag)})


@router.get("/{job_id}/status", responses=responses(304, 404))
async def get_status(
    job_id: str,
    ns: Ns,
    deps: D,
    condition: Condition,
    wait: Annotated[float, Query(ge=0)] = 0,
) -> Response:
    """`If-None-Match` (RFC 9110 §13.1.2) naming the status's ETag: 304; with `?wait=S`, the
    request is held until the ETag matches none of the tags (200), at most S seconds (304)."""
    job = await deps.shards.get(ns, job_id)
    if condition is not None and wait > 0:
        job = await _held(deps, ns, job, condition, min(wait, deps.config.max_wait_s))
    tag = etag(job)
    headers = {"ETag": str(tag), "Cache-Control": "no-cache"}
    if condition is not None and condition.matches(tag):
        return Response(status_code=304, headers=headers)
    return JSONResponse(status_json(job), headers=headers)


@router.patch("/{job_id}", responses=responses(404, 409))
async def set_progress(job_id: str, body: ProgressPatch, ns: Ns, deps: D) -> dict[str, Any]:
    return status_json(await deps.shards.set_progress(ns, job_id, body.update()))


@router.post("/{job_id}/complete", responses=responses(404, 409))
async def complete(job_id: str, body: CompleteRequest, ns: Ns, deps: D) -> dict[str, Any]:
    return status_json(await deps.shards.complete(ns, job_id, body.completion()))


@router.post("/{job_id}/cancel", responses=responses(404, 409))
async def cancel(job_id: str, ns: Ns, caller: Caller, deps: D) -> dict[str, Any]:
    return status_json(await deps.shards.cancel(ns, job_id, actor=caller.key_id))


@router.delete("/{job_id}", status_code=204, responses=responses(404, 409))
async def delete(job_id: str, ns: Ns, caller: Caller, deps: D) -> Response:
    await deps.shards.delete(ns, job_id, actor=caller.key_id)
    return Response(status_code=204)


def etag(job: Job) -> EntityTag:
    """The job's revision and incarnation as a strong entity tag (RFC 9110 §8.8.3), e.g.
    `"3-1a2b3c4d5e"`: it changes with every change of the job, and a job deleted and
    submitted again never reuses one (its revisions start again at 1)."""
    return EntityTag(f"{job.revision}-{job_token(job)}")


async def job_record(shards: ShardClient, job: Job) -> dict[str, Any]:
    """The job as the API renders it, with every output version (one read for a job that
    has more than one)."""
    return job_json(job, await shards.earlier_versions(job))


async def _held(deps: D, ns: str, job: Job, condition: IfNoneMatch, wait_s: float) -> Job:
    """The job once its ETag matches none of `condition`'s tags, or as it is after `wait_s`."""
    deadline = time.monotonic() + wait_s
    while condition.matches(etag(job)) and (remaining := deadline - time.monotonic()) > 0:
        update = await deps.shards.watch(ns, job.job_id, revision=job.revision, timeout_s=remaining)
        if update.job.created_at != job.created_at or update.job.revision > job.revision:
            job = update.job
        else:  # the shard had not applied the commit the store showed yet: it will, at once
            await asyncio.sleep(_LAGGING_SHARD_S)
    return job


#: A cursor this service gives out is about 60 characters; longer ones are not ours.
_MAX_CURSOR_CHARS = 512


def _encode_cursor(job: Job) -> str:
    raw = json.dumps([job.created_at, job.job_id]).encode()
    return base64.urlsafe_b64encode(raw).decode().rstrip("=")


def _decode_cursor(cursor: str) -> tuple[float, str]:
    """`(created_at, job_id)` of the last job of the page before; `BadRequest` for anything
    this service did not give out (checked field by field: it comes back from the client)."""
    refused = BadRequest("cursor is not one this service gave out")
    if len(cursor) > _MAX_CURSOR_CHARS:
        raise refused
    try:
        value = json.loads(base64.urlsafe_b64decode(cursor + "=" * (-len(cursor) % 4)))
    except (ValueError, RecursionError, binascii.Error) as exc:
        raise refused from exc
    match value:
        case [float() | int() as created_at, str() as job_id] if (
            not isinstance(created_at, bool)
            and EARLIEST_S <= created_at < END_S
            and _is_job_id(job_id)
        ):
            return float(created_at), job_id
    raise refused


def _is_job_id(value: str) -> bool:
    try:
        check_job_id(value)
    except Invalid:
        return False
    return True
