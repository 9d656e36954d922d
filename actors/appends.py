"""Appending output: a shard's appends, one (cut into chunks, all or none) or many in order
(a producer's round), idempotent with the seq of their first chunk.

`Shard.append` and `Shard.append_many` hand their calls here.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable, Sequence

from actors.commands import check_encoding
from actors.committer import GroupCommitter
from actors.job_table import LiveJob
from actors.limits import MAX_JSON_OUTPUT_BYTES, check_size
from actors.shard_types import AppendAck, AppendManyResult
from actors.tail import OutputTail
from actors.versions import check_appendable, check_latest
from storage.base import Store
from storage.errors import AosError, Conflict
from storage.records import Chunk, Job, OutputFormat

#: `Shard._change(live, job, chunks=...)`: hand a job's change and its chunks to the group
#: commit and wait until it is durable.
Change = Callable[..., Awaitable[Job]]


class Appends:
    """A shard's appends, over its parts: the store and the output tail (to find chunks
    already written), `load` (a live job), `change` (commit a change), `durable` (the
    committed view), `committer` and `clock`."""

    def __init__(
        self,
        *,
        store: Store,
        tail: OutputTail,
        clock: Callable[[], float],
        load: Callable[[str, str], Awaitable[LiveJob]],
        change: Change,
        durable: Callable[[LiveJob], Awaitable[Job]],
        committer: Callable[[], GroupCommitter],
    ) -> None:
        self._store = store
        self._tail = tail
        self._clock = clock
        self._load = load
        self._change = change
        self._durable = durable
        self._committer = committer

    async def append(
        self,
        namespace: str,
        *,
        job_id: str,
        chunks: Sequence[bytes],
        seq: int | None = None,
        version: int | None = None,
    ) -> AppendAck:
        """Add one append of output, stored as `chunks` (consecutive seqs, one commit): all of
        them or, on any error, none. With `seq` (the first chunk's), a retried append is
        acknowledged, not repeated. `version` (default: the latest) must be the latest
        output version, not yet complete (`Conflict`; `NotFound` when there is none such).
        A big append's chunks may come as Ray's zero-copy buffers (`ShardClient.append`):
        they are kept as bytes."""
        chunks = [chunk if type(chunk) is bytes else bytes(chunk) for chunk in chunks]
        acks: list[AppendAck] = []
        live = await self._load(namespace, job_id)
        if seq is not None:
            live = await self._acknowledge_written(live, chunks, seq, acks, version)
        refused = await self._append_new(live, chunks[len(acks) :], acks, version, whole=True)
        if refused is not None:
            raise refused
        size = sum(ack.size for ack in acks)
        last = acks[-1]
        return AppendAck(last.seq, acks[0].offset, size, chunks=len(acks), version=last.version)

    async def append_many(
        self,
        namespace: str,
        *,
        job_id: str,
        chunks: Sequence[bytes],
        first_seq: int | None = None,
        version: int | None = None,
    ) -> AppendManyResult:
        """Append `chunks` in order, the new ones in one group commit (one transaction).

        Without `first_seq` they go after the job's current end. With it, chunk i has seq
        `first_seq + i`, as `append(seq=...)`: a chunk already written is acknowledged again
        when its bytes are the same (`Conflict` when not), a seq past the next one is a gap
        (`Conflict`). Each new chunk is checked as `append` checks it (the job runs, the
        version is the latest, UTF-8 for text and json jobs). The first chunk that fails
        stops the call: the chunks before it are acknowledged (durable), it and the ones
        after it are not written, and its error is returned with the acks, never raised. A
        commit that fails fails all the new chunks alike: nothing of them is written.
        """
        acks: list[AppendAck] = []
        try:
            live = await self._load(namespace, job_id)
            if first_seq is not None:
                live = await self._acknowledge_written(live, chunks, first_seq, acks, version)
            refused = await self._append_new(live, chunks[len(acks) :], acks, version)
        except AosError as exc:
            return AppendManyResult(tuple(acks), exc)
        return AppendManyResult(tuple(acks), refused)

    async def _append_new(
        self,
        live: LiveJob,
        chunks: Sequence[bytes],
        acks: list[AppendAck],
        version: int | None,
        *,
        whole: bool = False,
    ) -> AosError | None:
        """Append `chunks` after the end of the job's latest version (which `version` must
        be, when given), up to the first one refused (none of them if `whole`), in one add;
        extend `acks`. The refused chunk's error, or None."""
        job = live.current
        new: list[Chunk] = []
        refused: AosError | None = None
        try:
            for data in chunks:
                check_appendable(job, version)
                check_encoding(job.output_format, data)
                offset = new[-1].end if new else job.output_size
                if job.output_format is OutputFormat.JSON:
                    what = f"a json job's output (version {job.output_version})"
                    check_size(what, offset + len(data), MAX_JSON_OUTPUT_BYTES, "bytes")
                seq = job.output_seq + len(new) + 1
                new.append(Chunk(job.namespace, job.job_id, seq, offset, data, job.output_version))
        except AosError as exc:
            refused = exc
        if new and not (whole and refused):
            last = new[-1]
            changed = job.evolve(
                output_seq=last.seq, output_size=last.end, updated_at=self._clock()
            )
            await self._change(live, changed, chunks=new)
            acks.extend(AppendAck(c.seq, c.offset, len(c.data), version=c.version) for c in new)
        return refused

    async def _acknowledge_written(
        self,
        live: LiveJob,
        chunks: Sequence[bytes],
        first_seq: int,
        acks: list[AppendAck],
        version: int | None,
    ) -> LiveJob:
        """Acknowledge the leading chunks (chunk i has seq `first_seq + i`) that are already
        written with the same bytes to the latest output version (`version`, when given),
        into `acks`; `Conflict` for other bytes or a gap. Returns the job as it is now, with
        the rest of `chunks` to go after its end."""
        while len(acks) < len(chunks):
            job = live.current
            check_latest(job, version)
            seq = first_seq + len(acks)
            if seq > job.output_seq + 1:
                raise Conflict(f"seq {seq} would leave a gap: the next seq is {job.output_seq + 1}")
            if seq == job.output_seq + 1:
                break
            count = min(len(chunks) - len(acks), job.output_seq - seq + 1)
            written = await self._written(live, seq, count)
            for chunk, data in zip(written, chunks[len(acks) :], strict=False):
                if chunk.data != data:
                    raise Conflict(f"seq {chunk.seq} was already written with different data")
                acks.append(
                    AppendAck(chunk.seq, chunk.offset, len(chunk.data), version=chunk.version)
                )
            # The reads may have let other writes in (a new version), or a failed commit drop
            # the job.
            live = await self._load(job.namespace, job.job_id)
            if live.current.output_version != job.output_version:
                raise Conflict(f"output version {job.output_version} was completed meanwhile")
            if not written and live.current.output_seq >= seq:
                raise Conflict(f"seq {seq} was already written with different data")
        return live

    async def _written(self, live: LiveJob, seq: int, count: int) -> list[Chunk]:
        """The committed chunks `seq` .. `seq + count - 1`, in order, waiting for a commit of
        them still in flight (a producer resuming right after a disconnect); fewer when that
        commit failed."""
        job = await self._durable(live)
        version = live.current.output_version
        if (job.output_version, job.output_seq) < (version, seq + count - 1):
            await self._committer().barrier()
        last = seq + count - 1
        held = [c for c in self._tail.after(job.key, seq - 1, version=version) if c.seq <= last]
        if held:
            return held
        return await self._store.read_output(
            job.namespace, job.job_id, version=version, after_seq=seq - 1, limit=count
        )
