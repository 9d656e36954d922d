"""One watch per job per process: every reader of a job here shares one `watch` on its shard.

An SSE stream (or a Python client's `events()`) follows a job by calling `watch(revision,
after_seq, timeout_s)` again and again (`actors.feed.job_events`). Made per stream, 10,000
streams were 10,000 actor calls held open on the shards and one Ray call per stream per
update. Here the streams of one job in one process share one loop (`_JobWatch`) that holds
one watch on the shard, keeps the latest committed job and a small window of the newest
chunks, and wakes every subscriber, in the order they subscribed, at each update. The loop
ends when the last subscriber leaves.

A subscriber holds only its place (the job it last saw): a slow one never holds the others
up (the loop wakes it and moves on) and costs no memory while it falls behind; when the
window no longer reaches back to its position it gets no chunks and reads the gap from
the store, as `job_events` does when the shard's tail lost them.

The hub only answers "has the job moved past this point?" from what the shard said; it
never makes up a job: every job it hands out is one the shard (or the store) committed.
"""

from __future__ import annotations

import asyncio
import collections
from collections.abc import Awaitable, Callable
from typing import Any

from actors.shard_types import Update
from storage.records import Chunk, Job

#: (namespace, job_id, revision, after_seq, timeout_s) -> the shard's `watch` answer.
ShardWatch = Callable[[str, str, int, int, float], Awaitable[Update]]
Key = tuple[str, str]

#: How long one shard watch of the loop waits for a change (the shard caps it at its
#: `max_wait_s`); a quiet job costs one call per this many seconds, whatever its readers.
LOOP_WATCH_S = 60.0
#: Bytes of the newest chunks a job's loop keeps for subscribers a little behind (at least
#: the last update's): further behind, they read the store.
WINDOW_BYTES = 256 * 1024


def newer(job: Job, than: Job) -> bool:
    """`job` is a later state than `than`: a later revision of the same job, or a job of this
    id created after it (deleted and submitted again: its output starts again)."""
    if job.created_at != than.created_at:
        return job.created_at > than.created_at
    return job.revision > than.revision


class _Round:
    """One wait between two updates of a job: its waiters are woken, in the order they came,
    when the next update (or error) comes. (`asyncio.Event`, without its loop checks.)"""

    __slots__ = ("error", "waiters")

    def __init__(self) -> None:
        self.waiters: list[asyncio.Future[bool]] = []
        self.error: BaseException | None = None

    def wait(self, loop: asyncio.AbstractEventLoop) -> asyncio.Future[bool]:
        """A future set to True at the round's end (or False by the waiter's own timer)."""
        waiter = loop.create_future()
        self.waiters.append(waiter)
        return waiter

    def end(self, error: BaseException | None) -> None:
        self.error = error
        for waiter in self.waiters:
            if not waiter.done():
                waiter.set_result(True)
        self.waiters = []


class _JobWatch:
    """One job's shared loop state: the latest committed job, the newest chunks, the round
    the subscribers wait on, and how many subscribers there are."""

    __slots__ = ("bytes", "job", "round", "subscribers", "task", "window")

    def __init__(self, job: Job) -> None:
        self.job = job
        self.window: collections.deque[Chunk] = collections.deque()
        self.bytes = 0
        self.round = _Round()
        self.subscribers = 0
        self.task: asyncio.Task[None] | None = None

    def advance(self, job: Job) -> None:
        """`job` is the latest state known (unless an even newer one is): the loop's next
        watch starts from it. A job of this id created again drops the old one's chunks."""
        if newer(self.job, job):
            return
        if job.created_at != self.job.created_at:
            self.window.clear()
            self.bytes = 0
        self.job = job

    def publish(self, update: Update, *, window_bytes: int) -> None:
        """Take the shard's answer (chunks too, unless it is older than what is known:
        its chunks might be of an earlier job of this id) and wake everyone waiting."""
        if not newer(self.job, update.job):
            self.advance(update.job)
            for chunk in update.chunks:
                self._keep(chunk)
            while self.bytes > window_bytes and len(self.window) > len(update.chunks):
                self.bytes -= len(self.window.popleft().data)
        self._next_round(None)

    def fail(self, error: BaseException) -> None:
        """The shard watch failed: everyone waiting now gets `error` (as their own call would
        have); later waits start the loop again."""
        self._next_round(error)

    def chunks_after(self, after_seq: int, version: int) -> tuple[Chunk, ...]:
        """The window's chunks of `version` after `after_seq`, if it holds all of them; else
        () (the subscriber reads the store)."""
        window = self.window
        if not window or window[0].version != version or window[0].seq > after_seq + 1:
            return ()
        return tuple(chunk for chunk in window if chunk.seq > after_seq)

    def _keep(self, chunk: Chunk) -> None:
        last = self.window[-1] if self.window else None
        if last is not None and (last.version, last.seq + 1) != (chunk.version, chunk.seq):
            if (last.version, last.seq) >= (chunk.version, chunk.seq):
                return  # already held
            self.window.clear()  # a gap: keep only contiguous runs
            self.bytes = 0
        self.window.append(chunk)
        self.bytes += len(chunk.data)

    def _next_round(self, error: BaseException | None) -> None:
        done, self.round = self.round, _Round()
        done.end(error)


class WatchHub:
    """Shares one shard watch per job among this process's readers (`subscribe`)."""

    def __init__(
        self,
        watch: ShardWatch,
        *,
        loop_watch_s: float = LOOP_WATCH_S,
        window_bytes: int = WINDOW_BYTES,
    ) -> None:
        self._watch = watch
        self._loop_watch_s = loop_watch_s
        self._window_bytes = window_bytes
        self._jobs: dict[Key, _JobWatch] = {}

    def subscribe(self, job: Job) -> Subscription:
        """A subscription to `job`'s changes, starting from `job` (as committed). Close it
        (or use it as a context manager) when done: the last one to leave ends the loop."""
        key = (job.namespace, job.job_id)
        shared = self._jobs.get(key)
        if shared is None:
            shared = self._jobs[key] = _JobWatch(job)
        else:
            shared.advance(job)  # the loop's next watch starts from the newest state known
        shared.subscribers += 1
        return Subscription(self, shared, job)

    @property
    def watches(self) -> int:
        """Shard watches this hub holds open now (one per job with a running loop)."""
        return sum(1 for shared in self._jobs.values() if shared.task is not None)

    @property
    def subscribers(self) -> int:
        return sum(shared.subscribers for shared in self._jobs.values())

    def _ensure_loop(self, shared: _JobWatch) -> None:
        if shared.task is None:
            shared.task = asyncio.get_running_loop().create_task(self._loop(shared))

    def _leave(self, shared: _JobWatch) -> None:
        shared.subscribers -= 1
        if shared.subscribers:
            return
        key = (shared.job.namespace, shared.job.job_id)
        if self._jobs.get(key) is shared:
            del self._jobs[key]
        if shared.task is not None:
            shared.task.cancel()  # the shard's watch is cancelled with it
            shared.task = None

    async def _loop(self, shared: _JobWatch) -> None:
        job = shared.job
        try:
            while shared.subscribers:
                job = shared.job
                update = await self._watch(
                    job.namespace, job.job_id, job.revision, job.output_seq, self._loop_watch_s
                )
                shared.publish(update, window_bytes=self._window_bytes)
        except asyncio.CancelledError:
            raise
        except Exception as exc:  # handed to every waiting subscriber, who raises it
            shared.fail(exc)
        finally:
            if shared.task is asyncio.current_task():
                shared.task = None


class Subscription:
    """One reader's place in a job's shared loop: its `watch` is `actors.feed.Watch`.

    Its quiet timeout is one timer that outlives the waits: armed at a wait's deadline, it
    finds a later deadline there when updates came meanwhile and moves to it, so a busy
    job's readers set a timer per `timeout_s`, not one per update (a timer per wait was a
    sixth of a replica's CPU with 10,000 streams)."""

    __slots__ = ("_closed", "_deadline", "_hub", "_job", "_shared", "_timer", "_waiter")

    def __init__(self, hub: WatchHub, shared: _JobWatch, job: Job) -> None:
        self._hub = hub
        self._shared = shared
        self._job = job  # the newest state this reader has been given
        self._closed = False
        self._deadline = 0.0  # loop time the current wait times out at
        self._waiter: asyncio.Future[bool] | None = None
        self._timer: asyncio.TimerHandle | None = None

    async def watch(self, revision: int, after_seq: int, timeout_s: float) -> Update:
        """The committed job once it is past `revision` or its output past `after_seq` (with
        the window's chunks after `after_seq`, or none: then read the store), or the job as
        last seen after `timeout_s` of quiet. Raises what the shard's watch raised
        (`NotFound` once the job is deleted, `ShardUnavailable`) if it failed meanwhile."""
        shared = self._shared
        if self._closed:
            raise RuntimeError("this subscription is closed")
        loop = asyncio.get_running_loop()
        self._deadline = loop.time() + timeout_s
        while not self._moved(shared.job, revision, after_seq):
            self._hub._ensure_loop(shared)
            waited = shared.round
            self._waiter = waited.wait(loop)
            self._arm(loop)
            try:
                if not await self._waiter:
                    break  # quiet for timeout_s
            finally:
                self._waiter = None
            if waited.error is not None:
                raise waited.error
        job = shared.job
        if not self._moved(job, revision, after_seq):
            return Update(self._job)
        self._job = job
        return Update(job, shared.chunks_after(after_seq, job.output_version))

    def _moved(self, job: Job, revision: int, after_seq: int) -> bool:
        if job.created_at != self._job.created_at:
            return job.created_at > self._job.created_at
        return job.revision > revision or job.output_seq > after_seq

    def _arm(self, loop: asyncio.AbstractEventLoop) -> None:
        """A timer at or before this wait's deadline (the one armed, if it is early enough)."""
        timer = self._timer
        if timer is not None and timer.when() <= self._deadline:
            return
        if timer is not None:
            timer.cancel()
        self._timer = loop.call_at(self._deadline, self._on_timer, loop)

    def _on_timer(self, loop: asyncio.AbstractEventLoop) -> None:
        self._timer = None
        waiter = self._waiter
        if waiter is None or waiter.done():
            return  # not waiting: the next wait arms a timer again
        if loop.time() >= self._deadline:
            waiter.set_result(False)
        else:  # the wait began after this timer was set: on to its own deadline
            self._timer = loop.call_at(self._deadline, self._on_timer, loop)

    def close(self) -> None:
        if not self._closed:
            self._closed = True
            if self._timer is not None:
                self._timer.cancel()
                self._timer = None
            self._hub._leave(self._shared)

    def __enter__(self) -> Subscription:
        return self

    def __exit__(self, *exc: Any) -> None:
        self.close()
