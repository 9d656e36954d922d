"""What every backend does the same way, written once: fencing, the order deliveries are due
in, what a list query's filters and cursor mean, the bytes a page or a purge step holds, and
how a stored chunk is cut to a backend's largest item.

Pure functions over `storage.records`; no I/O. A backend that can ask its database for the
same thing (a SQL `WHERE`, a DynamoDB key condition) may, and the contract suite checks that
both agree (tests/contract).
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence

from storage.errors import Fenced
from storage.records import Chunk, Delivery, ExpiryCursor, Job, JobQuery

#: At most this many chunks go in one purge step (besides its byte bound).
PURGE_STEP_CHUNKS = 1024


# -- fencing ---------------------------------------------------------------------------


def check_fence(slot: int, epoch: int | None, held: int | None) -> None:
    """Raise `Fenced` unless the commit's `epoch` is the one the store holds for `slot`
    (`held`: None when nobody ever leased it)."""
    if held is None or held != epoch:
        where = "no lease" if held is None else f"epoch {held}"
        raise Fenced(f"shard {slot} is fenced: commit carries epoch {epoch}, the store has {where}")


# -- jobs ------------------------------------------------------------------------------


def matches(job: Job, query: JobQuery) -> bool:
    """Whether `job` is on a page of `query`: its status, a tag among its tags,
    `created_from <= created_at < created_to`, and strictly before the cursor
    `(created_at, job_id)`."""
    return (
        (query.status is None or job.status == query.status)
        and (query.tag is None or query.tag in job.tags)
        and (query.created_from is None or job.created_at >= query.created_from)
        and (query.created_to is None or job.created_at < query.created_to)
        and (query.before is None or newest_first(job) < query.before)
    )


def newest_first(job: Job) -> tuple[float, str]:
    """A job's place in a listing (`Store.list_jobs`), sorted descending: newest first,
    then by id descending."""
    return (job.created_at, job.job_id)


def page_of_jobs(jobs: Iterable[Job], query: JobQuery) -> list[Job]:
    """The page `query` asks for out of `jobs` (any order, any namespace-filtered set)."""
    found = sorted((job for job in jobs if matches(job, query)), key=newest_first, reverse=True)
    return found[: max(0, query.limit)]


def expiry_position(job: Job) -> ExpiryCursor:
    """A terminal job's place in the sweeper's order: (expires_at, namespace, job_id)."""
    return (job.expires_at or 0.0, job.namespace, job.job_id)


def expired(job: Job, slot: int, now: float, after: ExpiryCursor | None) -> bool:
    """Whether `Store.expired_jobs(slot, now=now, after=after)` returns `job`."""
    if job.slot != slot or not job.status.terminal:
        return False
    if job.expires_at is None or job.expires_at > now:
        return False
    return after is None or expiry_position(job) > after


def expired_page(
    jobs: Iterable[Job], slot: int, now: float, after: ExpiryCursor | None, limit: int
) -> list[Job]:
    found = sorted((j for j in jobs if expired(j, slot, now, after)), key=expiry_position)
    return found[: max(0, limit)]


# -- deliveries ------------------------------------------------------------------------


def due_order(delivery: Delivery) -> tuple[float, str]:
    """The order deliveries are loaded, listed and tried in: by creation, then by id."""
    return (delivery.created_at, delivery.delivery_id)


def in_due_order(deliveries: Iterable[Delivery]) -> list[Delivery]:
    return sorted(deliveries, key=due_order)


# -- output pages ----------------------------------------------------------------------


def page_size(offsets: Sequence[int], max_bytes: int | None) -> int:
    """How many of the chunks starting at `offsets` (in seq order) one page holds: those
    that start within `max_bytes` of the first (all when None; never fewer than one of
    those given). A page thus holds at most `max_bytes` plus one chunk."""
    if max_bytes is None or not offsets:
        return len(offsets)
    first = offsets[0]
    return sum(1 for offset in offsets if offset - first < max_bytes)


def page(chunks: Sequence[Chunk], max_bytes: int | None) -> list[Chunk]:
    """The first page of `chunks` (in seq order) by `page_size`."""
    return list(chunks[: page_size([c.offset for c in chunks], max_bytes)])


def purge_step(positions: Sequence[tuple[int, int, int]], max_bytes: int) -> tuple[int, int]:
    """What one purge step removes, from the (version, seq, offset) of the first chunks left
    (in version, seq order; not empty): the chunks of the first version up to the returned
    (version, last seq), those starting within `max_bytes` of the first."""
    version, _, first = positions[0]
    last = max(seq for v, seq, offset in positions if v == version and offset - first < max_bytes)
    return version, last


# -- items -----------------------------------------------------------------------------


def parts(stored: bytes, item_bytes: int) -> list[bytes]:
    """A stored chunk cut to a backend's largest item (`item_bytes` of data each; at least
    one part, even for no bytes). Joined back with `b"".join`."""
    if item_bytes <= 0:
        raise ValueError(f"item_bytes must be positive, not {item_bytes}")
    return [stored[i : i + item_bytes] for i in range(0, len(stored), item_bytes)] or [b""]
