"""One append's bytes cut into the chunks the store keeps, as they arrive.

An append may be up to `MAX_APPEND_BYTES` (64 MiB); the store keeps chunks of at most the
deployment's `max_chunk_bytes` (4 MiB by default), each with its own seq. Cuts fall on UTF-8
character boundaries, so each chunk of valid UTF-8 text is valid on its own (text and json
jobs check every chunk); binary output may be cut anywhere and is cut the same way.
"""

from __future__ import annotations

from actors.limits import MAX_APPEND_BYTES, check_append_size
from storage.errors import Invalid

#: UTF-8 continuation bytes are 0b10xxxxxx; a character is at most 4 bytes.
_CONTINUATION_MASK, _CONTINUATION = 0xC0, 0x80
_MAX_CHARACTER_BYTES = 4


def cut_at(data: bytes | bytearray, limit: int) -> int:
    """Where a chunk of at most `limit` bytes taken from the start of `data` ends: at
    `limit`, moved back (by at most 3 bytes) to the start of a UTF-8 character."""
    if len(data) <= limit:
        return len(data)
    for end in range(limit, max(limit - _MAX_CHARACTER_BYTES, 0), -1):
        if data[end] & _CONTINUATION_MASK != _CONTINUATION:
            return end
    return limit  # not UTF-8 here: binary output, cut anywhere


class Pieces:
    """Collects an append's bytes (`feed`) and cuts them into chunks of at most
    `chunk_bytes`; `TooLarge` as soon as they pass `max_bytes`. Holds at most one chunk
    beyond what it has cut."""

    def __init__(self, chunk_bytes: int, max_bytes: int = MAX_APPEND_BYTES) -> None:
        if chunk_bytes < _MAX_CHARACTER_BYTES:
            raise ValueError(f"chunk_bytes must be at least {_MAX_CHARACTER_BYTES}")
        self._chunk_bytes = chunk_bytes
        self._max_bytes = max_bytes
        self._held = bytearray()
        self._chunks: list[bytes] = []
        self.size = 0

    @classmethod
    def of(cls, data: object, chunk_bytes: int, max_bytes: int = MAX_APPEND_BYTES) -> Pieces:
        """`data` (bytes) cut into chunks."""
        if not isinstance(data, bytes | bytearray | memoryview):
            raise Invalid("output must be bytes")
        pieces = cls(chunk_bytes, max_bytes)
        pieces.feed(data)
        return pieces

    def feed(self, data: bytes | bytearray | memoryview) -> None:
        self.size += len(data)
        check_append_size(self.size, self._max_bytes)
        self._held += data
        while len(self._held) > self._chunk_bytes:
            end = cut_at(self._held, self._chunk_bytes)
            self._chunks.append(bytes(self._held[:end]))
            del self._held[:end]

    def chunks(self) -> list[bytes]:
        """The chunks, in order (`Invalid` when nothing was fed: an append is never empty)."""
        if self._held:
            self._chunks.append(bytes(self._held))
            self._held.clear()
        if not self._chunks:
            raise Invalid("output chunk is empty")
        return self._chunks
