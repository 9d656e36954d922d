"""The json output check: one JSON document, however its bytes are cut, without building it."""

from __future__ import annotations

from collections.abc import AsyncIterator

import pytest

from actors.json_document import THREAD_BYTES, document_error


async def pages(*parts: bytes) -> AsyncIterator[bytes]:
    for part in parts:
        yield part


DOCUMENT = b'{"a": [1, 2.5e3, true, null], "b": {"c": "\xc3\xa9\\u00e9\\"x"}}'


@pytest.mark.parametrize("cut", range(1, len(DOCUMENT)))
async def test_a_document_cut_anywhere_is_one_document(cut):
    assert await document_error(pages(DOCUMENT[:cut], DOCUMENT[cut:])) is None


@pytest.mark.parametrize(
    ("text", "reason"),
    [
        (b"", "premature EOF"),
        (b"   ", "premature EOF"),
        (b'{"a": 1', "premature EOF"),
        (b"[1] [2]", "trailing garbage"),
        (b"[1] x", "trailing garbage"),
        (b"[1,]", "unallowed token"),
        (b"[NaN]", "invalid char"),
        (b"// comment\n1", "comment"),
        (b"\xef\xbb\xbf[1]", "invalid char"),
        (b"1" * 5000, "4300 digits"),
        (b'"caf\\ude00"', "lone surrogate"),
    ],
)
async def test_anything_but_one_document_says_why_in_one_line(text, reason):
    error = await document_error(pages(text))
    assert error is not None and reason in error and "\n" not in error


async def test_a_big_page_is_checked_off_the_event_loop_the_same():
    big = b"[" + b"1," * THREAD_BYTES + b"1]"
    assert await document_error(pages(big[:10], big[10:])) is None
    assert await document_error(pages(big[:-1])) is not None
