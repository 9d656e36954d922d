"""Completing an output version: the SHA-256 of its bytes and, for a json job, the check
that they are one JSON document; both over exactly the bytes the completion commits.

The shard completes a version when its job finishes and when a new version starts. The
digest is usually at hand (`actors.digest`: appends feed it); after a restart it is read
back from the store once. The JSON check reads the version page by page
(`actors.json_document`). Both wait for the job's writes in flight to commit, so the store
holds every byte of the version, and start again if more output arrived meanwhile.
"""

from __future__ import annotations

from collections.abc import AsyncIterator, Awaitable, Callable

from actors.digest import RunningDigest, catch_up
from actors.feed import replay
from actors.job_table import LiveJob
from actors.json_document import document_error
from actors.limits import OUTPUT_PAGE_BYTES
from storage.base import Store
from storage.errors import Invalid
from storage.records import Chunk, Job, OutputFormat

Load = Callable[[str, str], Awaitable[LiveJob]]


class Sealer:
    """Seals the latest output version of a shard's live jobs.

    `barrier` waits until every write added so far is committed; `load` finds a job's
    live record again (it may be replaced while a seal awaits: a failed commit drops it).
    """

    def __init__(self, store: Store, *, barrier: Callable[[], Awaitable[None]], load: Load):
        self._store = store
        self._barrier = barrier
        self._load = load

    async def seal(self, live: LiveJob, *, check_json: bool = False) -> tuple[LiveJob, str]:
        """The live job as it is now, and the SHA-256 (hex) of its latest output version.

        With `check_json`, `Invalid` unless that version is one JSON document. Nothing is
        awaited between the last look at `live.current` and the return, so what the caller
        commits next holds exactly the bytes checked.
        """
        checked: tuple[int, int] | None = None
        while True:
            job = live.current
            mark = _mark(job)
            if job.status.terminal and job.output_sha256 is not None:
                return live, job.output_sha256  # sealed when it finished
            if check_json and checked != mark:
                await self._barrier()
                error = await document_error(self._pages(job))
                live = await self._again(job)
                if error is not None and _mark(live.current) == mark:
                    raise Invalid(
                        f"output version {job.output_version} of job {job.job_id!r} is not"
                        f" one JSON document ({error}); append the rest, or complete the job"
                        " as Failed"
                    )
                checked = mark if error is None else None
                continue
            elif live.digest is None or not live.digest.covers(job):
                if live.digest is None or live.digest.version != job.output_version:
                    live.digest = RunningDigest(job.output_version)
                digest = live.digest
                await self._barrier()
                await catch_up(digest, self._reader(job), until_seq=job.output_seq)
            else:
                return live, live.digest.hexdigest()
            live = await self._again(job)

    async def _again(self, job: Job) -> LiveJob:
        return await self._load(job.namespace, job.job_id)

    def _reader(self, job: Job) -> Callable[[int, int], Awaitable[list[Chunk]]]:
        async def read(after_seq: int, limit: int) -> list[Chunk]:
            return await self._store.read_output(
                job.namespace,
                job.job_id,
                version=job.output_version,
                after_seq=after_seq,
                limit=limit,
                max_bytes=OUTPUT_PAGE_BYTES,
            )

        return read

    async def _pages(self, job: Job) -> AsyncIterator[bytes]:
        async for chunk in replay(self._reader(job), after_seq=0, until_seq=job.output_seq):
            yield chunk.data


def _mark(job: Job) -> tuple[int, int]:
    """Which bytes a job's latest version holds: committed output never changes."""
    return (job.output_version, job.output_seq)


def needs_json_check(job: Job, *, succeeded: bool) -> bool:
    """A json job completed as Succeeded: its output must be one JSON document."""
    return succeeded and job.output_format is OutputFormat.JSON
