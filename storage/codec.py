"""Output chunks at rest: compressed with zstd when that saves space, flagged per chunk.

A chunk is stored as `(stored bytes, encoding)`: encoding None is the bytes as appended,
`"zstd"` a zstd frame of them (RFC 8878). Which one a chunk got is the writer's choice per
chunk; every reader unpacks by the flag, so chunks of both kinds (and rows written before
compression existed) read back the same. Offsets and sizes everywhere else count the
appended bytes, never the stored ones.

zstd at level 3 compresses ordinary log text about 8:1 at hundreds of MB/s, and zstandard
releases the GIL while it works, so a store may compress on a worker thread.
"""

from __future__ import annotations

import threading

import zstandard

from storage.errors import StoreUnavailable

ZSTD = "zstd"
#: Below this, a chunk is stored as it is: a frame's header costs more than it saves.
MIN_PACKED_BYTES = 256
LEVEL = 3
#: A chunk that shrinks by less than this fraction is stored as it is (reading it back
#: would cost a decompression for almost nothing saved).
MIN_SAVING = 1 / 16

_local = threading.local()


def pack(data: bytes) -> tuple[bytes, str | None]:
    """`data` as it is best stored: (zstd frame, "zstd") when that is smaller by at least
    `MIN_SAVING`, else (data, None)."""
    if len(data) < MIN_PACKED_BYTES:
        return data, None
    packed = _compressor().compress(data)
    if len(packed) > len(data) * (1 - MIN_SAVING):
        return data, None
    return packed, ZSTD


def unpack(stored: bytes, encoding: str | None) -> bytes:
    """The appended bytes of a stored chunk. A flag this code does not know, or a frame that
    does not decode, is a store fault (`StoreUnavailable`), never wrong output."""
    if encoding is None:
        return stored
    if encoding != ZSTD:
        raise StoreUnavailable(f"an output chunk is stored with unknown encoding {encoding!r}")
    try:
        return _decompressor().decompress(stored)
    except zstandard.ZstdError as exc:
        raise StoreUnavailable("an output chunk's stored zstd frame is corrupt") from exc


def _compressor() -> zstandard.ZstdCompressor:
    # One per thread: a ZstdCompressor must not be used by two threads at once.
    compressor: zstandard.ZstdCompressor | None = getattr(_local, "compressor", None)
    if compressor is None:
        # write_content_size: the frame says its size, so decompress() needs no hint.
        compressor = _local.compressor = zstandard.ZstdCompressor(
            level=LEVEL, write_content_size=True
        )
    return compressor


def _decompressor() -> zstandard.ZstdDecompressor:
    decompressor: zstandard.ZstdDecompressor | None = getattr(_local, "decompressor", None)
    if decompressor is None:
        decompressor = _local.decompressor = zstandard.ZstdDecompressor()
    return decompressor
