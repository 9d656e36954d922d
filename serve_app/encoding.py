"""Content codings on the wire (RFC 9110 §8.4, §12.5.3): choosing one from `Accept-Encoding`,
and encoding a body as a stream with bounded memory.

The output endpoints (`serve_app.download`, `serve_app.output`) offer `zstd` and `gzip`; SSE
never goes through here. A compressor holds only its window: a 10 GB body streams through
page by page. A large page is compressed in a worker thread (zlib and zstandard release the
GIL), so the replica's event loop keeps serving other requests meanwhile.
"""

from __future__ import annotations

import asyncio
import re
import zlib
from collections.abc import AsyncIterator
from enum import StrEnum
from typing import Protocol

import zstandard


class Coding(StrEnum):
    IDENTITY = "identity"
    ZSTD = "zstd"
    GZIP = "gzip"


#: What the server offers, its preference first when a client's weights tie.
OFFERED = (Coding.ZSTD, Coding.GZIP)
#: Both at level 1, throughput first: on log text zstd -1 ran 333 MB/s to -3's 183 and made
#: a smaller body (18.9% to 20.6%); gzip -1 is nginx's default (bench/ranges.py).
GZIP_LEVEL = 1
ZSTD_LEVEL = 1
#: Below this a body goes out as it is, unless the client refuses identity: compressing
#: it would save a few bytes at best.
MIN_ENCODED_BYTES = 1024
#: A stream is compressed a step of about this many bytes at a time, in a worker thread (one
#: hand-off per step, off the event loop).
STEP_BYTES = 1024 * 1024
#: A smaller piece is compressed at once, in the loop: quicker than a hand-off.
INLINE_BYTES = 64 * 1024

#: `codings;q=weight` (§12.5.3, §12.4.2): a token, then parameters of which only q counts.
_TOKEN = re.compile(r"[!#$%&'*+.^_`|~0-9A-Za-z-]+")
_QVALUE = re.compile(r"0(\.[0-9]{0,3})?|1(\.0{0,3})?")
#: x-gzip is gzip (§8.4.1.3).
_ALIASES = {"x-gzip": Coding.GZIP.value}


#: The weight of identity when nothing names it: acceptable, below any weight a client
#: can write (the least is 0.001), so a listed coding wins.
_UNLISTED = 0.0001


class NotAcceptable(Exception):
    """The client refused every coding the server has, identity included (406)."""


def parse_accept_encoding(value: str) -> dict[str, float]:
    """Each coding named in an `Accept-Encoding` value and its weight (1 by default),
    lower-cased; a malformed element is skipped, and a coding named twice keeps its first
    weight."""
    weights: dict[str, float] = {}
    for element in value.split(","):
        coding, *params = (part.strip(" \t") for part in element.split(";"))
        if not _TOKEN.fullmatch(coding):
            continue
        weight = _weight(params)
        if weight is not None:
            weights.setdefault(_ALIASES.get(coding.lower(), coding.lower()), weight)
    return weights


def _weight(params: list[str]) -> float | None:
    for param in params:
        name, _, raw = param.partition("=")
        if name.strip(" \t").lower() == "q":
            raw = raw.strip(" \t")
            return float(raw) if _QVALUE.fullmatch(raw) else None
    return 1.0


def identity_acceptable(accept_encoding: str | None) -> bool:
    """Whether the body may go without a coding (a Range's 206 must): unless `identity;q=0`,
    or `*;q=0` with no `identity` entry (RFC 9110 §12.5.3)."""
    if accept_encoding is None:
        return True
    weights = parse_accept_encoding(accept_encoding)
    return weights.get(Coding.IDENTITY.value, weights.get("*", _UNLISTED)) > 0


def negotiate(accept_encoding: str | None, *, size_hint: int | None = None) -> Coding:
    """The coding to answer with (RFC 9110 §12.5.3).

    No header: identity (any coding would do; identity is safest). Otherwise the offered
    coding (`OFFERED`) of highest non-zero weight, listed or matched by `*`; on a tie the
    server's order, and an explicit coding over identity. Identity is acceptable unless
    `identity;q=0`, or `*;q=0` without an `identity` entry, refuses it. A body known to be
    under `MIN_ENCODED_BYTES` (`size_hint`) goes as identity whenever identity is acceptable.
    Raises `NotAcceptable` when nothing is (the server MAY answer 406, §15.5.7; we do).
    """
    if accept_encoding is None:
        return Coding.IDENTITY
    weights = parse_accept_encoding(accept_encoding)
    star = weights.get("*")
    identity = weights.get(Coding.IDENTITY.value, _UNLISTED if star is None else star)
    if identity > 0 and size_hint is not None and size_hint < MIN_ENCODED_BYTES:
        return Coding.IDENTITY
    best, best_weight = Coding.IDENTITY, identity
    for coding in OFFERED:
        weight = weights.get(coding.value, 0.0 if star is None else star)
        if weight > best_weight or (
            weight > 0 and weight == best_weight and best is Coding.IDENTITY
        ):
            best, best_weight = coding, weight
    if best_weight <= 0:
        raise NotAcceptable(accept_encoding)
    return best


class _Compressor(Protocol):
    def compress(self, data: bytes, /) -> bytes: ...
    def flush(self) -> bytes: ...


def compressor(coding: Coding) -> _Compressor:
    """A fresh streaming compressor for `coding` (not identity). Deterministic: the same
    input gives the same bytes, so an encoded representation can have a strong ETag."""
    if coding is Coding.GZIP:
        return zlib.compressobj(GZIP_LEVEL, zlib.DEFLATED, 16 + zlib.MAX_WBITS)  # gzip wrapper
    if coding is Coding.ZSTD:
        return zstandard.ZstdCompressor(level=ZSTD_LEVEL).compressobj()
    raise ValueError(f"{coding} is not a compression")


async def encode_stream(pieces: AsyncIterator[bytes], coding: Coding) -> AsyncIterator[bytes]:
    """`pieces` encoded with `coding` as they come (identity: as they are). Small pieces are
    gathered to STEP_BYTES and compressed in a worker thread a step at a time. Memory: the
    compressor's window and one step."""
    if coding is Coding.IDENTITY:
        async for piece in pieces:
            yield piece
        return
    encoder, step = compressor(coding), bytearray()
    async for piece in pieces:
        step += piece
        if len(step) >= STEP_BYTES:
            out = await _compress(encoder, bytes(step))
            step.clear()
            if out:
                yield out
    yield await _compress(encoder, bytes(step)) + encoder.flush()


async def encode_bytes(data: bytes, coding: Coding) -> bytes:
    """`data` encoded with `coding` in one go (a body already bounded in memory)."""
    if coding is Coding.IDENTITY:
        return data
    encoder = compressor(coding)
    return await _compress(encoder, data) + encoder.flush()


async def _compress(encoder: _Compressor, piece: bytes) -> bytes:
    if len(piece) > INLINE_BYTES:
        return await asyncio.to_thread(encoder.compress, piece)
    return encoder.compress(piece)
