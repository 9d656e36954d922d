"""The bounded in-memory tail of recent committed output, per job and per shard.

Live streams read new chunks from here instead of the store; anything older than
the tail comes from the store. Memory is capped per job and for the whole shard
(least recently appended jobs lose their tails first). A job's tail holds one output
version's chunks: a chunk of a new version starts it again.
"""

from __future__ import annotations

import collections

from storage.records import Chunk

Key = tuple[str, str]


class OutputTail:
    def __init__(self, *, per_job_bytes: int, total_bytes: int) -> None:
        self._per_job_bytes = per_job_bytes
        self._total_bytes = total_bytes
        self._tails: collections.OrderedDict[Key, collections.deque[Chunk]] = (
            collections.OrderedDict()
        )
        self._sizes: dict[Key, int] = {}
        self.bytes = 0

    def add(self, chunk: Chunk) -> None:
        key = (chunk.namespace, chunk.job_id)
        tail = self._tails.get(key)
        if tail is None:
            tail = self._tails[key] = collections.deque()
        if tail and (tail[-1].version, tail[-1].seq + 1) != (chunk.version, chunk.seq):
            self.forget(key)  # a gap (a reload, a new version): keep only contiguous runs
            tail = self._tails[key] = collections.deque()
        tail.append(chunk)
        self._tails.move_to_end(key)
        self._grow(key, len(chunk.data))
        while self._sizes[key] > self._per_job_bytes and len(tail) > 1:
            self._drop_oldest(key)
        while self.bytes > self._total_bytes and self._tails:
            self._drop_oldest(next(iter(self._tails)))

    def after(self, key: Key, after_seq: int | None, *, version: int) -> tuple[Chunk, ...]:
        """Chunks of output `version` after `after_seq`, if the tail still holds all of them;
        else ()."""
        tail = self._tails.get(key)
        if after_seq is None or not tail or tail[0].seq > after_seq + 1:
            return ()
        if tail[0].version != version:
            return ()
        return tuple(c for c in tail if c.seq > after_seq)

    def get(self, key: Key, seq: int) -> Chunk | None:
        return next((c for c in self._tails.get(key, ()) if c.seq == seq), None)

    def forget(self, key: Key) -> None:
        if self._tails.pop(key, None) is not None:
            self.bytes -= self._sizes.pop(key)

    def _grow(self, key: Key, size: int) -> None:
        self._sizes[key] = self._sizes.get(key, 0) + size
        self.bytes += size

    def _drop_oldest(self, key: Key) -> None:
        tail = self._tails[key]
        dropped = tail.popleft()
        self._grow(key, -len(dropped.data))
        if not tail:
            self.forget(key)
