"""The one JSON rendering of jobs, statuses, chunks, job events and deliveries."""

from __future__ import annotations

import base64
from dataclasses import replace

import pytest

from actors.render import (
    chunk_json,
    delivery_json,
    event_json,
    job_json,
    output_text,
    status_json,
    webhook_data,
)
from actors.timestamps import iso
from storage.records import (
    Attempt,
    Chunk,
    Delivery,
    DeliveryStatus,
    Job,
    JobStatus,
    OutputFormat,
    OutputVersion,
)

T0 = 1_767_225_600.0  # 2026-01-01T00:00:00Z
NOON = T0 + 12 * 3600


def make_job(**fields) -> Job:
    base = {"namespace": "acme", "job_id": "j1", "slot": 0, "created_at": T0, "updated_at": T0}
    return Job(**(base | fields))


def finished_job() -> Job:
    return make_job(
        status=JobStatus.FAILED,
        progress=75.0,
        estimated_completion=T0 + 60,
        completed_at=T0 + 30.25,
        updated_at=T0 + 30.25,
        error="boom",
        title="export",
        description="nightly",
        tags=("a", "b"),
        webhook_url="https://hooks.example.com/x",
        webhook_events=("job.completed",),
        ttl_s=3600,
        expires_at=T0 + 3630.25,
        output_format=OutputFormat.JSON,
        revision=7,
        output_seq=3,
        output_size=42,
    )


def test_status_json_has_what_changes_while_a_job_runs():
    assert status_json(finished_job()) == {
        "jobId": "j1",
        "status": "Failed",
        "progress": 75.0,
        "estimatedCompletion": "2026-01-01T00:01:00.000Z",
        "outputVersion": 1,
        "outputSeq": 3,
        "outputSize": 42,
        "revision": 7,
        "updatedAt": "2026-01-01T00:00:30.250Z",
        "completedAt": "2026-01-01T00:00:30.250Z",
        "error": "boom",
    }


def test_job_json_is_the_status_plus_the_jobs_settings():
    job = finished_job()
    body = job_json(job)
    assert body == status_json(job) | {
        "namespace": "acme",
        "metadata": {"title": "export", "description": "nightly", "tags": ["a", "b"]},
        "webhookUrl": "https://hooks.example.com/x",
        "webhookEvents": ["job.completed"],
        "retentionPolicy": {"ttl": 3600},
        "expiresAt": "2026-01-01T01:00:30.250Z",
        "outputFormat": "json",
        "createdAt": "2026-01-01T00:00:00.000Z",
        "versions": [
            {
                "version": 1,
                "size": 42,
                "seq": 3,
                "sha256": None,  # a job finished before versions: its digest was never taken
                "createdAt": "2026-01-01T00:00:00.000Z",
                "completedAt": "2026-01-01T00:00:30.250Z",
            }
        ],
    }


def test_job_json_lists_the_earlier_versions_then_the_latest():
    job = replace(finished_job(), output_version=3, output_version_at=NOON, output_sha256="ab")
    first = OutputVersion("acme", "j1", 1, 5, 50, created_at=0.0, completed_at=1.0, sha256="cd")
    later = replace(first, version=3)  # not earlier than the job's latest: not listed twice
    versions = job_json(job, [first, later])["versions"]
    assert [v["version"] for v in versions] == [1, 3]
    assert versions[0] == {
        "version": 1,
        "size": 50,
        "seq": 5,
        "sha256": "cd",
        "createdAt": "1970-01-01T00:00:00.000Z",
        "completedAt": "1970-01-01T00:00:01.000Z",
    }
    assert versions[1]["sha256"] == "ab" and versions[1]["createdAt"] == iso(NOON)
    running = replace(job, status=JobStatus.RUNNING)
    assert job_json(running)["versions"][-1]["sha256"] is None  # not complete yet
    assert job_json(running)["versions"][-1]["completedAt"] is None


def test_a_new_jobs_unset_fields_render_as_null():
    body = job_json(make_job())
    assert body["status"] == "Running" and body["revision"] == 1
    assert body["estimatedCompletion"] is None and body["completedAt"] is None
    assert body["webhookUrl"] is None and body["webhookEvents"] is None
    assert body["retentionPolicy"] is None and body["expiresAt"] is None
    assert body["metadata"] == {"title": None, "description": None, "tags": []}
    assert body["outputFormat"] == "text"


def test_webhook_data_is_the_status_with_the_namespace_and_the_revision_as_sequence():
    job = finished_job()
    data = webhook_data(job)
    assert data == status_json(job) | {"namespace": "acme", "sequence": 7}
    assert data["sequence"] == job.revision


def test_a_text_chunk_renders_as_utf8():
    chunk = Chunk("acme", "j1", seq=2, offset=5, data="héllo".encode())
    assert chunk_json(chunk, OutputFormat.TEXT) == {
        "seq": 2,
        "offset": 5,
        "size": 6,
        "data": "héllo",
        "encoding": "utf-8",
    }


def test_a_binary_chunk_renders_as_base64():
    raw = b"\x00\xff\xfe"
    entry = chunk_json(Chunk("acme", "j1", 1, 0, raw), OutputFormat.BINARY)
    assert entry["encoding"] == "base64" and entry["size"] == 3
    assert base64.b64decode(entry["data"]) == raw


def test_a_chunk_over_the_inline_limit_is_truncated_and_one_at_the_limit_is_not():
    chunk = Chunk("acme", "j1", 4, 10, b"12345")
    assert chunk_json(chunk, OutputFormat.TEXT, inline_max_bytes=4) == {
        "seq": 4,
        "offset": 10,
        "size": 5,
        "data": None,
        "truncated": True,
    }
    whole = chunk_json(chunk, OutputFormat.TEXT, inline_max_bytes=5)
    assert whole["data"] == "12345" and "truncated" not in whole


def test_output_text_is_text_as_is_and_binary_as_base64():
    assert output_text(OutputFormat.JSON, b'{"a":1}') == '{"a":1}'
    assert output_text(OutputFormat.BINARY, b"\xff") == "/w=="


def test_an_output_event_is_its_chunk_in_the_jobs_format():
    job = make_job(output_format=OutputFormat.BINARY, output_seq=1, output_size=1)
    chunk = Chunk("acme", "j1", 1, 0, b"\xff")
    assert event_json("output", job, chunk) == chunk_json(chunk, OutputFormat.BINARY)


def test_a_progress_event_has_the_progress_and_the_estimate():
    job = make_job(progress=40.0, estimated_completion=T0)
    assert event_json("progress", job) == {
        "progress": 40.0,
        "estimatedCompletion": "2026-01-01T00:00:00.000Z",
    }


@pytest.mark.parametrize("kind", ["status", "end"])
def test_status_and_end_events_have_the_status_the_last_seq_and_the_error(kind):
    assert event_json(kind, finished_job()) == {
        "status": "Failed",
        "outputVersion": 1,
        "outputSeq": 3,
        "error": "boom",
    }


def test_a_heartbeat_event_is_empty():
    assert event_json("heartbeat", finished_job()) == {}


def test_delivery_json_has_every_attempt():
    delivery = Delivery(
        delivery_id="msg_1",
        namespace="acme",
        job_id="j1",
        slot=0,
        event_type="job.completed",
        url="https://hooks.example.com/x",
        payload=b"{}",
        created_at=T0,
        status=DeliveryStatus.FAILED,
        attempts=(
            Attempt(at=T0 + 1, duration_ms=12.34567, status_code=500, retry_after_s=3.0),
            Attempt(at=T0 + 2, duration_ms=3.0, error="timeout"),
        ),
        next_attempt_at=None,
    )
    assert delivery_json(delivery) == {
        "id": "msg_1",
        "jobId": "j1",
        "type": "job.completed",
        "url": "https://hooks.example.com/x",
        "status": "failed",
        "createdAt": "2026-01-01T00:00:00.000Z",
        "nextAttemptAt": None,
        "attempts": [
            {
                "at": "2026-01-01T00:00:01.000Z",
                "statusCode": 500,
                "error": None,
                "durationMs": 12.346,
                "retryAfterMs": 3000,
            },
            {
                "at": "2026-01-01T00:00:02.000Z",
                "statusCode": None,
                "error": "timeout",
                "durationMs": 3.0,
                "retryAfterMs": None,
            },
        ],
    }
    assert "payload" not in delivery_json(delivery)
