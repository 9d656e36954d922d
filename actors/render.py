"""The one JSON rendering of each resource: job, status, chunk, job event, delivery.

HTTP responses, SSE frames, webhook bodies and the Python client's `Event.data()` all
use these, so a field means the same everywhere. Timestamps are ISO 8601 UTC strings.
A namespace renders in `actors.namespace_settings` (its settings record lives there).
Rendering is total: whatever a store holds renders (a value JSON or ISO 8601 cannot
carry becomes null), so one odd record never breaks a read.
"""

from __future__ import annotations

import base64
import math
from collections.abc import Sequence
from typing import Any

from actors.timestamps import iso
from storage.records import Chunk, Delivery, Job, OutputFormat, OutputVersion


def job_json(job: Job, earlier: Sequence[OutputVersion] = ()) -> dict[str, Any]:
    """A job with its settings, its status and its output versions (`GET
    /api/v1/jobs/{jobId}`): `earlier` are the versions before its latest
    (`ShardClient.earlier_versions`; none while it has one)."""
    versions = [v for v in earlier if v.version < job.output_version] + [job.current_version]
    return {
        "namespace": job.namespace,
        "jobId": job.job_id,
        **status_json(job),
        "metadata": {"title": job.title, "description": job.description, "tags": list(job.tags)},
        "webhookUrl": job.webhook_url,
        "webhookEvents": list(job.webhook_events) if job.webhook_events is not None else None,
        "retentionPolicy": {"ttl": job.ttl_s} if job.ttl_s is not None else None,
        # When the retention sweeper deletes the job; null while it runs, or if it is kept.
        "expiresAt": iso(job.expires_at),
        "outputFormat": job.output_format.value,
        "createdAt": iso(job.created_at),
        "versions": [version_json(version) for version in versions],
    }


def version_json(version: OutputVersion) -> dict[str, Any]:
    """One output version: its bytes' size and SHA-256 (hex; null until it is complete),
    when it started and when it was completed (null while it is written)."""
    return {
        "version": version.version,
        "size": version.size,
        "seq": version.last_seq,
        "sha256": version.sha256,
        "createdAt": iso(version.created_at),
        "completedAt": iso(version.completed_at),
    }


def status_json(job: Job) -> dict[str, Any]:
    """A job's status: what changes while it runs (`GET .../status`, long-poll)."""
    return {
        "jobId": job.job_id,
        "status": job.status.value,
        "progress": _finite(job.progress),
        "estimatedCompletion": iso(job.estimated_completion),
        "outputVersion": job.output_version,
        "outputSeq": job.output_seq,
        "outputSize": job.output_size,
        "revision": job.revision,
        "updatedAt": iso(job.updated_at),
        "completedAt": iso(job.completed_at),
        "error": job.error,
    }


def webhook_data(job: Job) -> dict[str, Any]:
    """The `data` of a webhook body: the job's status, its namespace, and `sequence` (its
    revision, which orders a job's events)."""
    return {"namespace": job.namespace, **status_json(job), "sequence": job.revision}


def output_text(output_format: OutputFormat, data: bytes) -> str:
    """Output as JSON can carry it: text as is, binary as base64."""
    if output_format is OutputFormat.BINARY:
        return base64.b64encode(data).decode()
    return data.decode("utf-8", "replace")  # appends are checked; "replace" keeps reads total


#: The bytes JSON writes as a two-character escape (`\"`, `\\`, `\n`, ...): RFC 8259 §7.
_SHORT_ESCAPES = b'"\\\b\f\n\r\t'
#: Every byte JSON writes as it is in a string (Python's `ensure_ascii=False`).
_AS_IS = bytes(sorted(set(range(256)) - set(range(0x20)) - set(b'"\\')))


def inline_answer_bytes(output_format: OutputFormat, data: bytes) -> int:
    """About how many bytes `data` takes in a JSON answer (`output_text`, written as a JSON
    string): base64 for binary; for text each control character is six (`\u0001`), a quote,
    a backslash or `\n`-like one two. Json documents count as text (an upper bound)."""
    if output_format is OutputFormat.BINARY:
        return 4 * ((len(data) + 2) // 3)
    escaped = data.translate(None, _AS_IS)
    short = sum(escaped.count(byte) for byte in _SHORT_ESCAPES)
    return len(data) + short + 5 * (len(escaped) - short)


def chunk_json(
    chunk: Chunk, output_format: OutputFormat, *, inline_max_bytes: int | None = None
) -> dict[str, Any]:
    """One append: `{seq, offset, size, data, encoding}`, data base64 for binary jobs.

    A chunk over `inline_max_bytes` is `{seq, offset, size, data: null, truncated: true}`
    (a webhook says so; the receiver fetches it from /output/raw).
    """
    entry: dict[str, Any] = {"seq": chunk.seq, "offset": chunk.offset, "size": len(chunk.data)}
    if inline_max_bytes is not None and len(chunk.data) > inline_max_bytes:
        return entry | {"data": None, "truncated": True}
    binary = output_format is OutputFormat.BINARY
    return entry | {
        "data": output_text(output_format, chunk.data),
        "encoding": "base64" if binary else "utf-8",
    }


def event_json(kind: str, job: Job, chunk: Chunk | None = None) -> dict[str, Any]:
    """The data of one job event (`actors.feed.EventKind`: output, progress, status, end,
    heartbeat), as SSE frames and the Python client's events carry it."""
    if kind == "output":
        assert chunk is not None
        return chunk_json(chunk, job.output_format)
    if kind == "progress":
        return {
            "progress": _finite(job.progress),
            "estimatedCompletion": iso(job.estimated_completion),
        }
    if kind == "heartbeat":
        return {}
    return {
        "status": job.status.value,
        "outputVersion": job.output_version,
        "outputSeq": job.output_seq,
        "error": job.error,
    }


def _finite(value: float | None) -> float | None:
    """A number JSON can carry (NaN and infinities cannot): rendering is total over what a
    store holds."""
    return value if value is not None and math.isfinite(value) else None


def delivery_json(delivery: Delivery) -> dict[str, Any]:
    """A webhook delivery with every attempt (`GET .../webhooks`)."""
    return {
        "id": delivery.delivery_id,
        "jobId": delivery.job_id,
        "type": delivery.event_type,
        "url": delivery.url,
        "status": delivery.status.value,
        "createdAt": iso(delivery.created_at),
        "nextAttemptAt": iso(delivery.next_attempt_at),
        "attempts": [
            {
                "at": iso(a.at),
                "statusCode": a.status_code,
                "error": a.error,
                "durationMs": _finite(round(a.duration_ms, 3)),
                "retryAfterMs": None if a.retry_after_s is None else round(a.retry_after_s * 1000),
            }
            for a in delivery.attempts
        ],
    }
