"""Output versions and json outputs over HTTP (the app over in-process shards, no Ray)."""

from __future__ import annotations

import hashlib
import json
from collections.abc import AsyncIterator

import httpx
import pytest

from actors.shard import Shard, ShardConfig
from actors.shard_client import ShardClient
from storage.memory import MemoryStore
from tests.unit.test_api import JOBS, error_of, http, make_app, new_tenant, sse_frames, submit


@pytest.fixture
async def api(store: MemoryStore) -> AsyncIterator[httpx.AsyncClient]:
    shard = Shard(store, ShardConfig(slot=0, num_shards=1))
    await shard.start()
    async with http(make_app(store, ShardClient.in_process([shard], store=store))) as client:
        yield client
    await shard.stop()


@pytest.fixture
async def acme(api: httpx.AsyncClient) -> dict[str, str]:
    return await new_tenant(api, "acme")


def sha(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


async def rerun(api, acme, job_id: str = "j1", status: int = 201) -> dict:
    response = await api.post(f"{JOBS}/{job_id}/versions", headers=acme)
    assert response.status_code == status, response.text
    return response.json()


async def test_a_new_version_is_201_with_its_record_and_location(api, acme):
    await submit(api, acme, jobId="j1")
    await api.post(f"{JOBS}/j1/output", content=b"one", headers=acme)
    response = await api.post(f"{JOBS}/j1/versions", headers=acme)
    assert response.status_code == 201, response.text
    body = response.json()
    assert body | {"createdAt": None} == {
        "jobId": "j1",
        "version": 2,
        "size": 0,
        "seq": 0,
        "sha256": None,
        "createdAt": None,
        "completedAt": None,
        "status": "Running",
    }
    assert response.headers["location"] == "/api/v1/jobs/j1/output?version=2&namespace=acme"
    again = await rerun(api, acme, status=200)  # a retry: the new version is still empty
    assert again == body


async def test_the_job_record_lists_each_version_with_the_sha256_of_its_bytes(api, acme):
    await submit(api, acme, jobId="j1")
    await api.post(f"{JOBS}/j1/output", content=b"first", headers=acme)
    await api.post(f"{JOBS}/j1/complete", json={"status": "Succeeded"}, headers=acme)
    await rerun(api, acme)
    await api.post(f"{JOBS}/j1/output", content=b"second run", headers=acme)
    running = (await api.get(f"{JOBS}/j1", headers=acme)).json()
    assert running["status"] == "Running" and running["outputVersion"] == 2
    [first, second] = running["versions"]
    assert (first["version"], first["size"], first["sha256"]) == (1, 5, sha(b"first"))
    assert first["completedAt"] is not None
    assert (second["version"], second["size"], second["sha256"]) == (2, 10, None)
    await api.post(f"{JOBS}/j1/complete", json={"status": "Succeeded"}, headers=acme)
    done = (await api.get(f"{JOBS}/j1", headers=acme)).json()
    assert done["versions"][1]["sha256"] == sha(b"second run")
    listed = (await api.get(JOBS, headers=acme)).json()["items"][0]
    assert listed["versions"] == done["versions"]


async def test_reads_take_a_version_and_default_to_the_latest(api, acme):
    await submit(api, acme, jobId="j1")
    await api.post(f"{JOBS}/j1/output", content=b"old", headers=acme)
    await rerun(api, acme)
    await api.post(f"{JOBS}/j1/output", content=b"new!", headers=acme)
    for query, data in (("", b"new!"), ("?version=2", b"new!"), ("?version=1", b"old")):
        number = 1 if query.endswith("1") else 2
        raw = await api.get(f"{JOBS}/j1/output/raw{query}", headers=acme)
        assert raw.content == data and raw.headers["x-output-version"] == str(number)
        document = (await api.get(f"{JOBS}/j1/output{query}", headers=acme)).json()
        assert document["output"] == data.decode() and document["version"] == number
    old = await api.get(f"{JOBS}/j1/output?version=1", headers=acme)
    assert old.json()["sha256"] == sha(b"old") and old.json()["completedAt"] is not None
    ranged = await api.get(f"{JOBS}/j1/output/raw?version=1", headers=acme | {"Range": "bytes=1-"})
    assert ranged.status_code == 206 and ranged.content == b"ld"
    assert ranged.headers["etag"].startswith('"v1.1.')
    stream = await api.get(f"{JOBS}/j1/stream?version=1", headers=acme)
    frames = sse_frames(stream.text)
    outputs = [json.loads(f["data"])["data"] for f in frames if f.get("event") == "output"]
    assert outputs == ["old"] and frames[-1]["event"] == "end"


async def test_appends_to_a_completed_version_are_409_and_to_a_missing_one_404(api, acme):
    await submit(api, acme, jobId="j1")
    await api.post(f"{JOBS}/j1/output", content=b"x", headers=acme)
    await rerun(api, acme)
    late = await api.post(f"{JOBS}/j1/output?version=1", content=b"y", headers=acme)
    assert error_of(late, 409)["code"] == "conflict"
    early = await api.post(f"{JOBS}/j1/output?version=3", content=b"y", headers=acme)
    assert error_of(early, 404)["code"] == "not_found"
    ok = await api.post(f"{JOBS}/j1/output?version=2", content=b"y", headers=acme)
    assert ok.json()["version"] == 2
    await api.post(f"{JOBS}/j1/complete", json={"status": "Succeeded"}, headers=acme)
    after = await api.post(f"{JOBS}/j1/output?version=2", content=b"z", headers=acme)
    assert error_of(after, 409)["code"] == "conflict"


@pytest.mark.parametrize("version", ["0", "-1", "abc", "1.5", "9223372036854775808", "1e3"])
@pytest.mark.parametrize(
    ("method", "path"),
    [
        ("GET", "/output"),
        ("GET", "/output/raw"),
        ("GET", "/stream"),
        ("POST", "/output"),
    ],
)
async def test_a_version_that_is_not_a_positive_integer_is_422(api, acme, method, path, version):
    await submit(api, acme, jobId="j1")
    response = await api.request(
        method, f"{JOBS}/j1{path}?version={version}", content=b"x", headers=acme
    )
    assert error_of(response, 422)["code"] == "invalid"


@pytest.mark.parametrize("path", ["/output", "/output/raw", "/stream"])
async def test_a_version_the_job_does_not_have_is_404(api, acme, path):
    await submit(api, acme, jobId="j1")
    for version in ("2", "9223372036854775807"):
        response = await api.get(f"{JOBS}/j1{path}?version={version}", headers=acme)
        assert "no output version" in error_of(response, 404)["message"]


async def test_versions_of_an_unknown_job_are_404(api, acme):
    response = await api.post(f"{JOBS}/nope/versions", headers=acme)
    assert error_of(response, 404)["code"] == "not_found"


async def test_a_json_job_completes_once_its_output_is_one_document(api, acme):
    await submit(api, acme, jobId="j1", outputFormat="json")
    for part in (b'{"rows": [1, 2', b'], "name": "\xc3\xa9t\xc3\xa9"'):
        await api.post(f"{JOBS}/j1/output", content=part, headers=acme)
    partial = (await api.get(f"{JOBS}/j1/output", headers=acme)).json()
    assert partial["output"] is None and partial["text"] == '{"rows": [1, 2], "name": "été"'
    refused = await api.post(f"{JOBS}/j1/complete", json={"status": "Succeeded"}, headers=acme)
    assert "premature EOF" in error_of(refused, 422)["message"]
    assert (await api.get(f"{JOBS}/j1/status", headers=acme)).json()["status"] == "Running"
    await api.post(f"{JOBS}/j1/output", content=b"}", headers=acme)
    done = await api.post(f"{JOBS}/j1/complete", json={"status": "Succeeded"}, headers=acme)
    assert done.status_code == 200, done.text
    document = await api.get(f"{JOBS}/j1/output", headers=acme | {"Accept-Encoding": "gzip"})
    body = document.json()
    assert body["output"] == {"rows": [1, 2], "name": "été"} and "text" not in body
    assert body["format"] == "json" and body["sha256"] == sha(
        b'{"rows": [1, 2], "name": "\xc3\xa9t\xc3\xa9"}'
    )


async def test_a_json_document_that_is_a_string_or_a_number_is_returned_as_itself(api, acme):
    for job_id, output, value in (("s", b' "text" ', "text"), ("n", b"12.5", 12.5)):
        await submit(api, acme, jobId=job_id, outputFormat="json")
        await api.post(f"{JOBS}/{job_id}/output", content=output, headers=acme)
        await api.post(f"{JOBS}/{job_id}/complete", json={"status": "Succeeded"}, headers=acme)
        assert (await api.get(f"{JOBS}/{job_id}/output", headers=acme)).json()["output"] == value
