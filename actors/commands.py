"""The commands a shard carries out, each validated once, where it is built.

The HTTP edge, the Python client and the CLI build these records; their constructors
check every rule of their own fields (limits in `actors.limits`), so the shard trusts
them. What needs the shard's state (the job exists and still runs) or the network (a
webhook host resolves to a public address) is the shard's to check.
"""

from __future__ import annotations

import hashlib
import json
import re
import uuid
from dataclasses import dataclass, fields
from typing import Any

from actors.limits import (
    MAX_DESCRIPTION_CHARS,
    MAX_ERROR_CHARS,
    MAX_ID_CHARS,
    MAX_INT64,
    MAX_NAMESPACE_CHARS,
    MAX_SECRET_GRACE_S,
    MAX_TAG_CHARS,
    MAX_TAGS,
    MAX_TITLE_CHARS,
    MAX_TTL_S,
    MAX_WEBHOOK_EVENTS,
    check_size,
    check_storable,
    check_text,
)
from actors.timestamps import check_timestamp
from actors.webhooks import ssrf
from actors.webhooks.outbox import EventType
from storage.errors import Invalid
from storage.records import Job, JobStatus, OutputFormat

_ID = re.compile(r"[A-Za-z0-9][A-Za-z0-9._:-]*", re.ASCII)
_NAMESPACE = re.compile(r"[a-z0-9](?:[a-z0-9-]*[a-z0-9])?", re.ASCII)  # a DNS label


def check_job_id(value: object) -> str:
    """A job id: 1..128 of letters, digits and . _ : - (no slashes, no spaces)."""
    return check_id("jobId", value)


def check_id(name: str, value: object) -> str:
    """An id (job, delivery, API key): 1..128 ASCII letters, digits and . _ : -, starting
    with a letter or digit."""
    if not isinstance(value, str) or not value:
        raise Invalid(f"{name} must be a non-empty string")
    check_size(name, len(value), MAX_ID_CHARS)
    if not _ID.fullmatch(value):
        raise Invalid(f"{name} may hold only letters, digits and . _ : - and must start alnum")
    return value


def new_job_id() -> str:
    return uuid.uuid4().hex


def check_namespace(value: object) -> str:
    """A namespace name: 1..63 of lowercase letters, digits and '-' (DNS-label like)."""
    if not isinstance(value, str) or not value:
        raise Invalid("namespace must be a non-empty string")
    check_size("namespace", len(value), MAX_NAMESPACE_CHARS)
    if not _NAMESPACE.fullmatch(value):
        raise Invalid(
            "namespace must be lowercase letters, digits or '-', starting and ending alnum"
        )
    return value


def check_seq(value: object) -> int | None:
    """An append's optional sequence number: a positive integer."""
    if value is None:
        return None
    if isinstance(value, bool) or not isinstance(value, int) or not 1 <= value <= MAX_INT64:
        raise Invalid("seq must be an integer from 1 to 2^63-1")
    return value


def check_version(value: object) -> int | None:
    """An optional output version number: a positive integer (None: the latest)."""
    if value is None:
        return None
    if isinstance(value, bool) or not isinstance(value, int) or not 1 <= value <= MAX_INT64:
        raise Invalid("version must be an integer from 1 to 2^63-1")
    return value


def check_events(events: object) -> tuple[str, ...]:
    """Webhook event types, known ones only, without repeats."""
    if isinstance(events, str) or not isinstance(events, list | tuple):
        raise Invalid("webhook events must be a list of event types")
    check_size("webhook events", len(events), MAX_WEBHOOK_EVENTS, "entries")
    known = {e.value for e in EventType}
    unknown = [e for e in events if e not in known]
    if unknown:
        raise Invalid(f"unknown webhook event type(s) {unknown}; known: {sorted(known)}")
    return tuple(dict.fromkeys(events))


def parse_status(value: str) -> JobStatus:
    """A job status as clients write it (`Running`, `Succeeded`, `Failed`, `Cancelled`)."""
    try:
        return JobStatus(value)
    except ValueError as exc:
        raise Invalid("status must be one of Running, Succeeded, Failed, Cancelled") from exc


def parse_output_format(value: str) -> OutputFormat:
    try:
        return OutputFormat(value)
    except ValueError as exc:
        raise Invalid("outputFormat must be one of text, json, binary") from exc


def check_encoding(output_format: OutputFormat, data: bytes) -> None:
    """A text or json job's output is UTF-8 in every chunk; a binary job's is any bytes."""
    if output_format is OutputFormat.BINARY:
        return
    try:
        data.decode("utf-8")
    except UnicodeDecodeError as exc:
        raise Invalid(
            "a text or json job's output must be UTF-8 in every chunk; use outputFormat binary"
        ) from exc


def check_ttl_s(name: str, value: object) -> int | None:
    if value is None:
        return None
    if isinstance(value, bool) or not isinstance(value, int) or not 1 <= value <= MAX_TTL_S:
        raise Invalid(f"{name} must be between 1 s and {MAX_TTL_S} s")
    return value


def check_grace_s(value: object) -> float:
    """How long a rotated-out webhook secret keeps signing: 0 s to 30 days."""
    if isinstance(value, bool) or not isinstance(value, int | float):
        raise Invalid("graceS must be a number of seconds")
    if not 0 <= value <= MAX_SECRET_GRACE_S:
        raise Invalid("graceS must be between 0 and 30 days")
    return float(value)


@dataclass(frozen=True, slots=True)
class JobSpec:
    """What a client asks for when it submits a job."""

    title: str | None = None
    description: str | None = None
    tags: tuple[str, ...] = ()
    webhook_url: str | None = None
    webhook_events: tuple[str, ...] | None = None
    ttl_s: int | None = None
    output_format: OutputFormat = OutputFormat.TEXT

    def __post_init__(self) -> None:
        check_text("metadata.title", self.title, MAX_TITLE_CHARS)
        check_text("metadata.description", self.description, MAX_DESCRIPTION_CHARS)
        if not isinstance(self.tags, tuple):
            raise Invalid("metadata.tags must be a list of strings")
        check_size("metadata.tags", len(self.tags), MAX_TAGS, "tags")
        for tag in self.tags:
            if not isinstance(tag, str) or not tag:
                raise Invalid("each tag must be a non-empty string")
            check_size("a tag", len(tag), MAX_TAG_CHARS)
            check_storable("a tag", tag)
        if self.webhook_url is not None:
            ssrf.check_shape(self.webhook_url)
        if self.webhook_events is not None:
            object.__setattr__(self, "webhook_events", check_events(self.webhook_events))
        check_ttl_s("retentionPolicy.ttl", self.ttl_s)
        if not isinstance(self.output_format, OutputFormat):
            raise Invalid("outputFormat must be one of text, json, binary")

    @classmethod
    def from_metadata(cls, metadata: dict[str, Any] | None = None, **fields: Any) -> JobSpec:
        """A spec from the API's `metadata` object (title, description, tags) and fields."""
        metadata = metadata or {}
        unknown = set(metadata) - {"title", "description", "tags"}
        if unknown:
            raise Invalid(f"unknown metadata field(s): {', '.join(sorted(unknown))}")
        tags = metadata.get("tags") or ()
        if not isinstance(tags, list | tuple):
            raise Invalid("metadata.tags must be a list of strings")
        return cls(
            title=metadata.get("title"),
            description=metadata.get("description"),
            tags=tuple(tags),
            **fields,
        )

    def new_job(self, namespace: str, job_id: str, *, slot: int, now: float) -> Job:
        """The job this spec asks for, created at `now` (epoch seconds) in `slot`."""
        return Job(
            namespace=namespace,
            job_id=job_id,
            slot=slot,
            created_at=now,
            updated_at=now,
            title=self.title,
            description=self.description,
            tags=self.tags,
            webhook_url=self.webhook_url,
            webhook_events=self.webhook_events,
            ttl_s=self.ttl_s,
            output_format=self.output_format,
            request_hash=self.fingerprint(),
        )

    def fingerprint(self) -> str:
        """Stable hash of the request: a resubmit with the same id must match it. Stored with
        each job, so its canonical form never changes (`asdict`'s JSON, made without its
        deep copy: a batch submit hashes every job)."""
        values = {name: getattr(self, name) for name in _SPEC_FIELDS}
        canonical = json.dumps(values, sort_keys=True, default=str)
        return hashlib.sha256(canonical.encode()).hexdigest()[:32]


_SPEC_FIELDS = tuple(spec_field.name for spec_field in fields(JobSpec))


@dataclass(frozen=True, slots=True)
class ProgressUpdate:
    """A producer's progress report: percent done and/or an estimated completion time."""

    progress: float | None = None
    #: Epoch seconds.
    estimated_completion: float | None = None

    def __post_init__(self) -> None:
        if self.progress is None and self.estimated_completion is None:
            raise Invalid("give progress and/or estimatedCompletion")
        if self.progress is not None:
            if not _is_number(self.progress) or not 0 <= self.progress <= 100:
                raise Invalid("progress must be a number from 0 to 100")
            object.__setattr__(self, "progress", float(self.progress) + 0.0)  # -0.0 is 0.0
        if self.estimated_completion is not None:
            if not _is_number(self.estimated_completion):
                raise Invalid("estimatedCompletion must be a timestamp")
            when = check_timestamp("estimatedCompletion", self.estimated_completion)
            object.__setattr__(self, "estimated_completion", when)

    def changes(self) -> dict[str, float]:
        """The job fields this update sets."""
        fields = {"progress": self.progress, "estimated_completion": self.estimated_completion}
        return {name: value for name, value in fields.items() if value is not None}


@dataclass(frozen=True, slots=True)
class Completion:
    """The producer's end of a job: Succeeded, or Failed with an optional error text."""

    status: JobStatus
    error: str | None = None

    def __post_init__(self) -> None:
        if self.status not in (JobStatus.SUCCEEDED, JobStatus.FAILED):
            raise Invalid("status must be Succeeded or Failed")
        check_text("error", self.error, MAX_ERROR_CHARS)

    @classmethod
    def parse(cls, status: str, error: str | None = None) -> Completion:
        return cls(parse_status(status), error)


def _is_number(value: object) -> bool:
    return not isinstance(value, bool) and isinstance(value, int | float)
