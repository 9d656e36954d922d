"""A shard's configuration, the items of its batch operations and their replies (plain
records, no logic)."""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING

from actors.limits import MAX_CHUNK_BYTES
from actors.webhooks.ssrf import Network, parse_allowed_networks
from storage.errors import AosError
from storage.records import Chunk, Job, pickled_by_fields

if TYPE_CHECKING:  # actors.commands imports the webhooks, which import this module
    from actors.commands import JobSpec


@dataclass(frozen=True, slots=True)
class ShardConfig:
    slot: int
    num_shards: int
    #: The deployment's largest append, checked where appends are built (`ShardClient`).
    max_chunk_bytes: int = MAX_CHUNK_BYTES
    tail_bytes_per_job: int = 256 * 1024
    tail_bytes_total: int = 64 * 1024 * 1024
    terminal_cache_jobs: int = 10_000
    max_wait_s: float = 60.0
    linger_s: float = 0.0
    max_pending_items: int = 50_000
    max_pending_bytes: int = 256 * 1024 * 1024
    #: A write that would wait longer than this to commit, at the store's pace, is shed (503).
    max_commit_wait_s: float = 5.0
    #: CIDRs webhook URLs may reach despite the SSRF guard (e.g. 127.0.0.0/8 in development).
    webhook_allowed_networks: str = ""
    webhook_coalesce_s: float = 0.5
    webhook_max_in_flight: int = 4000
    webhook_max_payload_bytes: int = 1024 * 1024
    #: The retention sweeper: a pass every this many seconds, at most this many jobs a pass.
    retention_sweep_interval_s: float = 5.0
    retention_sweep_batch: int = 100
    #: A custom Ray resource: when named, shards run only on nodes that offer it (placement).
    node_resource: str = ""

    @property
    def allowed_networks(self) -> tuple[Network, ...]:
        return parse_allowed_networks(self.webhook_allowed_networks)


@pickled_by_fields
@dataclass(frozen=True, slots=True)
class AppendAck:
    """An append, durable: its (last) seq, its first byte's offset, its size in bytes, the
    chunks it was stored as (seqs `seq - chunks + 1` .. `seq`) and the output version it
    went to."""

    seq: int
    offset: int
    size: int
    chunks: int = 1
    version: int = 1


@pickled_by_fields
@dataclass(frozen=True, slots=True)
class AppendManyResult:
    """What `append_many` did with its chunks, in order.

    `acks[i]` acknowledges chunk i, durably stored (appended now, or found already written
    with the same bytes). When `error` is set, it is chunk `len(acks)`'s: that chunk and
    every later one were not written. Crosses Ray as a value (our errors pickle).
    """

    acks: tuple[AppendAck, ...] = ()
    error: AosError | None = None


@pickled_by_fields
@dataclass(frozen=True, slots=True)
class Update:
    """What `watch` returns: the committed job and the committed output after the caller's
    position that the in-memory tail still holds (empty when the caller must read the store)."""

    job: Job
    chunks: tuple[Chunk, ...] = ()


@pickled_by_fields
@dataclass(frozen=True, slots=True)
class SubmitItem:
    """One job of a batch submit (`submit_many`): what `submit` takes, as one record.

    Items of one batch may name different namespaces. `job_id` None asks for a new id
    (`ShardClient.submit_many` makes it, as `submit` does, before the hop)."""

    namespace: str
    job_id: str | None
    spec: JobSpec
    #: Who submits, for the audit log (an API key id, "python-client").
    actor: str = ""


@pickled_by_fields
@dataclass(frozen=True, slots=True)
class SubmitResult:
    """One item's outcome: the job and whether this request created it (`created` False: the
    same request was accepted before, HTTP 200), or the error it alone got (`job` None).
    Errors travel as values, pickled with their class, message and `retry_after_s`."""

    job: Job | None = None
    created: bool = False
    error: AosError | None = None
