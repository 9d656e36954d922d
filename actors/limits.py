"""Every size and range limit of the service, named once; checks raise `TooLarge` or `Invalid`.

The rule for status codes: a body or a field over its size limit is `TooLarge` (413),
a value of the wrong shape or out of range is `Invalid` (422).
"""

from __future__ import annotations

import re

from storage.errors import Invalid, TooLarge

MAX_ID_CHARS = 128
MAX_NAMESPACE_CHARS = 63
MAX_TITLE_CHARS = 512
MAX_DESCRIPTION_CHARS = 8192
MAX_TAGS = 32
MAX_TAG_CHARS = 64
MAX_URL_CHARS = 2048
MAX_WEBHOOK_EVENTS = 16
MAX_ERROR_CHARS = 8192
#: A webhook attempt's error text, as recorded (longer ones are clipped, not refused).
MAX_ATTEMPT_ERROR_CHARS = 512
MAX_TTL_S = 10 * 365 * 86400
MAX_NAMESPACE_DESCRIPTION_CHARS = 1024
MAX_KEY_DESCRIPTION_CHARS = 256
#: The default largest chunk the store keeps; `Settings.max_chunk_bytes` may change it for a
#: deployment. An append over it is cut into several chunks (`actors.pieces`).
MAX_CHUNK_BYTES = 4 * 1024 * 1024
#: The largest single append (HTTP `POST .../output`, `Client.append`), in bytes.
MAX_APPEND_BYTES = 64 * 1024 * 1024
#: A page of output read at once (replaying, downloading, streaming, a webhook's window)
#: holds the chunks that start within this many bytes of its first one: at most this plus
#: one chunk. A reader's buffer is about one page, however slowly it reads.
OUTPUT_PAGE_BYTES = 4 * 1024 * 1024
#: A job has at most this many output versions (`POST .../versions`; its record lists each).
MAX_OUTPUT_VERSIONS = 100
#: One output version of a json job holds at most this many bytes: completing it checks that
#: they are one JSON document (about 40 MB/s), so the check has a bounded cost.
MAX_JSON_OUTPUT_BYTES = 64 * 1024 * 1024
#: One `append_many` call (a round of a pipelined producer) carries at most this many chunks
#: and bytes (or one chunk of the deployment's largest size, if that is more).
MAX_APPEND_MANY_CHUNKS = 1024
MAX_APPEND_MANY_BYTES = 16 * 1024 * 1024
#: The largest JSON body (`serve_app.guard` refuses more, 413, before reading it). A submit
#: with every field full is ~13K characters, ~140 KB even were each one written as a
#: `\uXXXX\uXXXX` surrogate pair (12 bytes; tests/unit/test_guard.py builds it).
MAX_JSON_BODY_BYTES = 256 * 1024
#: The most jobs one batch submit holds (HTTP `POST /api/v1/jobs:batch`, `Client.submit_many`).
MAX_BATCH_JOBS = 1000
#: The largest batch submit body: 1,000 submits of ~16 KiB each (typical ones are ~1 KiB).
MAX_BATCH_BODY_BYTES = 16 * 1024 * 1024
MAX_SECRET_GRACE_S = 30 * 86400
#: Sequence numbers, offsets and revisions are stored as signed 64-bit integers.
MAX_INT64 = 2**63 - 1
DEFAULT_SECRET_GRACE_S = 24 * 3600


def clip(text: str | None, limit: int) -> str | None:
    """`text` cut to at most `limit` characters, marked with "..." when cut."""
    if text is None or len(text) <= limit:
        return text
    return text[: limit - 3] + "..."


#: What no backend stores or renders: NUL (PostgreSQL text and jsonb refuse it) and lone
#: surrogates (U+D800..U+DFFF: legal as JSON escapes, but not Unicode scalar values, so
#: no UTF-8 encoder takes them).
_UNSTORABLE = re.compile("[\x00\ud800-\udfff]")


def check_storable(name: str, value: str) -> str:
    """`value`, if every backend can store and render it (`Invalid` for NUL or a lone surrogate)."""
    if _UNSTORABLE.search(value):
        raise Invalid(f"{name} must not contain NUL or lone surrogates (U+D800..U+DFFF)")
    return value


def storable(text: str) -> str:
    """`text` with what no backend stores replaced by U+FFFD, for text the service records
    from elsewhere (a webhook receiver's error)."""
    return _UNSTORABLE.sub("\ufffd", text)


def parse_decimal(text: str) -> int | None:
    """A decimal number as HTTP headers carry it: ASCII digits only, else None
    (`str.isdigit` would take "²"). Past int64 it is MAX_INT64 + 1, unread: `int()` of
    thousands of digits is slow, and past 4300 refused."""
    if not (text.isascii() and text.isdigit()):
        return None
    return int(text) if len(text) <= 19 else MAX_INT64 + 1


def check_size(name: str, size: int, limit: int, unit: str = "characters") -> None:
    """`TooLarge` when `size` is over `limit`."""
    if size > limit:
        raise TooLarge(f"{name} is longer than {limit} {unit}")


def check_text(name: str, value: object, limit: int) -> str | None:
    """None, or a string of at most `limit` characters."""
    if value is None:
        return None
    if not isinstance(value, str):
        raise Invalid(f"{name} must be a string")
    check_size(name, len(value), limit)
    return check_storable(name, value)


def check_batch(count: int) -> None:
    """A batch submit of `count` jobs: `TooLarge` over `MAX_BATCH_JOBS`."""
    if count > MAX_BATCH_JOBS:
        raise TooLarge(f"a batch holds at most {MAX_BATCH_JOBS} jobs, this one {count}: split it")


def check_chunk(data: object, limit: int) -> bytes:
    """One append's bytes: non-empty, at most `limit` bytes."""
    if not isinstance(data, bytes | bytearray | memoryview):
        raise Invalid("output must be bytes")
    if not data:
        raise Invalid("output chunk is empty")
    check_chunk_size(len(data), limit)
    return bytes(data)


def check_append_size(size: int, limit: int = MAX_APPEND_BYTES) -> None:
    if size > limit:
        raise TooLarge(f"an append may be at most {limit} bytes; send the rest in another append")


def check_chunk_size(size: int, limit: int) -> None:
    if size > limit:
        raise TooLarge(f"an output chunk may be at most {limit} bytes; split it")
