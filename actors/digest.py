"""The SHA-256 of an output version, kept as its chunks are appended, so that completing a
10 GB version costs no second read of it.

A hashlib object can be neither pickled nor saved: its state lives only in the shard's
memory, beside the live job (`actors.job_table.LiveJob`). A job loaded from the store with
output already in its latest version (a restarted shard, a reload after a failed commit)
has no running digest; the first completion of that version reads it back from the store
once (`catch_up`), and from then on appends feed the digest again.
"""

from __future__ import annotations

import hashlib

from actors.feed import Read, replay
from storage.records import Chunk, Job

#: The SHA-256 of no bytes (hex): a version nothing was appended to.
EMPTY_SHA256 = hashlib.sha256().hexdigest()


class RunningDigest:
    """The SHA-256 of chunks 1..`seq` of output version `version`, fed in seq order.

    The hashlib object is made at the first chunk: it costs ~250 bytes of OpenSSL state,
    and most live jobs of a big shard have no output yet (DESIGN-NOTES "A million live
    jobs")."""

    __slots__ = ("_hash", "seq", "version")

    def __init__(self, version: int) -> None:
        self.version = version
        self.seq = 0
        self._hash: hashlib._Hash | None = None

    def feed(self, chunk: Chunk) -> None:
        """Take the next chunk of this version; any other chunk is ignored (the digest then
        stays behind, and `catch_up` reads the rest from the store)."""
        if chunk.version == self.version and chunk.seq == self.seq + 1:
            if self._hash is None:
                self._hash = hashlib.sha256()
            self._hash.update(chunk.data)
            self.seq = chunk.seq

    def covers(self, job: Job) -> bool:
        """Whether this is the digest of `job`'s latest output version, whole."""
        return self.version == job.output_version and self.seq == job.output_seq

    def hexdigest(self) -> str:
        return EMPTY_SHA256 if self._hash is None else self._hash.hexdigest()


async def catch_up(digest: RunningDigest, read: Read, *, until_seq: int) -> None:
    """Feed `digest` the committed chunks after its seq up to `until_seq`, page by page
    (`read` reads its version from the store)."""
    async for chunk in replay(read, after_seq=digest.seq, until_seq=until_seq):
        digest.feed(chunk)
