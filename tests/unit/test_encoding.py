"""Accept-Encoding negotiation (RFC 9110 §12.5.3) and the streaming encoders."""

from __future__ import annotations

import os
import zlib
from collections.abc import AsyncIterator

import pytest
import zstandard

from serve_app.encoding import (
    MIN_ENCODED_BYTES,
    Coding,
    NotAcceptable,
    encode_bytes,
    encode_stream,
    identity_acceptable,
    negotiate,
    parse_accept_encoding,
)

ZSTD, GZIP, IDENTITY = Coding.ZSTD, Coding.GZIP, Coding.IDENTITY


@pytest.mark.parametrize(
    ("header", "coding"),
    [
        (None, IDENTITY),  # no header: no preference, identity is safest
        ("", IDENTITY),  # empty: no coding wanted
        ("gzip", GZIP),
        ("zstd", ZSTD),
        ("gzip, zstd", ZSTD),  # a tie: the server's order
        ("compress, gzip", GZIP),  # RFC 9110 §12.5.3's examples
        ("*", ZSTD),
        ("compress;q=0.5, gzip;q=1.0", GZIP),
        ("gzip;q=1.0, identity; q=0.5, *;q=0", GZIP),
        ("gzip;q=0.5", GZIP),  # any listed coding beats an unlisted identity
        ("gzip;q=0.001", GZIP),
        ("gzip;q=0.5, zstd;q=0.4", GZIP),
        ("gzip;q=0.5, identity", IDENTITY),  # a listed identity counts with its weight
        ("gzip, identity", GZIP),  # a tie with identity: the coding
        ("gzip;q=0, zstd;q=0", IDENTITY),
        ("identity", IDENTITY),
        ("br, deflate", IDENTITY),  # none offered
        ("GZIP", GZIP),  # codings are case-insensitive
        ("x-gzip", GZIP),  # §8.4.1.3
        ("gzip;Q=0.7, zstd;q=0.6", GZIP),
        ("  gzip  ;  q=0.5  ,zstd;q=0.9", ZSTD),
        ("gzip;q=2, zstd;q=0.1", ZSTD),  # an invalid weight drops its element
        ("gzip;q=abc", IDENTITY),
        ("gzip;q=0.1234", IDENTITY),  # at most three decimals
        ("gzip;q=1.001", IDENTITY),
        ("gzip;q=-1", IDENTITY),
        ("gzip;level=9", GZIP),  # other parameters are ignored
        ("gzip, gzip;q=0", GZIP),  # a repeated coding keeps its first weight
        ("*;q=0, identity", IDENTITY),
        ("*;q=0.5, gzip;q=0.7", GZIP),
        ("*;q=0.5, identity;q=0.6", IDENTITY),
        (",,, ,gzip,,", GZIP),
        ("\x00gzip", IDENTITY),
        ("zstd;q=0, *", GZIP),
    ],
)
def test_negotiation_picks_the_coding(header: str | None, coding: Coding) -> None:
    assert negotiate(header) is coding


@pytest.mark.parametrize(
    "header",
    ["identity;q=0", "*;q=0", "gzip;q=0, identity;q=0", "identity;q=0, br", "*;q=0, zstd;q=0"],
)
def test_refusing_identity_and_every_offered_coding_is_not_acceptable(header: str) -> None:
    with pytest.raises(NotAcceptable):
        negotiate(header)
    assert not identity_acceptable(header)


@pytest.mark.parametrize(
    ("header", "acceptable"),
    [
        (None, True),
        ("", True),
        ("gzip", True),
        ("identity;q=0, gzip", False),
        ("*;q=0, gzip", False),
        ("*;q=0, identity;q=0.1", True),
    ],
)
def test_identity_acceptable(header: str | None, acceptable: bool) -> None:
    assert identity_acceptable(header) is acceptable


def test_a_small_body_goes_as_identity_unless_identity_is_refused() -> None:
    assert negotiate("zstd, gzip", size_hint=MIN_ENCODED_BYTES - 1) is IDENTITY
    assert negotiate("zstd, gzip", size_hint=MIN_ENCODED_BYTES) is ZSTD
    assert negotiate("identity;q=0, gzip", size_hint=3) is GZIP


def test_a_hostile_header_is_parsed_in_linear_time() -> None:
    weights = parse_accept_encoding(",".join(f"c{n};q=0.5" for n in range(100_000)))
    assert len(weights) == 100_000
    assert negotiate("a;" * 50_000 + "zstd") is IDENTITY  # one element: coding "a"


def decode(coding: Coding, data: bytes) -> bytes:
    if coding is GZIP:
        return zlib.decompress(data, 16 + zlib.MAX_WBITS)
    return zstandard.ZstdDecompressor().decompressobj().decompress(data)


async def pieces(*parts: bytes) -> AsyncIterator[bytes]:
    for part in parts:
        yield part


@pytest.mark.parametrize("coding", [GZIP, ZSTD])
async def test_a_stream_decodes_to_its_bytes_and_is_deterministic(coding: Coding) -> None:
    parts = [b"line %d\n" % n * 50 for n in range(200)] + [os.urandom(200_000), b"", b"end"]
    encoded = b"".join([piece async for piece in encode_stream(pieces(*parts), coding)])
    assert decode(coding, encoded) == b"".join(parts)
    again = b"".join([piece async for piece in encode_stream(pieces(*parts), coding)])
    assert again == encoded  # the same bytes every time: a strong ETag holds


@pytest.mark.parametrize("coding", [GZIP, ZSTD])
async def test_an_empty_stream_is_a_valid_empty_body(coding: Coding) -> None:
    encoded = b"".join([piece async for piece in encode_stream(pieces(), coding)])
    assert decode(coding, encoded) == b""


async def test_identity_passes_the_pieces_through() -> None:
    assert [p async for p in encode_stream(pieces(b"a", b"b"), IDENTITY)] == [b"a", b"b"]
    assert await encode_bytes(b"abc", IDENTITY) == b"abc"


async def test_encode_bytes_decodes_to_its_bytes() -> None:
    data = b'{"output": "' + b"x" * 100_000 + b'"}'
    for coding in (GZIP, ZSTD):
        assert decode(coding, await encode_bytes(data, coding)) == data
