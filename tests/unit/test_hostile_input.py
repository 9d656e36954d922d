"""Hostile input through the HTTP app: every odd value gets a 4xx JSON error, is never stored,
never fails another tenant's write, and nothing a store holds breaks a read.

The app runs over a real `Shard` on the in-memory store and on SQLite (no Ray). Bodies that
carry lone surrogates are sent as raw JSON text: `json=` cannot encode them, a client can.
"""

from __future__ import annotations

import asyncio
import base64
import json
import math
from collections.abc import AsyncIterator
from pathlib import Path

import httpx
import pytest

from actors.commands import ProgressUpdate
from actors.shard import Shard, ShardConfig
from actors.shard_client import ShardClient
from storage.base import Store
from storage.errors import Invalid
from storage.memory import MemoryStore
from storage.records import Batch, JobStatus
from storage.sqlite import SqliteStore
from tests.unit.test_api import ADMIN, JOBS, error_of, http, make_app, new_tenant, sse_frames

LONE_SURROGATE = "\\ud800"  # in JSON text: legal escape syntax, not a Unicode scalar value
NUL = "a\\u0000b"


@pytest.fixture(params=["memory", "sqlite"])
async def store(request: pytest.FixtureRequest, tmp_path: Path) -> AsyncIterator[Store]:
    store: Store = (
        MemoryStore() if request.param == "memory" else SqliteStore(f"sqlite:///{tmp_path}/a.db")
    )
    await store.open()
    yield store
    await store.close()


@pytest.fixture
async def api(store: Store) -> AsyncIterator[httpx.AsyncClient]:
    shard = Shard(store, ShardConfig(slot=0, num_shards=1))
    await shard.start()
    app = make_app(store, ShardClient.in_process([shard], store=store))  # type: ignore[arg-type]
    async with http(app) as client:
        yield client
    await shard.stop()


@pytest.fixture
async def acme(api: httpx.AsyncClient) -> dict[str, str]:
    return await new_tenant(api, "acme")


def raw_json(text: str, headers: dict[str, str]) -> dict[str, object]:
    """Keyword arguments for httpx to send `text` as a JSON body, byte for byte."""
    return {"content": text.encode(), "headers": {**headers, "Content-Type": "application/json"}}


def b64(text: str) -> str:
    return base64.urlsafe_b64encode(text.encode()).decode().rstrip("=")


async def job_ids(api: httpx.AsyncClient, headers: dict[str, str]) -> list[str]:
    listed = await api.get(JOBS, headers=headers)
    assert listed.status_code == 200, listed.text
    return [job["jobId"] for job in listed.json()["items"]]


# -- 1. strings no backend can store --------------------------------------------------------


@pytest.mark.parametrize("bad", [LONE_SURROGATE, NUL])
@pytest.mark.parametrize(
    "template",
    [
        '{"jobId": "j1", "metadata": {"title": "BAD"}}',
        '{"jobId": "j1", "metadata": {"description": "BAD"}}',
        '{"jobId": "j1", "metadata": {"tags": ["BAD"]}}',
        '{"jobId": "j1", "webhookUrl": "http://127.0.0.1/BAD"}',
        '{"jobId": "BAD"}',
        '{"namespace": "BAD"}',
    ],
)
async def test_a_submit_carrying_an_unstorable_string_is_422_and_nothing_is_stored(
    api, acme, template, bad
):
    error_of(await api.post(JOBS, **raw_json(template.replace("BAD", bad), acme)), 422)
    assert await job_ids(api, acme) == []


@pytest.mark.parametrize("bad", [LONE_SURROGATE, NUL])
async def test_other_unstorable_fields_are_422(api, acme, bad):
    await api.post(JOBS, json={"jobId": "j1"}, headers=acme)
    complete = '{"status": "Failed", "error": "BAD"}'.replace("BAD", bad)
    error_of(await api.post(f"{JOBS}/j1/complete", **raw_json(complete, acme)), 422)
    assert (await api.get(f"{JOBS}/j1/status", headers=acme)).json()["status"] == "Running"
    described = '{"description": "BAD"}'.replace("BAD", bad)
    error_of(await api.patch("/api/v1/namespaces/acme", **raw_json(described, ADMIN)), 422)
    error_of(await api.post("/api/v1/namespaces/acme/keys", **raw_json(described, ADMIN)), 422)
    created = '{"name": "beta", "description": "BAD"}'.replace("BAD", bad)
    error_of(await api.post("/api/v1/namespaces", **raw_json(created, ADMIN)), 422)
    error_of(await api.get("/api/v1/namespaces/beta", headers=ADMIN), 404)
    hooked = '{"webhooks": {"url": "http://127.0.0.1/BAD"}}'.replace("BAD", bad)
    error_of(await api.patch("/api/v1/namespaces/acme", **raw_json(hooked, ADMIN)), 422)
    error_of(await api.get(JOBS, params={"tag": "a\x00b"}, headers=acme), 422)


async def test_an_unknown_field_named_by_a_lone_surrogate_is_a_json_422_not_a_500(api, acme):
    body = '{"metadata": {"BAD": 1}}'.replace("BAD", LONE_SURROGATE)
    error = error_of(await api.post(JOBS, **raw_json(body, acme)), 422)
    assert "\ud800" not in error["message"]


async def test_the_probe_an_attackers_surrogate_never_fails_another_tenants_writes(api, acme):
    """The issue's trial: one bad submit among 100 concurrent writes of another namespace."""
    globex = await new_tenant(api, "globex")
    bad = '{"metadata": {"title": "BAD"}}'.replace("BAD", LONE_SURROGATE)
    attack = api.post(JOBS, **raw_json(bad, acme))
    writes = [api.post(JOBS, json={"jobId": f"g{i}"}, headers=globex) for i in range(100)]
    attacked, *answers = await asyncio.gather(attack, *writes)
    error_of(attacked, 422)
    assert [a.status_code for a in answers] == [201] * 100
    assert all("\ud800" not in a.text for a in answers)
    assert len(await job_ids(api, globex)) == 100


# -- 2. values the service could not render back --------------------------------------------


@pytest.mark.parametrize(
    "when", ["9999-12-31T23:59:59-23:59", "0001-01-01T00:00:00+14:00", "10000-01-01T00:00:00Z"]
)
async def test_an_estimated_completion_iso_8601_cannot_write_is_422_and_not_stored(api, acme, when):
    await api.post(JOBS, json={"jobId": "j1"}, headers=acme)
    error_of(await api.patch(f"{JOBS}/j1", json={"estimatedCompletion": when}, headers=acme), 422)
    for path in (f"{JOBS}/j1", f"{JOBS}/j1/status", JOBS):
        read = await api.get(path, headers=acme)
        assert read.status_code == 200, read.text
    status = (await api.get(f"{JOBS}/j1/status", headers=acme)).json()
    assert (status["estimatedCompletion"], status["revision"]) == (None, 1)
    listed = await api.get(JOBS, params={"createdAfter": when}, headers=acme)
    error_of(listed, 422)


@pytest.mark.parametrize("value", [1e13, -1e12, math.nan, math.inf, 10**400])
def test_the_python_client_cannot_store_an_estimated_completion_out_of_range(value):
    with pytest.raises(Invalid, match="0001-01-01 to 9999-12-31"):
        ProgressUpdate(estimated_completion=value)


async def test_whatever_the_store_holds_renders_on_every_read(api, acme, store):
    """A record written before the edge checked ranges (or by another writer) never breaks
    the job's record, status, list page or stream: what cannot be written is null."""
    await api.post(JOBS, json={"jobId": "j1"}, headers=acme)
    odd = math.nan if isinstance(store, MemoryStore) else math.inf  # SQLite stores NaN as NULL
    job = (await store.get_job("acme", "j1")).evolve(
        status=JobStatus.FAILED, estimated_completion=1e20, progress=odd, completed_at=-1e15
    )
    await store.commit(Batch(slot=None, epoch=None, jobs=[job]))
    reader = await new_shard_reader(store)
    for path in (f"{JOBS}/j1", f"{JOBS}/j1/status", JOBS, f"{JOBS}/j1/stream"):
        read = await reader.get(path, headers=acme)
        assert read.status_code == 200, read.text
    status = (await reader.get(f"{JOBS}/j1/status", headers=acme)).json()
    assert (status["estimatedCompletion"], status["progress"], status["completedAt"]) == (
        None,
        None,
        None,
    )
    frames = sse_frames((await reader.get(f"{JOBS}/j1/stream", headers=acme)).text)
    progress = [json.loads(f["data"]) for f in frames if f.get("event") == "progress"]
    assert progress == [{"progress": None, "estimatedCompletion": None}]
    assert frames[-1]["event"] == "end"


async def new_shard_reader(store: Store) -> httpx.AsyncClient:
    """An app over a fresh shard of `store`: it reads the job from the store, as after a restart."""
    shard = Shard(store, ShardConfig(slot=0, num_shards=1))
    await shard.start()
    return http(make_app(store, ShardClient.in_process([shard], store=store)))  # type: ignore[arg-type]


# -- 3. odd input anywhere: a 4xx JSON error, never a 500 -------------------------------------


async def test_ids_and_names_ending_in_a_newline_are_422(api, acme):
    error_of(await api.post(JOBS, json={"jobId": "x\n"}, headers=acme), 422)
    error_of(await api.post("/api/v1/namespaces", json={"name": "ns\n"}, headers=ADMIN), 422)
    assert await job_ids(api, acme) == []


@pytest.mark.parametrize(
    "cursor",
    [
        b64("[" * 200 + "]" * 200),
        b64("[" * 2000),
        b64("9" * 400),
        b64('["nan", "x"]'),
        b64("[1, null]"),
        b64('[1e400, "x"]'),
        b64('[true, "x"]'),
        b64('[1, "x\\n"]'),
        b64('{"a": 1}'),
        "%%%",
        "x" * 10_000,
    ],
)
async def test_a_crafted_cursor_is_400(api, acme, cursor):
    error_of(await api.get(JOBS, params={"cursor": cursor}, headers=acme), 400)


async def test_a_cursor_the_service_gave_out_still_pages(api, acme):
    for i in range(3):
        await api.post(JOBS, json={"jobId": f"j{i}"}, headers=acme)
    first = (await api.get(JOBS, params={"limit": 2}, headers=acme)).json()
    rest = await api.get(JOBS, params={"cursor": first["nextCursor"]}, headers=acme)
    seen = [j["jobId"] for j in first["items"] + rest.json()["items"]]
    assert sorted(seen) == ["j0", "j1", "j2"]


@pytest.mark.parametrize("value", ["²", "٣", "1" * 5000, "9223372036854775808", "-1", "1.5"])
async def test_a_last_event_id_that_is_no_seq_is_422(api, acme, value):
    await api.post(JOBS, json={"jobId": "j1"}, headers=acme)
    headers = {**acme, "Last-Event-ID": value.encode()}
    error_of(await api.get(f"{JOBS}/j1/stream", headers=headers), 422)


@pytest.mark.parametrize("tag", ['"²"', '"' + "9" * 5000 + '"', "*x", '"٣"'])
async def test_an_entity_tag_this_service_never_gave_out_matches_nothing(api, acme, tag):
    await api.post(JOBS, json={"jobId": "j1"}, headers=acme)
    headers = {**acme, "If-None-Match": tag.encode()}
    read = await api.get(f"{JOBS}/j1/status", params={"wait": 0.01}, headers=headers)
    assert read.status_code == 200 and read.json()["jobId"] == "j1"


@pytest.mark.parametrize(
    "query", [{"after": 2**63}, {"after": "²"}, {"seq": 10**30}, {"version": 10**30}]
)
async def test_numbers_past_int64_in_the_query_are_422(api, acme, query):
    await api.post(JOBS, json={"jobId": "j1"}, headers=acme)
    path = f"{JOBS}/j1/output" if "seq" in query else f"{JOBS}/j1/output/raw"
    call = (
        api.post(path, content=b"x", params=query, headers=acme)
        if "seq" in query
        else (api.get(path, params=query, headers=acme))
    )
    error_of(await call, 422)


@pytest.mark.parametrize(
    "ttl", ["9" * 5000 + "s", "P" + "9" * 5000 + "D", 10**400, 10**20, "1e3", "0s", -5]
)
async def test_a_retention_ttl_out_of_range_or_unreadable_is_422(api, acme, ttl):
    body = json.dumps({"jobId": "j1", "retentionPolicy": {"ttl": ttl}})
    error_of(await api.post(JOBS, **raw_json(body, acme)), 422)


@pytest.mark.parametrize(
    "url", ["http://a..com/", f"http://{'a' * 70}.com/", "http://xn--zz.com/", "http://.com/"]
)
async def test_a_webhook_host_that_is_no_dns_name_is_422(api, acme, url):
    error_of(await api.post(JOBS, json={"jobId": "j1", "webhookUrl": url}, headers=acme), 422)
    hooks = {"webhooks": {"url": url}}
    error_of(await api.patch("/api/v1/namespaces/acme", json=hooks, headers=ADMIN), 422)


@pytest.mark.parametrize("value", ["50", True, "1e400"])
async def test_numbers_must_be_json_numbers(api, acme, value):
    await api.post(JOBS, json={"jobId": "j1"}, headers=acme)
    error_of(await api.patch(f"{JOBS}/j1", json={"progress": value}, headers=acme), 422)
    assert (await api.get(f"{JOBS}/j1/status", headers=acme)).json()["revision"] == 1


@pytest.mark.parametrize("namespace", ["", "ACME", "a\x00", "a\n", "-a"])
async def test_a_malformed_namespace_is_422_for_every_key(api, acme, namespace):
    error_of(await api.get(JOBS, params={"namespace": namespace}, headers=acme), 422)
    error_of(await api.get(JOBS, params={"namespace": namespace}, headers=ADMIN), 422)
    body = {"jobId": "j1", "namespace": namespace}
    error_of(await api.post(JOBS, json=body, headers=acme), 422)


async def test_ids_in_paths_are_checked_before_any_store_sees_them(api, acme):
    error_of(await api.delete("/api/v1/namespaces/acme/keys/a%00b", headers=ADMIN), 422)
    retry = await api.post("/api/v1/webhooks/deliveries/a%00b/retry", headers=acme)
    error_of(retry, 422)
    error_of(await api.get(f"{JOBS}/{'j' * 129}", headers=acme), 413)
    forged = {"Authorization": "Bearer aos_zz%00zz_secret"}
    error_of(await api.get(JOBS, headers=forged), 401)


async def test_a_405_carries_allow(api, acme):
    answer = await api.put(f"{JOBS}/j1", headers=acme)
    error_of(answer, 405)
    assert answer.headers["allow"] == "GET, PATCH, DELETE"


async def test_the_bearer_scheme_is_case_insensitive(api, acme):
    token = acme["Authorization"].split(" ", 1)[1]
    for scheme in ("bearer", "BEARER", "BeArEr"):
        answer = await api.get(JOBS, headers={"Authorization": f"{scheme} {token}"})
        assert answer.status_code == 200, answer.text


# -- what a new user's probe found ------------------------------------------------------------


@pytest.mark.parametrize("when", [20000000001, "20000000001", 1.7e9, "+275760-09-13T00:00:00Z"])
async def test_a_time_is_an_iso_8601_string_never_a_number_read_as_seconds_or_ms(api, acme, when):
    await api.post(JOBS, json={"jobId": "j1"}, headers=acme)
    error_of(await api.patch(f"{JOBS}/j1", json={"estimatedCompletion": when}, headers=acme), 422)
    error_of(await api.get(JOBS, params={"createdBefore": when}, headers=acme), 422)


async def test_the_last_instant_of_year_9999_is_a_time(api, acme):
    await api.post(JOBS, json={"jobId": "j1"}, headers=acme)
    body = {"estimatedCompletion": "9999-12-31T23:59:59.5Z", "progress": -0.0}
    patched = await api.patch(f"{JOBS}/j1", json=body, headers=acme)
    assert patched.status_code == 200, patched.text
    assert patched.json()["estimatedCompletion"] == "9999-12-31T23:59:59.500Z"
    assert str(patched.json()["progress"]) == "0.0"  # not -0.0


@pytest.mark.parametrize("url", ["http://93.184.216.34:0/", "http://a.com:0/"])
async def test_webhook_port_0_is_out_of_range(api, acme, url):
    error = error_of(await api.post(JOBS, json={"webhookUrl": url}, headers=acme), 422)
    assert "port 0 is out of range" in error["message"]


@pytest.mark.parametrize("name", ["x-", "-x", "a--"])
async def test_a_namespace_name_is_a_dns_label_without_an_edge_hyphen(api, name):
    error_of(await api.post("/api/v1/namespaces", json={"name": name}, headers=ADMIN), 422)


async def test_a_body_that_is_not_a_json_object_says_how_to_send_one(api, acme):
    for sent in ({"data": {"jobId": "x"}}, {"content": b""}):
        error = error_of(await api.post(JOBS, headers=acme, **sent), 422)
        assert "Content-Type: application/json" in error["message"]
    broken = await api.post(JOBS, **raw_json('{"jobId": ', acme))
    assert error_of(broken, 400)["message"].startswith("the body is not well-formed JSON at")


async def test_the_openapi_document_lists_the_retry_conflict_and_the_appends_raw_body(api):
    paths = (await api.get("/openapi.json")).json()["paths"]
    assert "409" in paths["/api/v1/webhooks/deliveries/{delivery_id}/retry"]["post"]["responses"]
    append = paths["/api/v1/jobs/{job_id}/output"]["post"]
    assert list(append["requestBody"]["content"]) == ["application/octet-stream"]
    for path, operations in paths.items():
        for method, operation in operations.items():
            if path.startswith("/api/"):
                assert {"401", "422", "503"} <= set(operation["responses"]), (method, path)
                assert operation["security"] == [{"bearer": []}]
