"""Request bodies (validated here, at the edge) and the JSON shapes of responses."""

from __future__ import annotations

import base64
from datetime import datetime
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field

from actors.hooks import DEFAULT_GRACE_S, SECRET, public
from actors.timestamps import iso
from actors.validation import MAX_ID_CHARS, JobSpec
from serve_app.durations import parse_duration_s, to_epoch
from storage.errors import Invalid
from storage.records import Delivery, Job, JobStatus, Namespace, OutputFormat


class _Body(BaseModel):
    model_config = ConfigDict(extra="forbid", populate_by_name=True)


class Metadata(_Body):
    title: str | None = None
    description: str | None = None
    tags: list[str] = Field(default_factory=list)


class RetentionPolicy(_Body):
    ttl: int | str

    def ttl_s(self) -> int:
        return parse_duration_s(self.ttl)


class SubmitRequest(_Body):
    namespace: str | None = None
    job_id: str | None = Field(default=None, alias="jobId", max_length=MAX_ID_CHARS * 4)
    metadata: Metadata = Field(default_factory=Metadata)
    webhook_url: str | None = Field(default=None, alias="webhookUrl")
    webhook_events: list[str] | None = Field(default=None, alias="webhookEvents")
    retention_policy: RetentionPolicy | None = Field(default=None, alias="retentionPolicy")
    output_format: OutputFormat = Field(default=OutputFormat.TEXT, alias="outputFormat")

    def spec(self) -> JobSpec:
        return JobSpec.from_metadata(
            self.metadata.model_dump(),
            webhook_url=self.webhook_url,
            webhook_events=tuple(self.webhook_events) if self.webhook_events is not None else None,
            ttl_s=self.retention_policy.ttl_s() if self.retention_policy else None,
            output_format=self.output_format,
        )


class ProgressPatch(_Body):
    progress: float | None = None
    estimated_completion: datetime | None = Field(default=None, alias="estimatedCompletion")

    def estimated_epoch(self) -> float | None:
        return to_epoch(self.estimated_completion) if self.estimated_completion else None


class CompleteRequest(_Body):
    status: Literal["Succeeded", "Failed"]
    error: str | None = None


class RetrySettings(_Body):
    initial_delay_ms: int | None = Field(default=None, alias="initialDelayMs")
    max_delay_ms: int | None = Field(default=None, alias="maxDelayMs")
    max_attempts: int | None = Field(default=None, alias="maxAttempts")


class WebhookSettings(_Body):
    url: str | None = Field(default=None, max_length=2048)
    events: list[str] | None = Field(default=None, max_length=16)
    timeout_ms: int | None = Field(default=None, alias="timeoutMs")
    retry: RetrySettings | None = None

    def stored(self) -> dict[str, Any]:
        return self.model_dump(by_alias=True, exclude_none=True)


class NamespaceConfig(_Body):
    description: str | None = Field(default=None, max_length=1024)
    retention: RetentionPolicy | None = None
    webhooks: WebhookSettings | None = None

    def config(self) -> dict[str, Any]:
        out: dict[str, Any] = {}
        if "description" in self.model_fields_set:
            out["description"] = self.description
        if "retention" in self.model_fields_set:
            out["retention"] = {"ttlS": self.retention.ttl_s()} if self.retention else None
        if "webhooks" in self.model_fields_set:
            out["webhooks"] = self.webhooks.stored() if self.webhooks else None
        return out


class SecretRotation(_Body):
    grace_s: float = Field(default=DEFAULT_GRACE_S, alias="graceS", ge=0, le=30 * 86400)


class NamespaceCreate(NamespaceConfig):
    name: str


class KeyCreate(_Body):
    description: str | None = Field(default=None, max_length=256)


def job_json(job: Job) -> dict[str, Any]:
    return {
        "namespace": job.namespace,
        "jobId": job.job_id,
        **status_json(job),
        "metadata": {"title": job.title, "description": job.description, "tags": list(job.tags)},
        "webhookUrl": job.webhook_url,
        "webhookEvents": list(job.webhook_events) if job.webhook_events is not None else None,
        "retentionPolicy": {"ttl": job.ttl_s} if job.ttl_s is not None else None,
        "outputFormat": job.output_format.value,
        "createdAt": iso(job.created_at),
    }


def status_json(job: Job) -> dict[str, Any]:
    return {
        "jobId": job.job_id,
        "status": job.status.value,
        "progress": job.progress,
        "estimatedCompletion": iso(job.estimated_completion),
        "outputSeq": job.output_seq,
        "outputSize": job.output_size,
        "revision": job.revision,
        "updatedAt": iso(job.updated_at),
        "completedAt": iso(job.completed_at),
        "error": job.error,
    }


def namespace_json(namespace: Namespace, *, with_secret: bool = False) -> dict[str, Any]:
    body = {"name": namespace.name, "createdAt": iso(namespace.created_at)}
    body |= public(namespace.config)
    if with_secret:
        body["webhookSecret"] = namespace.config[SECRET]
    return body


def delivery_json(delivery: Delivery) -> dict[str, Any]:
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
                "durationMs": round(a.duration_ms, 3),
            }
            for a in delivery.attempts
        ],
    }


def etag(job: Job) -> str:
    return f'"{job.revision}"'


def chunk_text(job: Job, data: bytes) -> str:
    """Output as JSON can carry it: text as is, binary as base64."""
    if job.output_format is OutputFormat.BINARY:
        return base64.b64encode(data).decode()
    return data.decode("utf-8")


def parse_status(value: str | None) -> JobStatus | None:
    if value is None:
        return None
    try:
        return JobStatus(value)
    except ValueError as exc:
        raise Invalid("status must be one of Running, Succeeded, Failed, Cancelled") from exc
