"""Range, If-Range, ETag and content codings of the output downloads, end to end: real Ray
Serve behind its HAProxy ingress, real shard actors, real SQLite, real HTTP."""

from __future__ import annotations

import json
import zlib

import httpx
import pytest
import zstandard

pytestmark = pytest.mark.e2e

JOBS = "/api/v1/jobs"
PLAIN = {"Accept-Encoding": "identity"}
#: Chunks of several sizes: ranges fall inside one and across several.
PARTS = [b"0123456789", bytes(range(256)) * 40, b"x", b"line of text\n" * 500, b"the end"]
WHOLE = b"".join(PARTS)
SIZE = len(WHOLE)


def submit(t, job_id: str, parts: list[bytes], *, complete: bool = True) -> None:
    assert t.http.post(JOBS, json={"jobId": job_id, "outputFormat": "binary"}).status_code == 201
    append(t, job_id, parts)
    if complete:
        done = t.http.post(f"{JOBS}/{job_id}/complete", json={"status": "Succeeded"})
        assert done.status_code == 200


def append(t, job_id: str, parts: list[bytes]) -> None:
    for part in parts:
        assert t.http.post(f"{JOBS}/{job_id}/output", content=part).status_code == 200


def get(t, path: str, method: str = "GET", **headers: str) -> httpx.Response:
    """The answer with its body as it came over the wire (never decoded by httpx)."""
    with t.http.stream(method, path, headers=PLAIN | headers) as response:
        response._content = b"".join(response.iter_raw())
    return response


def raw(t, job_id: str, **headers: str) -> httpx.Response:
    return get(t, f"{JOBS}/{job_id}/output/raw", **headers)


def decode(coding: str, data: bytes) -> bytes:
    if coding == "gzip":
        return zlib.decompress(data, 16 + zlib.MAX_WBITS)
    return zstandard.ZstdDecompressor().decompressobj().decompress(data)


def error_code(response: httpx.Response, status: int) -> str:
    assert response.status_code == status, response.text
    body = response.json()
    assert set(body) == {"error"} and set(body["error"]) == {"code", "message"}
    return str(body["error"]["code"])


@pytest.mark.parametrize("complete", [True, False], ids=["completed", "running"])
def test_each_range_form_answers_206_with_the_exact_bytes(tenant, complete):
    submit(tenant, "j", PARTS, complete=complete)
    forms = {
        "bytes=0-0": (0, 0),
        "bytes=5-20": (5, 20),  # across the first two chunks
        "bytes=10-10249": (10, 10249),  # exactly the second chunk
        f"bytes={SIZE - 100}-": (SIZE - 100, SIZE - 1),
        "bytes=-7": (SIZE - 7, SIZE - 1),
        f"bytes=100-{SIZE * 10}": (100, SIZE - 1),
        f"bytes=-{SIZE * 10}": (0, SIZE - 1),
    }
    for header, (start, end) in forms.items():
        response = raw(tenant, "j", Range=header)
        assert response.status_code == 206, header
        assert response.content == WHOLE[start : end + 1], header
        assert response.headers["content-range"] == f"bytes {start}-{end}/{SIZE}"
        assert int(response.headers["content-length"]) == end - start + 1
        assert response.headers["accept-ranges"] == "bytes"


def test_a_running_job_s_range_covers_the_bytes_committed_so_far(tenant):
    submit(tenant, "j", PARTS[:2], complete=False)
    committed = len(PARTS[0] + PARTS[1])
    first = raw(tenant, "j", Range="bytes=-4")
    assert first.headers["content-range"] == f"bytes {committed - 4}-{committed - 1}/{committed}"
    past = raw(tenant, "j", Range=f"bytes={committed}-")
    assert error_code(past, 416) == "range_not_satisfiable"
    assert past.headers["content-range"] == f"bytes */{committed}"
    append(tenant, "j", PARTS[2:])
    later = raw(tenant, "j", Range=f"bytes={committed}-")
    assert later.status_code == 206 and later.content == WHOLE[committed:]
    assert first.headers["etag"] != later.headers["etag"]  # every append changes it


@pytest.mark.parametrize("header", [f"bytes={SIZE}-", f"bytes={SIZE * 2}-{SIZE * 3}", "bytes=-0"])
def test_an_unsatisfiable_range_is_416_with_content_range(tenant, header):
    submit(tenant, "j", PARTS)
    response = raw(tenant, "j", Range=header)
    assert error_code(response, 416) == "range_not_satisfiable"
    assert response.headers["content-range"] == f"bytes */{SIZE}"


@pytest.mark.parametrize("header", ["bytes=0-1,5-9", "bytes=9-3", "bytes=a-b", "items=0-1", ""])
def test_several_or_malformed_ranges_get_the_whole_body(tenant, header):
    submit(tenant, "j", PARTS)
    response = raw(tenant, "j", Range=header)
    assert response.status_code == 200 and response.content == WHOLE
    assert int(response.headers["content-length"]) == SIZE


def test_if_range_serves_the_range_only_while_the_etag_matches(tenant):
    submit(tenant, "j", PARTS[:3], complete=False)
    etag = raw(tenant, "j").headers["etag"]
    assert etag.startswith('"') and not etag.startswith("W/")
    hit = raw(tenant, "j", Range="bytes=0-3", **{"If-Range": etag})
    assert hit.status_code == 206 and hit.content == WHOLE[:4]
    append(tenant, "j", PARTS[3:])
    miss = raw(tenant, "j", Range="bytes=0-3", **{"If-Range": etag})
    assert miss.status_code == 200 and miss.content == WHOLE and miss.headers["etag"] != etag
    date = raw(tenant, "j", Range="bytes=0-3", **{"If-Range": "Sun, 06 Nov 1994 08:49:37 GMT"})
    assert date.status_code == 200 and date.content == WHOLE


def test_a_deleted_job_is_404_and_its_successor_has_another_etag(tenant):
    submit(tenant, "j", PARTS)
    etag = raw(tenant, "j").headers["etag"]
    assert tenant.http.delete(f"{JOBS}/j").status_code == 204
    assert error_code(raw(tenant, "j", Range="bytes=0-1"), 404) == "not_found"
    submit(tenant, "j", PARTS)  # the same id, the same number of appends
    again = raw(tenant, "j", Range="bytes=0-1", **{"If-Range": etag})
    assert again.status_code == 200 and again.headers["etag"] != etag


def test_head_has_the_headers_and_no_body(tenant):
    submit(tenant, "j", PARTS)
    whole = raw(tenant, "j")
    head = get(tenant, f"{JOBS}/j/output/raw", method="HEAD")
    assert head.status_code == 200 and head.content == b""
    for name in ("content-length", "etag", "accept-ranges", "content-type", "vary"):
        assert head.headers[name] == whole.headers[name], name
    ranged = get(tenant, f"{JOBS}/j/output/raw", method="HEAD", Range="bytes=1-2")
    assert ranged.status_code == 206 and ranged.headers["content-range"] == f"bytes 1-2/{SIZE}"


@pytest.mark.parametrize("coding", ["gzip", "zstd"])
def test_an_encoded_download_decodes_to_the_exact_bytes(tenant, coding):
    submit(tenant, "j", PARTS)
    response = raw(tenant, "j", **{"Accept-Encoding": coding})
    assert response.status_code == 200
    assert response.headers["content-encoding"] == coding  # HAProxy leaves it as it is
    assert response.headers["vary"] == "Accept-Encoding"
    assert decode(coding, response.content) == WHOLE
    assert len(response.content) < SIZE
    assert response.headers["etag"] != raw(tenant, "j").headers["etag"]
    output = get(tenant, f"{JOBS}/j/output", **{"Accept-Encoding": f"{coding}, identity;q=0.5"})
    assert output.headers["content-encoding"] == coding
    assert json.loads(decode(coding, output.content))["size"] == SIZE


def test_a_range_with_accepted_codings_is_identity(tenant):
    submit(tenant, "j", PARTS)
    response = raw(tenant, "j", Range="bytes=3-9", **{"Accept-Encoding": "zstd, gzip;q=0.9"})
    assert response.status_code == 206 and response.content == WHOLE[3:10]
    assert "content-encoding" not in response.headers


def test_refusing_identity_and_every_offered_coding_is_406(tenant):
    submit(tenant, "j", PARTS)
    for header in ("identity;q=0", "*;q=0", "br;q=1, identity;q=0"):
        response = raw(tenant, "j", **{"Accept-Encoding": header})
        assert error_code(response, 406) == "not_acceptable"
        output = get(tenant, f"{JOBS}/j/output", **{"Accept-Encoding": header})
        assert error_code(output, 406) == "not_acceptable"
    gzip_only = raw(tenant, "j", Range="bytes=0-1", **{"Accept-Encoding": "identity;q=0, gzip"})
    assert gzip_only.status_code == 200 and decode("gzip", gzip_only.content) == WHOLE


def test_sse_is_never_encoded(tenant):
    submit(tenant, "j", PARTS)
    headers = {"Accept-Encoding": "gzip, zstd"}
    with tenant.http.stream("GET", f"{JOBS}/j/stream", headers=headers) as response:
        assert response.headers["content-type"].startswith("text/event-stream")
        assert "content-encoding" not in response.headers
        body = b"".join(response.iter_raw())
    assert b"event: end" in body
