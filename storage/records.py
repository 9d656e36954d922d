"""Plain, immutable records that cross the Store seam. No driver types, no I/O."""

from __future__ import annotations

import dataclasses
import operator
from dataclasses import dataclass, field
from enum import StrEnum
from typing import Any, TypeVar

from storage import sharing

R = TypeVar("R")


def pickled_by_fields(cls: type[R]) -> type[R]:
    """Make a frozen, slotted dataclass pickle as `(cls, field values)`: half the time and
    bytes of the default (which walks `dataclasses.fields` for every object), and these
    records cross Ray's process boundary by the thousand (a batch submit)."""
    names = [f.name for f in dataclasses.fields(cls)]  # type: ignore[arg-type]
    get = operator.attrgetter(*names)

    def __reduce__(self: Any) -> tuple[Any, tuple[Any, ...]]:
        values = get(self)
        return cls, values if len(names) > 1 else (values,)

    cls.__reduce__ = __reduce__  # type: ignore[method-assign]
    return cls


class JobStatus(StrEnum):
    RUNNING = "Running"
    SUCCEEDED = "Succeeded"
    FAILED = "Failed"
    CANCELLED = "Cancelled"

    @property
    def terminal(self) -> bool:
        return self is not JobStatus.RUNNING


class OutputFormat(StrEnum):
    TEXT = "text"
    JSON = "json"
    BINARY = "binary"


class DeliveryStatus(StrEnum):
    PENDING = "pending"
    DELIVERED = "delivered"
    FAILED = "failed"


@pickled_by_fields
@dataclass(frozen=True, slots=True)
class Job:
    """A job's whole state. A new record is made for every change (`revision` + 1)."""

    namespace: str
    job_id: str
    slot: int
    created_at: float
    updated_at: float
    status: JobStatus = JobStatus.RUNNING
    progress: float = 0.0
    estimated_completion: float | None = None
    completed_at: float | None = None
    error: str | None = None
    title: str | None = None
    description: str | None = None
    tags: tuple[str, ...] = ()
    webhook_url: str | None = None
    webhook_events: tuple[str, ...] | None = None
    ttl_s: int | None = None
    #: When the retention sweeper deletes the job (epoch seconds): set when it finishes,
    #: from its own `ttl_s` or its namespace's default (`actors.retention`); None while it
    #: runs, and for a job kept until it is deleted.
    expires_at: float | None = None
    output_format: OutputFormat = OutputFormat.TEXT
    revision: int = 1
    #: The last seq and the size of the latest output version (`output_version`); earlier
    #: versions are `OutputVersion` records of their own (`Store.list_versions`).
    output_seq: int = 0
    output_size: int = 0
    request_hash: str = ""
    #: The latest output version (1, 2, ...: `POST .../versions` starts the next one), when
    #: it started (None: at `created_at`), and the SHA-256 of its bytes (hex) once it is
    #: complete (the job finished with it); None while it is written.
    output_version: int = 1
    output_version_at: float | None = None
    output_sha256: str | None = None

    @property
    def key(self) -> tuple[str, str]:
        return (self.namespace, self.job_id)

    @property
    def current_version(self) -> OutputVersion:
        """The latest output version as this record describes it (complete once the job
        finished)."""
        return OutputVersion(
            namespace=self.namespace,
            job_id=self.job_id,
            version=self.output_version,
            last_seq=self.output_seq,
            size=self.output_size,
            created_at=self.created_at
            if self.output_version_at is None
            else self.output_version_at,
            completed_at=self.completed_at if self.status.terminal else None,
            sha256=self.output_sha256 if self.status.terminal else None,
        )

    def evolve(self, **changes: Any) -> Job:
        """The next revision of this job with `changes` applied."""
        return dataclasses.replace(self, revision=self.revision + 1, **changes)

    @classmethod
    def from_plain(cls, values: dict[str, Any]) -> Job:
        """The job whose fields `values` holds as JSON gives them back: enums as their
        strings, tuples as lists (how every backend but memory keeps a job's fields).

        Values that many jobs repeat come back shared (`storage.sharing`): a shard reloads
        up to a million of these."""
        created_at = values["created_at"]
        return cls(
            **{
                **values,
                "namespace": sharing.text(values["namespace"]),
                "updated_at": sharing.same_or(values["updated_at"], created_at),
                "status": JobStatus(values["status"]),
                "progress": sharing.zero_or(values["progress"]),
                "output_format": OutputFormat(values["output_format"]),
                "tags": sharing.strings(values["tags"]),
                "webhook_url": sharing.text(values["webhook_url"]),
                "webhook_events": sharing.maybe_strings(values["webhook_events"]),
                "ttl_s": sharing.integer(values["ttl_s"]),
            }
        )


@pickled_by_fields
@dataclass(frozen=True, slots=True)
class Chunk:
    """One append of a job's output: `seq` counts appends from 1, `offset` is its first byte."""

    namespace: str
    job_id: str
    seq: int
    offset: int
    data: bytes
    version: int = 1

    @property
    def end(self) -> int:
        return self.offset + len(self.data)


@pickled_by_fields
@dataclass(frozen=True, slots=True)
class OutputVersion:
    """One output version of a job: its last seq, its size in bytes, when it started and when
    it was completed (epoch seconds), and the SHA-256 of its bytes (hex). An earlier version
    is complete, fixed for good; the latest one (`Job.current_version`) is complete once
    the job finished, and until then has neither `completed_at` nor `sha256`."""

    namespace: str
    job_id: str
    version: int
    last_seq: int
    size: int
    created_at: float
    completed_at: float | None = None
    sha256: str | None = None

    @property
    def complete(self) -> bool:
        return self.completed_at is not None


@dataclass(frozen=True, slots=True)
class Namespace:
    name: str
    created_at: float
    config: dict[str, Any] = field(default_factory=dict)


@dataclass(frozen=True, slots=True)
class ApiKey:
    """An API key; only the SHA-256 of its secret is ever stored."""

    key_id: str
    secret_hash: str
    namespaces: tuple[str, ...]
    created_at: float
    admin: bool = False
    revoked_at: float | None = None


@pickled_by_fields
@dataclass(frozen=True, slots=True)
class Attempt:
    """One try at a webhook delivery: when (Unix time), how long, the receiver's status (None
    when no reply came: `error` says why), and the wait its `Retry-After` asked for, as
    honoured (seconds, capped at the retry policy's maximum delay)."""

    at: float
    duration_ms: float
    status_code: int | None = None
    error: str | None = None
    retry_after_s: float | None = None


@dataclass(frozen=True, slots=True)
class Delivery:
    """A webhook message (outbox row). `payload` is fixed at creation: retries resend it as is."""

    delivery_id: str
    namespace: str
    job_id: str
    slot: int
    event_type: str
    url: str
    payload: bytes
    created_at: float
    status: DeliveryStatus = DeliveryStatus.PENDING
    attempts: tuple[Attempt, ...] = ()
    next_attempt_at: float | None = None

    @classmethod
    def from_plain(cls, values: dict[str, Any], payload: bytes) -> Delivery:
        """The delivery whose fields (but its payload) `values` holds as JSON gives them
        back: the status as its string, each attempt as an object of its fields."""
        return cls(
            **{
                **values,
                "payload": payload,
                "status": DeliveryStatus(values["status"]),
                "attempts": tuple(Attempt(**attempt) for attempt in values["attempts"]),
            }
        )


@dataclass(frozen=True, slots=True)
class AuditEntry:
    at: float
    namespace: str | None
    actor: str
    action: str
    target: str
    detail: dict[str, Any] = field(default_factory=dict)


#: Where an expired-jobs scan stands: the (expires_at, namespace, job_id) of the last job
#: looked at (`Store.expired_jobs` returns the jobs after it).
ExpiryCursor = tuple[float, str, str]


@dataclass(frozen=True, slots=True)
class JobQuery:
    """A page of a namespace's jobs, newest first; `before` is the (created_at, job_id) cursor."""

    status: JobStatus | None = None
    tag: str | None = None
    created_from: float | None = None
    created_to: float | None = None
    before: tuple[float, str] | None = None
    limit: int = 100


@dataclass(slots=True)
class Batch:
    """Everything one group commit writes, atomically.

    `slot`/`epoch` fence the commit: a store refuses it (`Fenced`) when the shard
    lease of `slot` has moved on to a newer epoch. Admin writes carry no slot.
    Jobs are upserts (the last record per key wins); `deleted` removes a job with its
    versions and deliveries, and its output from every reader at once, though the store
    removes the output itself later, step by step (`Store.purge_output`).
    """

    slot: int | None = None
    epoch: int | None = None
    jobs: list[Job] = field(default_factory=list)
    chunks: list[Chunk] = field(default_factory=list)
    #: Output versions completed by a later version (written once, never changed).
    versions: list[OutputVersion] = field(default_factory=list)
    deleted: list[tuple[str, str]] = field(default_factory=list)
    deliveries: list[Delivery] = field(default_factory=list)
    namespaces: list[Namespace] = field(default_factory=list)
    api_keys: list[ApiKey] = field(default_factory=list)
    audit: list[AuditEntry] = field(default_factory=list)

    def __len__(self) -> int:
        return (
            len(self.jobs)
            + len(self.chunks)
            + len(self.versions)
            + len(self.deleted)
            + len(self.deliveries)
            + len(self.namespaces)
            + len(self.api_keys)
            + len(self.audit)
        )
