"""The raw download and the JSON output through the app, without Ray: Range, If-Range, ETag,
HEAD, content codings, and how much of the store a range reads."""

from __future__ import annotations

import json
import zlib
from collections.abc import AsyncIterator
from typing import Any

import httpx
import pytest
import zstandard

from actors.shard import Shard, ShardConfig
from actors.shard_client import ShardClient
from storage.records import Chunk
from tests.unit.fakes import GatedStore
from tests.unit.test_api import JOBS, error_of, http, make_app, new_tenant

RAW = f"{JOBS}/j1/output/raw"
#: No coding unless a test asks for one (httpx offers gzip and zstd by default).
PLAIN = {"Accept-Encoding": "identity"}
PARTS = [b"0123456789", b"abcdefghij" * 3, b"KLMNO", b"pqrstuvwxyz" * 200]
WHOLE = b"".join(PARTS)


class CountingStore(GatedStore):
    """Keeps the seq of every chunk the store hands out, to see what a range read costs."""

    def __init__(self) -> None:
        super().__init__()
        self.seqs_read: list[int] = []

    async def read_output(self, *args: Any, **kwargs: Any) -> list[Chunk]:
        chunks = await super().read_output(*args, **kwargs)
        self.seqs_read += [chunk.seq for chunk in chunks]
        return chunks

    async def read_output_at(self, *args: Any, **kwargs: Any) -> list[Chunk]:
        chunks = await super().read_output_at(*args, **kwargs)
        self.seqs_read += [chunk.seq for chunk in chunks]
        return chunks


@pytest.fixture
async def counting() -> CountingStore:
    store = CountingStore()
    await store.open()
    return store


@pytest.fixture
async def api(counting: CountingStore) -> AsyncIterator[httpx.AsyncClient]:
    shard = Shard(counting, ShardConfig(slot=0, num_shards=1))
    await shard.start()
    async with http(make_app(counting, ShardClient.in_process([shard], store=counting))) as client:
        yield client
    await shard.stop()


@pytest.fixture
async def acme(api: httpx.AsyncClient) -> dict[str, str]:
    headers = await new_tenant(api, "acme")
    assert (await api.post(JOBS, json={"jobId": "j1"}, headers=headers)).status_code == 201
    for part in PARTS:
        assert (await api.post(f"{JOBS}/j1/output", content=part, headers=headers)).is_success
    return headers


async def raw(api: httpx.AsyncClient, headers: dict[str, str], **extra: str) -> httpx.Response:
    """The answer with its body as sent (not decoded)."""
    async with api.stream("GET", RAW, headers=headers | PLAIN | extra) as response:
        body = b"".join([part async for part in response.aiter_raw()])
    response._content = body  # what was on the wire
    return response


@pytest.mark.parametrize(
    ("header", "start", "end"),
    [
        ("bytes=0-9", 0, 9),
        ("bytes=5-14", 5, 14),  # across a chunk boundary
        ("bytes=40-", 40, len(WHOLE) - 1),
        ("bytes=-25", len(WHOLE) - 25, len(WHOLE) - 1),
        ("bytes=44-44", 44, 44),
        ("bytes=10-10000", 10, len(WHOLE) - 1),
        ("bytes=-100000", 0, len(WHOLE) - 1),
    ],
)
async def test_a_range_answers_206_with_exactly_its_bytes(api, acme, header, start, end):
    response = await raw(api, acme, Range=header)
    assert response.status_code == 206
    assert response.content == WHOLE[start : end + 1]
    assert response.headers["content-range"] == f"bytes {start}-{end}/{len(WHOLE)}"
    assert response.headers["content-length"] == str(end - start + 1)
    assert response.headers["accept-ranges"] == "bytes"
    assert "content-encoding" not in response.headers


async def test_the_whole_output_has_its_length_etag_and_accept_ranges(api, acme):
    response = await raw(api, acme)
    assert response.status_code == 200 and response.content == WHOLE
    assert response.headers["content-length"] == str(len(WHOLE))
    assert response.headers["accept-ranges"] == "bytes"
    assert response.headers["vary"] == "Accept-Encoding"
    assert response.headers["etag"].startswith('"v1.4.')


@pytest.mark.parametrize("header", [f"bytes={len(WHOLE)}-", "bytes=99999-", "bytes=-0"])
async def test_an_unsatisfiable_range_is_416_with_the_size(api, acme, header):
    response = await raw(api, acme, Range=header)
    assert error_of(response, 416)["code"] == "range_not_satisfiable"
    assert response.headers["content-range"] == f"bytes */{len(WHOLE)}"


@pytest.mark.parametrize(
    "header", ["bytes=5-3", "items=0-1", "bytes=0-1,4-5", "bytes=x", "bytes=", "0-1"]
)
async def test_a_range_to_ignore_answers_the_whole_output(api, acme, header):
    response = await raw(api, acme, Range=header)
    assert response.status_code == 200 and response.content == WHOLE


async def test_if_range_serves_the_range_only_for_the_current_etag(api, acme):
    etag = (await raw(api, acme)).headers["etag"]
    hit = await raw(api, acme, Range="bytes=0-3", **{"If-Range": etag})
    assert hit.status_code == 206 and hit.content == WHOLE[:4]
    for stale in ['"v1.3.0"', f"W/{etag}", "Sat, 29 Oct 1994 19:43:31 GMT"]:
        miss = await raw(api, acme, Range="bytes=0-3", **{"If-Range": stale})
        assert miss.status_code == 200 and miss.content == WHOLE


async def test_the_etag_changes_with_an_append(api, acme):
    before = (await raw(api, acme)).headers["etag"]
    await api.post(f"{JOBS}/j1/output", content=b"more", headers=acme)
    after = await raw(api, acme, Range="bytes=0-3", **{"If-Range": before})
    assert after.status_code == 200 and after.headers["etag"] != before


async def test_a_range_reads_no_chunk_before_its_first_byte(api, acme, counting):
    for n in range(200):  # seqs 5..204, ten bytes each
        await api.post(f"{JOBS}/j1/output", content=b"%09d\n" % n, headers=acme)
    counting.seqs_read.clear()
    response = await raw(api, acme, Range="bytes=-5")
    assert response.status_code == 206 and response.content == b"0199\n"
    assert counting.seqs_read == [204]
    counting.seqs_read.clear()
    middle = len(WHOLE) + 100 * 10
    response = await raw(api, acme, Range=f"bytes={middle}-{middle + 14}")
    assert response.content == b"000000100\n000000101\n"[:15]
    assert counting.seqs_read == [105, 106]  # the chunks that start within the range
    counting.seqs_read.clear()
    response = await raw(api, acme, Range="bytes=0-0")
    assert response.content == b"0" and counting.seqs_read == [1]


async def test_after_answers_the_rest_and_ignores_range(api, acme):
    response = await api.get(f"{RAW}?after=2", headers=acme | PLAIN | {"Range": "bytes=0-3"})
    assert response.status_code == 200 and response.content == b"".join(PARTS[2:])
    assert response.headers["accept-ranges"] == "none" and "etag" not in response.headers


async def test_head_answers_the_headers_without_the_body(api, acme, counting):
    counting.seqs_read.clear()
    whole = await api.head(RAW, headers=acme | PLAIN)
    assert whole.status_code == 200 and whole.content == b""
    assert whole.headers["content-length"] == str(len(WHOLE)) and "etag" in whole.headers
    ranged = await api.head(RAW, headers=acme | PLAIN | {"Range": "bytes=1-2"})
    assert ranged.status_code == 206 and ranged.headers["content-range"].startswith("bytes 1-2/")
    assert counting.seqs_read == []


def decode(coding: str, data: bytes) -> bytes:
    if coding == "gzip":
        return zlib.decompress(data, 16 + zlib.MAX_WBITS)
    return zstandard.ZstdDecompressor().decompressobj().decompress(data)


@pytest.mark.parametrize("coding", ["gzip", "zstd"])
async def test_an_encoded_download_decodes_to_the_bytes(api, acme, coding):
    response = await raw(api, acme, **{"Accept-Encoding": coding})
    assert response.status_code == 200 and response.headers["content-encoding"] == coding
    assert decode(coding, response.content) == WHOLE
    assert "content-length" not in response.headers  # chunked: not known before the end
    plain = (await raw(api, acme)).headers["etag"]
    assert response.headers["etag"] == f'{plain[:-1]}-{coding}"'


async def test_a_range_is_served_in_identity_whatever_the_accepted_codings(api, acme):
    response = await raw(api, acme, Range="bytes=0-3", **{"Accept-Encoding": "zstd, gzip"})
    assert response.status_code == 206 and response.content == WHOLE[:4]
    assert "content-encoding" not in response.headers


async def test_refusing_identity_gets_the_whole_encoded_body_instead_of_a_range(api, acme):
    headers = {"Accept-Encoding": "identity;q=0, gzip", "Range": "bytes=0-3"}
    response = await raw(api, acme, **headers)
    assert response.status_code == 200 and decode("gzip", response.content) == WHOLE


@pytest.mark.parametrize("header", ["identity;q=0", "*;q=0", "br, identity;q=0"])
async def test_refusing_every_coding_is_406(api, acme, header):
    response = await raw(api, acme, **{"Accept-Encoding": header})
    assert error_of(response, 406)["code"] == "not_acceptable"
    output = await api.get(f"{JOBS}/j1/output", headers=acme | {"Accept-Encoding": header})
    assert error_of(output, 406)["code"] == "not_acceptable"


@pytest.mark.parametrize("coding", ["gzip", "zstd"])
async def test_the_json_output_is_encoded_when_asked(api, acme, coding):
    async with api.stream(
        "GET", f"{JOBS}/j1/output", headers=acme | {"Accept-Encoding": coding}
    ) as response:
        body = b"".join([part async for part in response.aiter_raw()])
    assert response.headers["content-encoding"] == coding
    assert response.headers["vary"] == "Accept-Encoding"
    assert json.loads(decode(coding, body))["output"] == WHOLE.decode()


async def test_a_small_body_is_not_encoded(api):
    tenant = await new_tenant(api, "tiny")
    await api.post(JOBS, json={"jobId": "t"}, headers=tenant)
    await api.post(f"{JOBS}/t/output", content=b"hi", headers=tenant)
    response = await api.get(f"{JOBS}/t/output/raw", headers=tenant | {"Accept-Encoding": "gzip"})
    assert response.content == b"hi" and "content-encoding" not in response.headers
    assert response.headers["vary"] == "Accept-Encoding"


async def test_an_empty_output_has_no_range_to_give(api):
    tenant = await new_tenant(api, "empty")
    await api.post(JOBS, json={"jobId": "e"}, headers=tenant)
    path = f"{JOBS}/e/output/raw"
    response = await api.get(path, headers=tenant | PLAIN | {"Range": "bytes=0-"})
    assert error_of(response, 416) and response.headers["content-range"] == "bytes */0"
    whole = await api.get(path, headers=tenant | PLAIN)
    assert whole.status_code == 200 and whole.content == b""


async def test_a_range_on_an_unknown_job_is_404(api, acme):
    response = await api.get(f"{JOBS}/nope/output/raw", headers=acme | {"Range": "bytes=0-1"})
    assert error_of(response, 404)["code"] == "not_found"


async def test_a_client_without_the_store_reads_a_span_through_the_shard(counting, acme):
    shard = Shard(counting, ShardConfig(slot=0, num_shards=1))
    await shard.start()
    try:
        client = ShardClient.in_process([shard])
        job = await client.get("acme", "j1")
        chunks = [chunk async for chunk in client.output(job.current_version, span=(12, 45))]
        assert chunks[0].seq == 2 and chunks[0].offset <= 12 < chunks[0].end
        assert b"".join(c.data for c in chunks)[12 - chunks[0].offset :][:33] == WHOLE[12:45]
    finally:
        await shard.stop()


async def test_if_none_match_of_the_current_etag_is_304_before_any_range(api, acme):
    first = await raw(api, acme)
    etag = first.headers["etag"]
    for condition in (etag, f'"zzz", {etag}', f"W/{etag}", "*", etag[:-1] + '-gzip"'):
        again = await raw(api, acme, **{"If-None-Match": condition, "Range": "bytes=0-3"})
        assert again.status_code == 304 and again.content == b"", condition
        assert again.headers["etag"] in (etag, condition)
    await api.post(f"{JOBS}/j1/output", content=b"more", headers=acme)
    changed = await raw(api, acme, **{"If-None-Match": etag})
    assert changed.status_code == 200 and changed.content == WHOLE + b"more"
    assert changed.headers["etag"] != etag
