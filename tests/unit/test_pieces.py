"""Cutting an append into the store's chunks: sizes, UTF-8 boundaries, and the same cuts
however the bytes arrive (a retried append must match what was written)."""

from __future__ import annotations

import pytest
from hypothesis import given
from hypothesis import strategies as st

from actors.pieces import Pieces, cut_at
from storage.errors import Invalid, TooLarge


@pytest.mark.parametrize(
    ("data", "limit", "end"),
    [
        (b"abcdef", 4, 4),
        (b"abc", 4, 3),  # shorter than the limit: all of it
        ("ab€".encode(), 3, 2),  # € (3 bytes) starts at 2: never split it
        ("a😀b".encode(), 3, 1),  # 😀 (4 bytes) starts at 1
        ("a😀b".encode(), 5, 5),  # the cut falls right after it
        (b"\x80\x80\x80\x80\x80\x80", 4, 4),  # not UTF-8: cut at the limit
    ],
)
def test_a_cut_falls_at_the_limit_or_just_before_a_character(
    data: bytes, limit: int, end: int
) -> None:
    assert cut_at(data, limit) == end


@given(
    text=st.text(min_size=1, max_size=400),
    chunk_bytes=st.integers(min_value=4, max_value=64),
    parts=st.lists(st.integers(min_value=1, max_value=50), max_size=30),
)
def test_text_is_cut_into_valid_utf8_chunks_the_same_way_however_it_arrives(
    text: str, chunk_bytes: int, parts: list[int]
) -> None:
    data = text.encode()
    whole = Pieces.of(data, chunk_bytes).chunks()
    streamed = Pieces(chunk_bytes)
    position = 0
    for size in parts:
        streamed.feed(data[position : position + size])
        position += size
    streamed.feed(data[position:])
    assert streamed.chunks() == whole
    assert b"".join(whole) == data
    assert all(0 < len(chunk) <= chunk_bytes for chunk in whole)
    assert all(chunk.decode() for chunk in whole)


def test_bytes_past_the_limit_are_refused_as_they_arrive() -> None:
    pieces = Pieces(4, max_bytes=10)
    pieces.feed(b"x" * 10)
    with pytest.raises(TooLarge, match="at most 10 bytes"):
        pieces.feed(b"x")


def test_nothing_and_not_bytes_are_refused() -> None:
    with pytest.raises(Invalid, match="empty"):
        Pieces(4).chunks()
    with pytest.raises(Invalid, match="bytes"):
        Pieces.of("text", 4)
