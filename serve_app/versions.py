"""Output versions: `POST /api/v1/jobs/{jobId}/versions` starts a job's next one (a re-run)."""

from __future__ import annotations

from fastapi import APIRouter
from fastapi.responses import JSONResponse

from actors.render import version_json
from serve_app.deps import Caller, D, Ns
from serve_app.openapi import COMMON, responses

router = APIRouter(prefix="/api/v1/jobs", responses=responses(*COMMON, 404))


@router.post(
    "/{job_id}/versions",
    status_code=201,
    responses={
        200: {"description": "The latest version is still empty and open: it is the one."},
        **responses(409),
    },
)
async def start_version(job_id: str, ns: Ns, caller: Caller, deps: D) -> JSONResponse:
    """Start the job's next output version, for a re-run: 201 `{jobId, version, size, seq,
    sha256, createdAt, completedAt, status}`. The latest version is completed (its SHA-256
    fixed); a finished job is Running again; appends go to the new version. When the latest
    version is still empty and open, no version is started: 200 with it (so a retried
    request never makes two). 409 past the most versions a job may have."""
    job, created = await deps.shards.start_version(ns, job_id, actor=caller.key_id)
    version = job.current_version
    body = {"jobId": job.job_id, **version_json(version), "status": job.status.value}
    location = f"/api/v1/jobs/{job.job_id}/output?version={version.version}&namespace={ns}"
    return JSONResponse(body, status_code=201 if created else 200, headers={"Location": location})
