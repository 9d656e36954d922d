"""Creating jobs: a shard's submits, single or in a batch, each answered from what is
durable whatever else is in flight (DESIGN-NOTES 37).

`Shard.submit` and `Shard.submit_many` hand their items here. All new jobs of a call are
handed to the group commit before any is awaited, so they share one commit.
"""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable, Coroutine, Sequence
from dataclasses import dataclass, replace
from typing import Any, TypeVar

from actors.commands import new_job_id
from actors.committer import GroupCommitter, durable
from actors.job_table import JobTable, Key, LiveJob
from actors.namespaces import NamespaceBook, audit_entry
from actors.shard_types import ShardConfig, SubmitItem, SubmitResult
from actors.webhooks import ssrf
from actors.webhooks.shard_webhooks import ShardWebhooks
from storage.errors import AosError, Conflict, Fenced, Overloaded, StoreUnavailable
from storage.records import Job

T = TypeVar("T")

#: Rounds of deciding a submit again after another request's creation of its job failed to
#: commit. Each round costs a failed commit; past them the store is failing: retry later.
MAX_SUBMIT_ROUNDS = 4
CREATION_RETRY_AFTER_S = 1.0


class Submits:
    """A shard's submits, over the shard's parts: its jobs, namespaces and webhooks, its
    group commit (`committer`), and its checks (`check_writable`: not fenced;
    `until_deleted`: no key of the call is being deleted)."""

    def __init__(
        self,
        *,
        jobs: JobTable,
        namespaces: NamespaceBook,
        webhooks: ShardWebhooks,
        config: ShardConfig,
        clock: Callable[[], float],
        committer: Callable[[], GroupCommitter],
        check_writable: Callable[[], None],
        until_deleted: Callable[[Sequence[Key]], Awaitable[None]],
    ) -> None:
        self._jobs = jobs
        self._namespaces = namespaces
        self._webhooks = webhooks
        self._config = config
        self._allowed = config.allowed_networks
        self._clock = clock
        self._committer = committer
        self._check_writable = check_writable
        self._until_deleted = until_deleted

    async def submit_many(self, items: Sequence[SubmitItem]) -> list[SubmitResult]:
        """Create jobs, each as `submit` would; one result per item, in order.

        Every item gets `submit`'s checks (its namespace is this shard's and exists, its
        webhook host is public, the same id with the same request again is `created`
        False, with another request `Conflict`; an id twice in `items` is the same). All
        new jobs are handed to the group commit before any is awaited, so they share one
        commit. An item's error is its own (`Unstorable` for data the store refused); a
        shard-wide one (`Fenced`, `Overloaded`, `StoreUnavailable`) fails the items it
        reaches.

        An item whose job another request is creating right now is answered once that job
        is durable (200, or 409 for another request); when its commit fails the item is
        decided again (`_submit_round`), as if it had come just after: never 404 for a job
        it would create itself, never an answer that a failed commit takes back.
        """
        items = [_with_job_id(item) for item in items]  # the same ids in every round
        errors = await self._precheck(items)
        results = [None if error is None else SubmitResult(error=error) for error in errors]
        for _ in range(MAX_SUBMIT_ROUNDS):
            todo = [i for i, result in enumerate(results) if result is None]
            if not todo:
                break
            outcomes = await self._submit_round([items[i] for i in todo])
            for i, outcome in zip(todo, outcomes, strict=True):
                results[i] = outcome
        return [result or _creation_failing() for result in results]

    async def _precheck(self, items: Sequence[SubmitItem]) -> list[AosError | None]:
        """What a submit checks before it looks at its job: the namespace is this shard's and
        exists, the webhook host resolves to public addresses. Each namespace and URL once;
        the URLs concurrently (DNS)."""
        refused: dict[str, AosError] = {}
        for namespace in {item.namespace for item in items}:
            try:
                await self._namespaces.get(namespace)
            except AosError as exc:
                refused[namespace] = exc
        urls = list(
            {
                item.spec.webhook_url
                for item in items
                if item.spec.webhook_url is not None and item.namespace not in refused
            }
        )
        checked = await _concurrently([self._check_webhook(url) for url in urls])
        url_refused = {url: error for url, error in zip(urls, checked, strict=True) if error}
        return [
            refused.get(item.namespace) or url_refused.get(item.spec.webhook_url or "")
            for item in items
        ]

    async def _check_webhook(self, url: str) -> AosError | None:
        try:
            await ssrf.resolve_and_check(url, allowed=self._allowed)
        except AosError as exc:
            return exc
        return None

    async def _load_many(self, keys: Sequence[Key]) -> dict[Key, LiveJob | AosError | None]:
        """Each job as it is now: loaded (from the store if need be: one read per namespace,
        the namespaces concurrently), None when there is none, or the error reading it."""
        ids: dict[str, list[str]] = {}
        for namespace, job_id in keys:
            ids.setdefault(namespace, []).append(job_id)
        found: dict[Key, LiveJob | AosError | None] = dict.fromkeys(keys)
        loads = await _concurrently([self._load_namespace(ns, some) for ns, some in ids.items()])
        for (namespace, some), loaded in zip(ids.items(), loads, strict=True):
            if isinstance(loaded, AosError):
                found.update(((namespace, job_id), loaded) for job_id in some)
            else:
                found.update(((namespace, job_id), live) for job_id, live in loaded.items())
        return found

    async def _load_namespace(
        self, namespace: str, job_ids: list[str]
    ) -> dict[str, LiveJob] | AosError:
        try:
            return await self._jobs.load_many(namespace, job_ids)
        except AosError as exc:
            return exc

    async def _submit_round(self, items: Sequence[SubmitItem]) -> list[SubmitResult | None]:
        """Each item's outcome, as its job is now; None to decide it again: it waited for
        another request's creation of its job, which did not commit."""
        keys = [(item.namespace, _id_of(item)) for item in items]
        await self._until_deleted(keys)
        loaded = await self._load_many(keys)
        # From here to the awaits below nothing yields: the jobs loaded stay as seen.
        waits = self._decide(items, keys, loaded)
        return [await self._outcome(wait) for wait in waits]

    def _decide(
        self,
        items: Sequence[SubmitItem],
        keys: list[Key],
        loaded: dict[Key, LiveJob | AosError | None],
    ) -> list[_Wait]:
        """Each item's outcome, or what to wait for: a new job's add (every add is made
        here, before any is awaited: one group commit), or an existing job's first commit
        (then 200, or 409 for another request)."""
        waits: list[_Wait] = []
        created: dict[Key, _Wait] = {}
        for item, key in zip(items, keys, strict=True):
            found = self._jobs.get(key) or loaded[key]
            if isinstance(found, AosError):
                waits.append(_Wait(error=found))
            elif found is None:
                wait = created[key] = self._create(item, key)
                waits.append(wait)
            elif key in created and found.current.request_hash == item.spec.fingerprint():
                waits.append(replace(created[key], created=False))  # the first creates it
            else:
                same = found.current.request_hash == item.spec.fingerprint()
                waits.append(_Wait(live=found, conflict=not same))
        return waits

    def _create(self, item: SubmitItem, key: Key) -> _Wait:
        """Hand a new job to the group commit (not awaited) and hold it in memory."""
        try:
            self._check_writable()
        except Fenced as exc:
            return _Wait(error=exc)
        namespace, job_id = key
        now = self._clock()
        job = item.spec.new_job(namespace, job_id, slot=self._config.slot, now=now)
        hooks = self._namespaces.cached_hooks(namespace)
        deliveries = self._webhooks.on_change(None, job, (), hooks)
        audit = audit_entry(now, namespace, item.actor, "job.submit", job_id)
        try:
            future = self._committer().add(jobs=[job], deliveries=deliveries, audit=[audit])
        except Overloaded as exc:
            self._webhooks.failed(deliveries)
            return _Wait(error=exc)
        self._jobs.add(job, committed=False)
        return _Wait(job=job, future=future, created=True)

    async def _outcome(self, wait: _Wait) -> SubmitResult | None:
        try:
            if wait.future is not None:
                await durable(wait.future)
                return SubmitResult(wait.job, wait.created)
            if wait.live is not None:
                return await self._existing(wait.live, conflict=wait.conflict)
        except AosError as exc:
            return SubmitResult(error=exc)
        return SubmitResult(error=wait.error)

    async def _existing(self, live: LiveJob, *, conflict: bool) -> SubmitResult | None:
        """A submit of a job that exists: once it is durable, 200 (`created` False) or
        `Conflict`; None when its first commit, in flight, failed (the job is not)."""
        if live.committed is None:
            await self._committer().barrier()
        job = live.committed
        if job is None:
            return None
        if conflict:
            message = f"job {job.job_id!r} exists with a different request"
            return SubmitResult(error=Conflict(message))
        return SubmitResult(job, False)


@dataclass(frozen=True, slots=True)
class _Wait:
    """What one submit item waits for: its new job's add (`future`, `job`), an existing
    job's commit (`live`), or nothing (`error`, its outcome)."""

    job: Job | None = None
    future: asyncio.Future[None] | None = None
    created: bool = False
    live: LiveJob | None = None
    #: `live` exists with another request: 409 once it is durable.
    conflict: bool = False
    error: AosError | None = None


async def _concurrently(calls: list[Coroutine[Any, Any, T]]) -> list[T]:
    """`asyncio.gather`, without its task when there is one call (a single submit)."""
    if len(calls) == 1:
        return [await calls[0]]
    return list(await asyncio.gather(*calls))


def _with_job_id(item: SubmitItem) -> SubmitItem:
    """The item, with a new job id when it has none (`ShardClient` gives one before)."""
    return item if item.job_id is not None else replace(item, job_id=new_job_id())


def _id_of(item: SubmitItem) -> str:
    if item.job_id is None:
        raise RuntimeError("a submit item reached its round without a job id")
    return item.job_id


def _creation_failing() -> SubmitResult:
    message = "the job's creation by concurrent requests keeps failing to commit; retry shortly"
    return SubmitResult(error=StoreUnavailable(message, retry_after_s=CREATION_RETRY_AFTER_S))


def job_of(result: SubmitResult) -> Job:
    if result.job is None:
        raise RuntimeError("a submit result holds neither a job nor an error")
    return result.job
