"""`POST /api/v1/jobs:batch` through the app, without Ray: each job answered as a single submit
would be, in order, in one group commit; the batch's own limits and malformed bodies."""

from __future__ import annotations

import json
from collections.abc import AsyncIterator
from typing import Any

import httpx
import pytest

from actors.limits import MAX_BATCH_BODY_BYTES, MAX_BATCH_JOBS, MAX_JSON_BODY_BYTES
from actors.shard import Shard, ShardConfig
from actors.shard_client import ShardClient
from tests.unit.fakes import GatedStore
from tests.unit.test_api import ADMIN, JOBS, Restarting, error_of, http, make_app, new_tenant
from tests.unit.test_guard import Body, declared

BATCH = "/api/v1/jobs:batch"
JSON_TYPE = {"Content-Type": "application/json"}
MARK = "unstorable-title-7f3a"


@pytest.fixture
async def shard(store: GatedStore) -> AsyncIterator[Shard]:
    shard = Shard(store, ShardConfig(slot=0, num_shards=1, webhook_allowed_networks="127.0.0.0/8"))
    await shard.start()
    yield shard
    await shard.stop()


@pytest.fixture
async def api(store: GatedStore, shard: Shard) -> AsyncIterator[httpx.AsyncClient]:
    async with http(make_app(store, ShardClient.in_process([shard], store=store))) as client:
        yield client


@pytest.fixture
async def acme(api: httpx.AsyncClient) -> dict[str, str]:
    return await new_tenant(api, "acme")


@pytest.fixture
async def globex(api: httpx.AsyncClient) -> dict[str, str]:
    return await new_tenant(api, "globex")


async def batch(
    api: httpx.AsyncClient, headers: dict[str, str], jobs: list[Any], **params: str
) -> list[dict[str, Any]]:
    """The batch's items, checking the 200 and that there is one item per job."""
    response = await api.post(BATCH, json={"jobs": jobs}, params=params, headers=headers)
    assert response.status_code == 200, response.text
    assert list(response.json()) == ["items"]
    items: list[dict[str, Any]] = response.json()["items"]
    assert len(items) == len(jobs)
    return items


def statuses(items: list[dict[str, Any]]) -> list[int]:
    return [item["status"] for item in items]


def error_item(item: dict[str, Any], status: int) -> dict[str, str]:
    """The item's error, checking its status and that the item is exactly {status, error}."""
    assert item["status"] == status, item
    assert sorted(item) == ["error", "status"] and sorted(item["error"]) == ["code", "message"]
    return item["error"]


# -- each job as a single submit -------------------------------------------------------------


async def test_each_job_gets_a_single_submits_status_in_the_order_sent(api, acme, globex):
    await api.post(JOBS, json={"jobId": "old", "metadata": {"title": "a"}}, headers=acme)
    items = await batch(
        api,
        acme,
        [
            {"jobId": "new"},
            {"jobId": "old", "metadata": {"title": "a"}},
            {"jobId": "old", "metadata": {"title": "b"}},
            {"jobId": "bad/id"},
            {"jobId": "theirs", "namespace": "globex"},
            {"metadata": {"title": "no id"}},
        ],
    )
    assert statuses(items) == [201, 200, 409, 422, 403, 201]
    assert [item["job"]["jobId"] for item in items if "job" in item][:2] == ["new", "old"]
    assert items[5]["job"]["jobId"] and items[5]["job"]["metadata"]["title"] == "no id"
    assert error_item(items[2], 409)["code"] == "conflict"
    assert error_item(items[3], 422)["code"] == "invalid"
    assert error_item(items[4], 403)["code"] == "forbidden"
    for item in items:
        if "job" in item:
            read = await api.get(f"{JOBS}/{item['job']['jobId']}", headers=acme)
            assert sorted(item) == ["job", "status"] and item["job"] == read.json()
    error_of(await api.get(f"{JOBS}/theirs", headers=globex), 404)


async def test_a_job_is_rendered_as_the_single_submit_renders_it(api, acme):
    body = {"jobId": "j1", "metadata": {"title": "t", "tags": ["x"]}, "outputFormat": "json"}
    [item] = await batch(api, acme, [body])
    again = await api.post(JOBS, json=body, headers=acme)
    assert again.status_code == 200 and item == {"status": 201, "job": again.json()}


async def test_an_id_twice_in_the_batch_is_created_once(api, acme, store):
    before = len(store.commits)
    items = await batch(api, acme, [{"jobId": "j1"}, {"jobId": "j1"}, {"jobId": "j1", "x": 1}])
    assert statuses(items) == [201, 200, 422]
    assert items[0]["job"] == items[1]["job"]
    assert len(store.commits) - before == 1


@pytest.mark.parametrize(
    "job",
    [
        {"jobId": "a/b"},
        {"jobId": 5},
        {"jobId": "a" * 129},
        {"metadata": {"title": "t" * 513}},
        {"metadata": {"owner": "me"}},
        {"webhookEvents": ["job.finished"]},
        {"webhookUrl": "ftp://127.0.0.1/x"},
        {"webhookUrl": "http://10.0.0.1/hook"},
        {"outputFormat": "xml"},
        {"retentionPolicy": {"ttl": "soon"}},
        {"retentionPolicy": {"ttl": 0}},
        {"surprise": True},
        {"namespace": "Not_Valid"},
        {"namespace": "globex"},
        {"namespace": "nobody"},
    ],
    ids=str,
)
async def test_a_bad_job_gets_exactly_the_error_a_single_submit_gets(api, acme, job):
    single = await api.post(JOBS, json=job, headers=acme)
    assert single.status_code >= 400, single.text
    [item] = await batch(api, acme, [job])
    assert error_item(item, single.status_code) == single.json()["error"]


async def test_a_job_that_is_not_an_object_is_422_and_the_others_are_created(api, acme):
    items = await batch(api, acme, [5, {"jobId": "j1"}, None, "j2", [{"jobId": "j3"}]])
    assert statuses(items) == [422, 201, 422, 422, 422]
    assert error_item(items[0], 422)["message"] == "a job must be a JSON object"


async def test_a_job_with_a_lone_surrogate_is_422_and_the_others_are_stored(api, acme, store):
    raw = b'{"jobs": [{"jobId": "a"}, {"jobId": "b", "metadata": {"title": "x\\ud800"}}, {}]}'
    response = await api.post(BATCH, content=raw, headers=acme | JSON_TYPE)
    items = response.json()["items"]
    assert response.status_code == 200 and statuses(items) == [201, 422, 201]
    assert error_item(items[1], 422)["code"] == "invalid"
    assert await store.get_job("acme", "a") is not None
    assert await store.get_job("acme", "b") is None


async def test_a_job_the_store_refuses_is_422_unstorable_and_the_others_are_stored(
    api, acme, store
):
    store.unstorable = MARK
    jobs = [{"jobId": "a"}, {"jobId": "b", "metadata": {"title": MARK}}, {"jobId": "c"}]
    items = await batch(api, acme, jobs)
    assert statuses(items) == [201, 422, 201]
    error = error_item(items[1], 422)
    assert error["code"] == "unstorable" and MARK not in error["message"]
    assert [await store.get_job("acme", j) is not None for j in "abc"] == [True, False, True]


# -- namespaces ------------------------------------------------------------------------------


async def test_the_query_namespace_is_the_default_and_a_jobs_own_must_agree(api, acme, globex):
    items = await batch(
        api,
        ADMIN,
        [
            {"jobId": "a"},
            {"jobId": "b", "namespace": "acme"},
            {"jobId": "c", "namespace": "globex"},
        ],
        namespace="acme",
    )
    assert statuses(items) == [201, 201, 400]
    assert [item["job"]["namespace"] for item in items[:2]] == ["acme", "acme"]
    assert error_item(items[2], 400)["code"] == "bad_request"


async def test_jobs_of_several_namespaces_go_in_one_batch(api, acme, globex, store):
    jobs = [{"jobId": f"j{i}", "namespace": ("acme", "globex")[i % 2]} for i in range(10)]
    before = len(store.commits)
    items = await batch(api, ADMIN, jobs)
    assert statuses(items) == [201] * 10
    assert [item["job"]["namespace"] for item in items] == [job["namespace"] for job in jobs]
    assert len(store.commits) - before == 1


async def test_a_key_of_several_namespaces_must_say_which_for_each_job(api, acme):
    items = await batch(api, ADMIN, [{"jobId": "a"}, {"jobId": "b", "namespace": "acme"}])
    assert statuses(items) == [400, 201]


# -- the batch's own limits ------------------------------------------------------------------


async def test_the_largest_batch_is_one_group_commit(api, acme, store):
    before = len(store.commits)
    items = await batch(api, acme, [{"jobId": f"j{i}"} for i in range(MAX_BATCH_JOBS)])
    assert statuses(items) == [201] * MAX_BATCH_JOBS
    assert [item["job"]["jobId"] for item in items] == [f"j{i}" for i in range(MAX_BATCH_JOBS)]
    assert len(store.commits) - before == 1


async def test_a_batch_over_the_most_jobs_is_413_and_creates_nothing(api, acme, store):
    jobs = [{"jobId": f"j{i}"} for i in range(MAX_BATCH_JOBS + 1)]
    response = await api.post(BATCH, json={"jobs": jobs}, headers=acme)
    error = error_of(response, 413)
    assert error["code"] == "too_large" and str(MAX_BATCH_JOBS) in error["message"]
    assert await store.get_job("acme", "j0") is None


async def test_an_empty_batch_is_200_with_no_items(api, acme):
    assert await batch(api, acme, []) == []


@pytest.mark.parametrize(
    ("raw", "status"),
    [
        (b'{"jobs": [', 400),
        (b"[]", 422),
        (b'"jobs"', 422),
        (b"{}", 422),
        (b'{"jobs": {}}', 422),
        (b'{"jobs": null}', 422),
        (b'{"jobs": [], "more": 1}', 422),
    ],
)
async def test_a_malformed_batch_is_400_or_422_like_any_body(api, acme, raw, status):
    response = await api.post(BATCH, content=raw, headers=acme | JSON_TYPE)
    error = error_of(response, status)
    assert error["code"] == ("bad_request" if status == 400 else "invalid")


async def test_malformed_json_is_described_as_for_a_single_submit(api, acme):
    raw = b'{"jobs": [{"jobId": '
    batched = await api.post(BATCH, content=raw, headers=acme | JSON_TYPE)
    single = await api.post(JOBS, content=raw, headers=acme | JSON_TYPE)
    assert error_of(batched, 400) == error_of(single, 400)


async def test_a_batch_is_refused_413_unread_past_its_cap_and_taken_past_the_json_cap(api, acme):
    over = Body.of_size(MAX_BATCH_BODY_BYTES + 1)
    response = await api.post(BATCH, content=over, headers=acme | declared(over) | JSON_TYPE)
    assert error_of(response, 413)["code"] == "too_large" and over.pulled == 0
    chunked = Body.of_size(MAX_BATCH_BODY_BYTES + 1024 * 1024)
    response = await api.post(BATCH, content=chunked, headers=acme | JSON_TYPE)
    error_of(response, 413)
    assert MAX_BATCH_BODY_BYTES < chunked.pulled < len(chunked.data)
    big = {"jobs": [{"metadata": {"description": "d" * 8000}} for _ in range(40)]}
    raw = json.dumps(big).encode()
    assert len(raw) > MAX_JSON_BODY_BYTES  # over the cap of every other JSON body
    response = await api.post(BATCH, content=raw, headers=acme | JSON_TYPE)
    assert response.status_code == 200 and statuses(response.json()["items"]) == [201] * 40
    error_of(await api.post(JOBS, content=raw, headers=acme | JSON_TYPE), 413)


async def test_a_batch_without_a_valid_key_is_401_before_its_body_is_read(api):
    body = Body.of_size(MAX_JSON_BODY_BYTES)
    response = await api.post(BATCH, content=body, headers=declared(body))
    assert error_of(response, 401)["code"] == "unauthorized" and body.pulled == 0


async def test_jobs_of_a_restarting_shard_are_503_and_the_reply_says_when_to_retry(store):
    shards = ShardClient(num_shards=1, shards=lambda slot: Restarting())
    async with http(make_app(store, shards)) as api:
        response = await api.post(
            BATCH,
            json={"jobs": [{"jobId": "a"}, {"jobId": "b/c"}]},
            params={"namespace": "acme"},
            headers=ADMIN,
        )
    items = response.json()["items"]
    assert response.status_code == 200 and statuses(items) == [503, 422]
    assert error_item(items[0], 503)["code"] == "shard_unavailable"
    assert response.headers["retry-after"] == "2"


async def test_a_batch_where_no_job_met_a_503_has_no_retry_after(api, acme):
    response = await api.post(BATCH, json={"jobs": [{"jobId": "a"}, {"jobId": 5}]}, headers=acme)
    assert response.status_code == 200 and "retry-after" not in response.headers


async def test_the_openapi_document_lists_the_batch_with_its_answers(api):
    operation = (await api.get("/openapi.json")).json()["paths"][BATCH]["post"]
    assert {"200", "413", "422", "401", "403"} <= set(operation["responses"])
    assert operation["security"] == [{"bearer": []}]
