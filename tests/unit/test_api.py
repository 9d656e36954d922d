"""The HTTP API through its app factory, without Ray: handlers, auth, isolation, error statuses.

`create_app(Deps.create(...))` over a real `Shard` on the in-memory store, called through
httpx's ASGI transport. Webhook URLs use 127.0.0.1 (allowed here, so no DNS is needed).
"""

from __future__ import annotations

import asyncio
import base64
import json
from collections.abc import AsyncIterator
from datetime import UTC, datetime
from typing import Any

import httpx
import pytest
from fastapi import FastAPI

from actors.limits import MAX_APPEND_BYTES, MAX_CHUNK_BYTES
from actors.shard import Shard, ShardConfig
from actors.shard_client import ShardClient
from serve_app import output as output_routes
from serve_app.app import create_app
from serve_app.deps import ApiConfig, Deps
from serve_app.keys import key_hash
from storage.errors import ShardUnavailable
from storage.memory import MemoryStore
from tests.unit.fakes import WAIT_S, Watched

ADMIN_KEY = "admin-test-key"
ADMIN = {"Authorization": f"Bearer {ADMIN_KEY}"}
JOBS = "/api/v1/jobs"
HOOK = "http://127.0.0.1:9/hook"


def make_app(store: MemoryStore, shards: ShardClient, **config: Any) -> FastAPI:
    api_config = ApiConfig(
        store_url="memory://",
        num_shards=shards.num_shards,
        admin_key_sha256=key_hash(ADMIN_KEY),
        **config,
    )
    return create_app(Deps.create(api_config, store, shards))


def http(app: FastAPI) -> httpx.AsyncClient:
    return httpx.AsyncClient(transport=httpx.ASGITransport(app=app), base_url="http://t")


class Restarting:
    """A shard whose every operation finds it restarting."""

    def __getattr__(self, name: str) -> Any:
        async def unavailable(*args: Any, **kwargs: Any) -> Any:
            raise ShardUnavailable("the shard is restarting", retry_after_s=2.0)

        return unavailable


@pytest.fixture
async def local_shard(store: MemoryStore) -> AsyncIterator[Shard]:
    """A shard that lets webhooks reach 127.0.0.0/8; its namespaces are made over HTTP."""
    shard = Shard(store, ShardConfig(slot=0, num_shards=1, webhook_allowed_networks="127.0.0.0/8"))
    await shard.start()
    yield shard
    await shard.stop()


@pytest.fixture
def watched(local_shard: Shard) -> Watched:
    return Watched(local_shard)


@pytest.fixture
async def api(store: MemoryStore, watched: Watched) -> AsyncIterator[httpx.AsyncClient]:
    app = make_app(store, ShardClient.in_process([watched], store=store))
    async with http(app) as client:
        yield client


async def new_tenant(api: httpx.AsyncClient, name: str) -> dict[str, str]:
    """Create namespace `name` and a key for it; the key's Authorization header."""
    created = await api.post("/api/v1/namespaces", json={"name": name}, headers=ADMIN)
    assert created.status_code == 201, created.text
    key = await api.post(f"/api/v1/namespaces/{name}/keys", headers=ADMIN)
    assert key.status_code == 201, key.text
    return {"Authorization": f"Bearer {key.json()['key']}"}


@pytest.fixture
async def acme(api: httpx.AsyncClient) -> dict[str, str]:
    return await new_tenant(api, "acme")


@pytest.fixture
async def globex(api: httpx.AsyncClient) -> dict[str, str]:
    return await new_tenant(api, "globex")


async def submit(api: httpx.AsyncClient, headers: dict[str, str], **body: Any) -> dict[str, Any]:
    response = await api.post(JOBS, json=body, headers=headers)
    assert response.status_code == 201, response.text
    return response.json()


def error_of(response: httpx.Response, status: int) -> dict[str, str]:
    """The response's error, checking its status and that the body is exactly
    `{"error": {"code", "message"}}`."""
    assert response.status_code == status, response.text
    body = response.json()
    assert list(body) == ["error"] and sorted(body["error"]) == ["code", "message"]
    assert isinstance(body["error"]["code"], str) and body["error"]["message"]
    return body["error"]


def sse_frames(text: str) -> list[dict[str, str]]:
    """Each SSE frame as {field: value}; `data` parsed later by the caller."""
    frames = []
    for block in text.split("\n\n"):
        if block:
            frames.append(dict(line.split(": ", 1) for line in block.split("\n")))
    return frames


# -- jobs -----------------------------------------------------------------------------------


async def test_submit_creates_a_job_and_the_same_request_again_returns_it(api, acme):
    body = {"jobId": "j1", "metadata": {"title": "export", "tags": ["a"]}}
    first = await api.post(JOBS, json=body, headers=acme)
    assert first.status_code == 201
    assert first.headers["location"] == "/api/v1/jobs/j1?namespace=acme"
    job = first.json()
    assert (job["namespace"], job["jobId"], job["status"], job["revision"]) == (
        "acme",
        "j1",
        "Running",
        1,
    )
    assert job["metadata"] == {"title": "export", "description": None, "tags": ["a"]}
    again = await api.post(JOBS, json=body, headers=acme)
    assert again.status_code == 200 and again.json() == job
    other = await api.post(JOBS, json={"jobId": "j1"}, headers=acme)
    assert error_of(other, 409)["code"] == "conflict"


async def test_submit_without_a_job_id_makes_a_new_one(api, acme):
    first, second = await submit(api, acme), await submit(api, acme)
    assert first["jobId"] and first["jobId"] != second["jobId"]


async def test_a_job_with_a_webhook_keeps_its_url_and_events(api, acme):
    job = await submit(api, acme, jobId="j1", webhookUrl=HOOK, webhookEvents=["job.output"])
    assert (job["webhookUrl"], job["webhookEvents"]) == (HOOK, ["job.output"])


async def test_a_webhook_url_into_a_private_network_is_refused(api, acme):
    response = await api.post(JOBS, json={"webhookUrl": "http://10.0.0.1/hook"}, headers=acme)
    error_of(response, 422)


async def test_get_returns_the_job_with_its_revision_as_a_strong_etag(api, acme):
    await submit(api, acme, jobId="j1")
    first = await api.get(f"{JOBS}/j1", headers=acme)
    revision, incarnation = first.headers["etag"].strip('"').split("-")
    assert first.status_code == 200 and revision == "1"
    await api.post(f"{JOBS}/j1/output", content=b"x", headers=acme)
    second = await api.get(f"{JOBS}/j1", headers=acme)
    assert second.headers["etag"] == f'"2-{incarnation}"' and second.json()["outputSeq"] == 1
    same = await api.get(
        f"{JOBS}/j1", headers=acme | {"If-None-Match": f'"x", W/"2-{incarnation}"'}
    )
    assert same.status_code == 304 and same.headers["etag"] == second.headers["etag"]


async def test_status_is_304_when_if_none_match_names_the_current_revision(api, acme):
    await submit(api, acme, jobId="j1")
    status = await api.get(f"{JOBS}/j1/status", headers=acme)
    assert status.status_code == 200 and status.json()["revision"] == 1
    etag = status.headers["etag"]
    same = await api.get(f"{JOBS}/j1/status", headers=acme | {"If-None-Match": etag})
    assert same.status_code == 304 and same.headers["etag"] == etag and same.content == b""
    stale = await api.get(f"{JOBS}/j1/status", headers=acme | {"If-None-Match": '"0"'})
    assert stale.status_code == 200 and stale.json()["revision"] == 1


async def test_a_long_poll_answers_as_soon_as_the_job_changes(api, acme, watched):
    await submit(api, acme, jobId="j1")
    etag = (await api.get(f"{JOBS}/j1/status", headers=acme)).headers["etag"]
    poll = asyncio.create_task(
        api.get(f"{JOBS}/j1/status?wait=30", headers=acme | {"If-None-Match": etag})
    )
    await asyncio.wait_for(watched.watching.wait(), WAIT_S)
    assert not poll.done()
    appended = await api.post(f"{JOBS}/j1/output", content=b"live", headers=acme)
    assert appended.status_code == 200
    answer = await asyncio.wait_for(poll, WAIT_S)
    assert answer.status_code == 200 and answer.headers["etag"].startswith('"2-')
    assert answer.json()["outputSeq"] == 1


async def test_a_long_poll_without_a_change_is_304_when_the_wait_ends(api, acme):
    await submit(api, acme, jobId="j1")
    etag = (await api.get(f"{JOBS}/j1/status", headers=acme)).headers["etag"]
    response = await api.get(f"{JOBS}/j1/status?wait=0.05", headers=acme | {"If-None-Match": etag})
    assert response.status_code == 304


async def test_a_long_poll_waits_no_longer_than_the_configured_maximum(store, local_shard):
    app = make_app(store, ShardClient.in_process([local_shard]), max_wait_s=0.05)
    async with http(app) as api:
        acme = await new_tenant(api, "acme")
        await submit(api, acme, jobId="j1")
        etag = (await api.get(f"{JOBS}/j1/status", headers=acme)).headers["etag"]
        poll = api.get(f"{JOBS}/j1/status?wait=600", headers=acme | {"If-None-Match": etag})
        assert (await asyncio.wait_for(poll, WAIT_S)).status_code == 304


async def test_list_pages_through_the_namespaces_jobs_and_filters_by_status(api, acme, globex):
    for job_id in ("j1", "j2", "j3"):
        await submit(api, acme, jobId=job_id)
    await submit(api, globex, jobId="theirs")
    await api.post(f"{JOBS}/j2/complete", json={"status": "Succeeded"}, headers=acme)
    first = (await api.get(f"{JOBS}?limit=2", headers=acme)).json()
    assert len(first["items"]) == 2 and first["nextCursor"]
    rest = (await api.get(f"{JOBS}?limit=2&cursor={first['nextCursor']}", headers=acme)).json()
    assert len(rest["items"]) == 1 and rest["nextCursor"] is None
    assert sorted(j["jobId"] for j in first["items"] + rest["items"]) == ["j1", "j2", "j3"]
    done = (await api.get(f"{JOBS}?status=Succeeded", headers=acme)).json()
    assert [j["jobId"] for j in done["items"]] == ["j2"]
    error_of(await api.get(f"{JOBS}?status=Done", headers=acme), 422)
    error_of(await api.get(f"{JOBS}?cursor=garbage", headers=acme), 400)


async def test_progress_sets_the_percentage_and_the_estimated_completion(api, acme):
    await submit(api, acme, jobId="j1")
    body = {"progress": 40, "estimatedCompletion": "2030-01-01T00:00:00Z"}
    response = await api.patch(f"{JOBS}/j1", json=body, headers=acme)
    assert response.status_code == 200
    assert response.json()["progress"] == 40.0
    assert response.json()["estimatedCompletion"] == "2030-01-01T00:00:00.000Z"
    assert (await api.get(f"{JOBS}/j1/status", headers=acme)).json()["progress"] == 40.0


async def test_complete_finishes_the_job_once(api, acme):
    await submit(api, acme, jobId="j1")
    failed = await api.post(
        f"{JOBS}/j1/complete", json={"status": "Failed", "error": "boom"}, headers=acme
    )
    assert failed.status_code == 200
    assert (failed.json()["status"], failed.json()["error"]) == ("Failed", "boom")
    assert failed.json()["completedAt"] is not None
    again = await api.post(
        f"{JOBS}/j1/complete", json={"status": "Failed", "error": "boom"}, headers=acme
    )
    assert again.json() == failed.json()
    other = await api.post(f"{JOBS}/j1/complete", json={"status": "Succeeded"}, headers=acme)
    error_of(other, 409)
    error_of(await api.post(f"{JOBS}/j1/output", content=b"late", headers=acme), 409)


async def test_cancel_stops_a_running_job_and_a_second_cancel_conflicts(api, acme):
    await submit(api, acme, jobId="j1")
    cancelled = await api.post(f"{JOBS}/j1/cancel", headers=acme)
    assert cancelled.status_code == 200 and cancelled.json()["status"] == "Cancelled"
    error_of(await api.post(f"{JOBS}/j1/cancel", headers=acme), 409)


async def test_delete_needs_a_finished_job_and_then_it_is_gone(api, acme):
    await submit(api, acme, jobId="j1")
    error_of(await api.delete(f"{JOBS}/j1", headers=acme), 409)
    await api.post(f"{JOBS}/j1/cancel", headers=acme)
    deleted = await api.delete(f"{JOBS}/j1", headers=acme)
    assert deleted.status_code == 204 and deleted.content == b""
    assert error_of(await api.get(f"{JOBS}/j1", headers=acme), 404)["code"] == "not_found"


async def test_a_missing_job_is_404(api, acme):
    for path in ("", "/status", "/output", "/output/raw", "/stream", "/webhooks"):
        error_of(await api.get(f"{JOBS}/nope{path}", headers=acme), 404)


# -- output ---------------------------------------------------------------------------------


async def test_an_append_retried_with_its_seq_is_acknowledged_once(api, acme):
    await submit(api, acme, jobId="j1")
    first = await api.post(f"{JOBS}/j1/output?seq=1", content=b"abc", headers=acme)
    assert first.json() == {"seq": 1, "offset": 0, "size": 3, "chunks": 1, "version": 1}
    again = await api.post(f"{JOBS}/j1/output?seq=1", content=b"abc", headers=acme)
    assert again.json() == first.json()
    error_of(await api.post(f"{JOBS}/j1/output?seq=1", content=b"xyz", headers=acme), 409)
    error_of(await api.post(f"{JOBS}/j1/output?seq=3", content=b"gap", headers=acme), 409)
    error_of(await api.post(f"{JOBS}/j1/output?seq=0", content=b"x", headers=acme), 422)
    nxt = await api.post(f"{JOBS}/j1/output", content=b"de", headers=acme)
    assert nxt.json() == {"seq": 2, "offset": 3, "size": 2, "chunks": 1, "version": 1}
    assert (await api.get(f"{JOBS}/j1/output", headers=acme)).json()["output"] == "abcde"


async def test_output_is_served_whole_as_json_and_as_raw_bytes(api, acme):
    await submit(api, acme, jobId="j1")
    for part in (b"hello ", b"world"):
        await api.post(f"{JOBS}/j1/output", content=part, headers=acme)
    whole = await api.get(f"{JOBS}/j1/output", headers=acme)
    assert whole.json() | {"completedAt": None} == {
        "output": "hello world",
        "format": "text",
        "size": 11,
        "completedAt": None,
        "status": "Running",
        "seq": 2,
        "version": 1,
        "sha256": None,
    }
    raw = await api.get(f"{JOBS}/j1/output/raw", headers=acme)
    assert raw.status_code == 200 and raw.content == b"hello world"
    assert raw.headers["content-type"].startswith("text/plain")
    assert (raw.headers["x-output-seq"], raw.headers["x-job-status"]) == ("2", "Running")
    assert raw.headers["content-length"] == "11"
    after = await api.get(f"{JOBS}/j1/output/raw?after=1", headers=acme)
    assert after.content == b"world"
    error_of(await api.get(f"{JOBS}/j1/output?version=2", headers=acme), 404)


async def test_binary_output_is_base64_in_json_and_exact_bytes_raw(api, acme):
    await submit(api, acme, jobId="bin", outputFormat="binary")
    await api.post(f"{JOBS}/bin/output", content=b"\x00\xff\xfe", headers=acme)
    whole = (await api.get(f"{JOBS}/bin/output", headers=acme)).json()
    assert whole["format"] == "binary" and base64.b64decode(whole["output"]) == b"\x00\xff\xfe"
    raw = await api.get(f"{JOBS}/bin/output/raw", headers=acme)
    assert raw.content == b"\x00\xff\xfe"
    assert raw.headers["content-type"] == "application/octet-stream"


async def test_a_text_job_refuses_output_that_is_not_utf8(api, acme):
    await submit(api, acme, jobId="j1")
    error_of(await api.post(f"{JOBS}/j1/output", content=b"\xff\xfe", headers=acme), 422)


async def test_the_stream_of_a_finished_job_replays_output_then_status_and_end(api, acme):
    await submit(api, acme, jobId="j1")
    for part in (b"one", b"two"):
        await api.post(f"{JOBS}/j1/output", content=part, headers=acme)
    await api.post(f"{JOBS}/j1/complete", json={"status": "Succeeded"}, headers=acme)
    response = await api.get(f"{JOBS}/j1/stream", headers=acme)
    assert response.status_code == 200
    assert response.headers["content-type"].startswith("text/event-stream")
    assert response.headers["cache-control"] == "no-cache"
    frames = sse_frames(response.text)
    assert frames[0] == {"retry": "3000"}
    incarnation = frames[1]["id"].split("-")[1]
    assert [(f.get("id"), f["event"]) for f in frames[1:]] == [
        (f"1-{incarnation}", "output"),
        (f"2-{incarnation}", "output"),
        (None, "status"),
        (None, "progress"),
        (None, "end"),
    ]
    data = [json.loads(f["data"]) for f in frames[1:]]
    assert [d["data"] for d in data[:2]] == ["one", "two"]
    assert data[1] == {"seq": 2, "offset": 3, "size": 3, "data": "two", "encoding": "utf-8"}
    assert data[2] == {"status": "Succeeded", "outputVersion": 1, "outputSeq": 2, "error": None}
    assert data[4] == data[2]


async def test_a_stream_resumes_after_the_last_event_id_or_after(api, acme):
    await submit(api, acme, jobId="j1")
    for part in (b"one", b"two", b"three"):
        await api.post(f"{JOBS}/j1/output", content=part, headers=acme)
    await api.post(f"{JOBS}/j1/cancel", headers=acme)

    async def outputs(path: str, headers: dict[str, str]) -> list[tuple[str, str]]:
        response = await api.get(path, headers=acme | headers)
        frames = [f for f in sse_frames(response.text) if f.get("event") == "output"]
        return [(f["id"].split("-")[0], json.loads(f["data"])["data"]) for f in frames]

    assert await outputs(f"{JOBS}/j1/stream", {"Last-Event-ID": "1"}) == [
        ("2", "two"),
        ("3", "three"),
    ]
    assert await outputs(f"{JOBS}/j1/stream?after=2", {"Last-Event-ID": "1"}) == [("3", "three")]
    bad = await api.get(f"{JOBS}/j1/stream", headers=acme | {"Last-Event-ID": "x"})
    error_of(bad, 422)


# -- namespaces and keys --------------------------------------------------------------------


async def test_a_namespace_is_created_once_with_a_secret_shown_only_then(api):
    body = {"name": "acme", "description": "d", "retention": {"ttl": "1h"}}
    created = await api.post("/api/v1/namespaces", json=body, headers=ADMIN)
    assert created.status_code == 201
    assert created.headers["location"] == "/api/v1/namespaces/acme"
    assert created.json()["webhookSecret"].startswith("whsec_")
    assert (created.json()["description"], created.json()["retention"]) == ("d", {"ttlS": 3600})
    read = await api.get("/api/v1/namespaces/acme", headers=ADMIN)
    assert read.status_code == 200
    assert read.json() == {k: v for k, v in created.json().items() if k != "webhookSecret"}
    error_of(await api.post("/api/v1/namespaces", json={"name": "acme"}, headers=ADMIN), 409)
    error_of(await api.get("/api/v1/namespaces/nobody", headers=ADMIN), 404)


async def test_a_patch_changes_only_the_fields_it_names_and_null_clears(api, acme):
    webhooks = {"url": HOOK, "events": ["job.completed"], "retry": {"maxAttempts": 3}}
    patched = await api.patch(
        "/api/v1/namespaces/acme", json={"description": "d", "webhooks": webhooks}, headers=ADMIN
    )
    assert patched.status_code == 200
    assert patched.json()["webhooks"] == webhooks
    assert "webhookSecret" not in patched.json()
    only = await api.patch("/api/v1/namespaces/acme", json={"description": "e"}, headers=ADMIN)
    assert (only.json()["description"], only.json()["webhooks"]) == ("e", webhooks)
    cleared = await api.patch("/api/v1/namespaces/acme", json={"webhooks": None}, headers=ADMIN)
    assert (cleared.json()["description"], cleared.json()["webhooks"]) == ("e", None)
    assert (await api.get("/api/v1/namespaces/acme", headers=acme)).json() == cleared.json()


async def test_a_namespace_webhook_into_a_private_network_is_refused(api, acme):
    body = {"webhooks": {"url": "http://192.168.1.1/hook"}}
    error_of(await api.patch("/api/v1/namespaces/acme", json=body, headers=ADMIN), 422)


async def test_rotating_the_secret_makes_a_new_one_and_says_until_when_the_old_signs(api):
    created = await api.post("/api/v1/namespaces", json={"name": "acme"}, headers=ADMIN)
    before = datetime.now(UTC).timestamp()
    rotated = await api.post(
        "/api/v1/namespaces/acme/webhook-secret/rotate", json={"graceS": 60}, headers=ADMIN
    )
    assert rotated.status_code == 200
    secret = rotated.json()["webhookSecret"]
    assert secret.startswith("whsec_") and secret != created.json()["webhookSecret"]
    until = datetime.fromisoformat(rotated.json()["previousSecretValidUntil"]).timestamp()
    assert before + 59 <= until <= datetime.now(UTC).timestamp() + 61
    default = await api.post("/api/v1/namespaces/acme/webhook-secret/rotate", headers=ADMIN)
    until = datetime.fromisoformat(default.json()["previousSecretValidUntil"]).timestamp()
    assert until - before == pytest.approx(86400, abs=60)
    too_long = {"graceS": 31 * 86400}
    bad = await api.post(
        "/api/v1/namespaces/acme/webhook-secret/rotate", json=too_long, headers=ADMIN
    )
    error_of(bad, 422)


async def test_a_new_key_works_at_once_and_stops_working_when_revoked(api, acme):
    made = await api.post("/api/v1/namespaces/acme/keys", json={"description": "ci"}, headers=ADMIN)
    assert made.status_code == 201 and made.json()["namespace"] == "acme"
    key = {"Authorization": f"Bearer {made.json()['key']}"}
    assert (await api.get(JOBS, headers=key)).status_code == 200
    revoke = f"/api/v1/namespaces/acme/keys/{made.json()['keyId']}"
    assert (await api.delete(revoke, headers=ADMIN)).status_code == 204
    assert error_of(await api.get(JOBS, headers=key), 401)["code"] == "unauthorized"
    assert (await api.delete(revoke, headers=ADMIN)).status_code == 204
    assert (await api.get(JOBS, headers=acme)).status_code == 200  # other keys still work


async def test_revoking_a_key_of_another_namespace_or_an_unknown_key_is_404(api, acme, globex):
    made = (await api.post("/api/v1/namespaces/acme/keys", headers=ADMIN)).json()
    error_of(
        await api.delete(f"/api/v1/namespaces/globex/keys/{made['keyId']}", headers=ADMIN), 404
    )
    error_of(await api.delete("/api/v1/namespaces/acme/keys/nope", headers=ADMIN), 404)
    key = {"Authorization": f"Bearer {made['key']}"}
    assert (await api.get(JOBS, headers=key)).status_code == 200


async def test_a_key_for_a_missing_namespace_is_404(api):
    error_of(await api.post("/api/v1/namespaces/nobody/keys", headers=ADMIN), 404)


# -- auth and isolation ---------------------------------------------------------------------


@pytest.mark.parametrize(
    "headers",
    [
        {},
        {"Authorization": "Basic YWRtaW46YWRtaW4="},
        {"Authorization": "Bearer "},
        {"Authorization": "Bearer wrong"},
        {"Authorization": "Bearer aos_0123456789abcdef_forged"},
        {"Authorization": f"Digest {ADMIN_KEY}"},
    ],
    ids=["none", "basic", "empty", "wrong", "forged", "other-scheme"],
)
async def test_a_request_without_a_valid_key_is_401(api, acme, headers):
    for method, path in [("GET", JOBS), ("POST", JOBS), ("GET", "/api/v1/namespaces/acme")]:
        response = await api.request(method, path, json={}, headers=headers)
        assert error_of(response, 401)["code"] == "unauthorized"


async def test_the_bearer_scheme_is_case_insensitive(api, acme):
    key = acme["Authorization"].removeprefix("Bearer ")
    assert (await api.get(JOBS, headers={"Authorization": f"bearer {key}"})).status_code == 200


@pytest.mark.parametrize(
    ("method", "path", "body"),
    [
        ("POST", "/api/v1/namespaces", {"name": "mine"}),
        ("PATCH", "/api/v1/namespaces/acme", {"description": "x"}),
        ("POST", "/api/v1/namespaces/acme/webhook-secret/rotate", {}),
        ("POST", "/api/v1/namespaces/acme/keys", {}),
        ("DELETE", "/api/v1/namespaces/acme/keys/any", None),
    ],
)
async def test_a_tenant_key_cannot_use_the_admin_endpoints(api, acme, method, path, body):
    response = await api.request(method, path, json=body, headers=acme)
    assert error_of(response, 403)["code"] == "forbidden"


async def test_a_tenant_cannot_reach_another_namespace_by_name(api, acme, globex):
    await submit(api, globex, jobId="theirs")
    error_of(await api.get(f"{JOBS}/theirs?namespace=globex", headers=acme), 403)
    error_of(await api.get(f"{JOBS}?namespace=globex", headers=acme), 403)
    error_of(await api.get("/api/v1/namespaces/globex", headers=acme), 403)
    body = {"namespace": "globex", "jobId": "mine"}
    error_of(await api.post(JOBS, json=body, headers=acme), 403)


async def test_a_tenant_cannot_see_or_touch_another_namespaces_job(api, acme, globex):
    await submit(api, globex, jobId="theirs")
    await api.post(f"{JOBS}/theirs/output", content=b"secret", headers=globex)
    for method, path in [
        ("GET", ""),
        ("GET", "/status"),
        ("GET", "/output"),
        ("GET", "/output/raw"),
        ("GET", "/stream"),
        ("POST", "/cancel"),
        ("POST", "/output"),
        ("DELETE", ""),
    ]:
        response = await api.request(method, f"{JOBS}/theirs{path}", content=b"x", headers=acme)
        error_of(response, 404)
    assert (await api.get(JOBS, headers=acme)).json()["items"] == []
    assert (await api.get(f"{JOBS}/theirs", headers=globex)).json()["status"] == "Running"


async def test_the_admin_key_must_say_which_namespace(api, acme):
    await submit(api, acme, jobId="j1")
    error_of(await api.get(f"{JOBS}/j1", headers=ADMIN), 400)
    assert (await api.get(f"{JOBS}/j1?namespace=acme", headers=ADMIN)).status_code == 200


async def test_a_submit_naming_two_different_namespaces_is_400(api, acme, globex):
    body = {"namespace": "acme"}
    error_of(await api.post(f"{JOBS}?namespace=globex", json=body, headers=ADMIN), 400)


# -- error statuses -------------------------------------------------------------------------


@pytest.mark.parametrize(
    "body",
    [
        {"jobId": "a" * 129},
        {"jobId": "a" * 2000},
        {"metadata": {"title": "t" * 513}},
        {"metadata": {"tags": ["t"] * 33}},
        {"webhookUrl": "http://127.0.0.1/" + "a" * 2032},
        {"webhookEvents": ["job.completed"] * 17},
    ],
    ids=["job-id-129", "job-id-2000", "title", "tags", "webhook-url-2049", "event-count"],
)
async def test_a_submit_field_over_its_size_limit_is_413(api, acme, body):
    assert error_of(await api.post(JOBS, json=body, headers=acme), 413)["code"] == "too_large"


@pytest.mark.parametrize("length", [129, 2000])
async def test_a_job_id_over_the_limit_in_the_path_is_413(api, acme, length):
    error_of(await api.get(f"{JOBS}/{'a' * length}", headers=acme), 413)


async def test_a_job_id_of_exactly_128_characters_is_accepted(api, acme):
    job = await submit(api, acme, jobId="a" * 128)
    assert (await api.get(f"{JOBS}/{job['jobId']}", headers=acme)).status_code == 200


async def test_a_namespace_name_over_63_characters_is_413(api):
    body = {"name": "a" * 64}
    error_of(await api.post("/api/v1/namespaces", json=body, headers=ADMIN), 413)


async def test_an_append_over_the_limit_is_413_and_one_at_the_limit_is_kept_in_chunks(api, acme):
    await submit(api, acme, jobId="j1", outputFormat="binary")
    over = await api.post(f"{JOBS}/j1/output", content=b"x" * (MAX_APPEND_BYTES + 1), headers=acme)
    assert "at most 67108864 bytes" in error_of(over, 413)["message"]
    at = await api.post(f"{JOBS}/j1/output", content=b"y" * MAX_APPEND_BYTES, headers=acme)
    count = MAX_APPEND_BYTES // MAX_CHUNK_BYTES
    assert at.json() == {
        "seq": count,
        "offset": 0,
        "size": MAX_APPEND_BYTES,
        "chunks": count,
        "version": 1,
    }
    raw = await api.get(f"{JOBS}/j1/output/raw", headers=acme)
    assert raw.content == b"y" * MAX_APPEND_BYTES


async def test_an_output_too_big_to_inline_is_413_naming_the_limit_and_raw(
    store, local_shard
) -> None:
    shards = ShardClient(num_shards=1, shards=[local_shard].__getitem__, store=store)
    async with http(make_app(store, shards, max_inline_output_bytes=100)) as api:
        acme = await new_tenant(api, "acme")
        await submit(api, acme, jobId="j1")
        await api.post(f"{JOBS}/j1/output", content=b"x" * 100, headers=acme)
        assert (await api.get(f"{JOBS}/j1/output", headers=acme)).json()["size"] == 100
        await api.post(f"{JOBS}/j1/output", content=b"y", headers=acme)
        reads_before = store.reads
        message = error_of(await api.get(f"{JOBS}/j1/output", headers=acme), 413)["message"]
        assert "101 bytes" in message and "100 bytes" in message
        assert "/api/v1/jobs/j1/output/raw" in message
        assert store.reads == reads_before  # refused before reading any output


async def test_appends_past_the_replicas_budget_are_503_and_the_budget_comes_back(
    store, local_shard
):
    """Two appends of 64 MiB may be held at once; one past the budget is refused before it
    is read, and the budget is whole again once they end."""
    app = make_app(store, ShardClient(num_shards=1, shards=[local_shard].__getitem__))
    budget = app.state.deps.appends
    async with http(app) as api:
        acme = await new_tenant(api, "acme")
        await submit(api, acme, jobId="j1", outputFormat="binary")
        with budget.hold("a") as a, budget.hold("b") as b:
            a(budget.namespace_limit)
            b(budget.limit - budget.namespace_limit - 10)
            refused = await api.post(f"{JOBS}/j1/output", content=b"x" * 11, headers=acme)
            assert error_of(refused, 503)["code"] == "overloaded"
            assert refused.headers["retry-after"] in {"1", "2", "3"}  # spread per answer
            fits = await api.post(f"{JOBS}/j1/output", content=b"x" * 10, headers=acme)
            assert fits.is_success
        assert budget.held == 0
        assert (await api.post(f"{JOBS}/j1/output", content=b"y" * 11, headers=acme)).is_success


async def test_a_namespace_holds_at_most_its_share_and_never_starves_another(store, local_shard):
    app = make_app(store, ShardClient(num_shards=1, shards=[local_shard].__getitem__))
    budget = app.state.deps.appends
    async with http(app) as api:
        acme, globex = await new_tenant(api, "acme"), await new_tenant(api, "globex")
        for tenant in (acme, globex):
            await submit(api, tenant, jobId="j1", outputFormat="binary")
        with budget.hold("acme") as take:
            take(budget.namespace_limit - 5)
            refused = await api.post(f"{JOBS}/j1/output", content=b"x" * 6, headers=acme)
            assert error_of(refused, 503)["code"] == "overloaded"
            assert "for this namespace" in error_of(refused, 503)["message"]
            other = await api.post(f"{JOBS}/j1/output", content=b"x" * 6, headers=globex)
            assert other.is_success


async def test_a_body_that_stops_coming_holds_only_what_came_and_is_408(
    store, local_shard, monkeypatch
):
    """A client that declares 64 MiB and sends 3 bytes holds 3 bytes of the budget, not 64
    MiB, until no more of its body has come for `BODY_IDLE_S`: then 408, nothing kept."""
    monkeypatch.setattr(output_routes, "BODY_IDLE_S", 0.3)
    app = make_app(store, ShardClient(num_shards=1, shards=[local_shard].__getitem__))
    budget = app.state.deps.appends
    stalled = asyncio.Event()

    async def body() -> AsyncIterator[bytes]:
        yield b"abc"
        await stalled.wait()  # never set: the client sends nothing more
        yield b"d"

    async with http(app) as api:
        acme = await new_tenant(api, "acme")
        await submit(api, acme, jobId="j1", outputFormat="binary")
        headers = {**acme, "Content-Length": str(64 * 1024 * 1024)}
        sent = asyncio.create_task(api.post(f"{JOBS}/j1/output", content=body(), headers=headers))
        while budget.held == 0:
            await asyncio.sleep(0.01)
        assert budget.held == 3
        assert error_of(await sent, 408)["code"] == "request_timeout"
        assert budget.held == 0
        assert (await api.get(f"{JOBS}/j1", headers=acme)).json()["outputSize"] == 0


async def test_a_client_that_hangs_up_mid_body_is_no_error_and_writes_nothing(
    store, local_shard, caplog
):
    app = make_app(store, ShardClient(num_shards=1, shards=[local_shard].__getitem__))
    async with http(app) as api:
        acme = await new_tenant(api, "acme")
        await submit(api, acme, jobId="j1", outputFormat="binary")
    messages = iter(
        [
            {"type": "http.request", "body": b"abc", "more_body": True},
            {"type": "http.disconnect"},
        ]
    )
    sent: list[dict[str, Any]] = []

    async def receive() -> dict[str, Any]:
        return next(messages)

    async def send(message: dict[str, Any]) -> None:
        sent.append(message)

    headers = [(k.lower().encode(), v.encode()) for k, v in acme.items()]
    scope = {
        "type": "http",
        "asgi": {"version": "3.0"},
        "http_version": "1.1",
        "method": "POST",
        "scheme": "http",
        "path": f"{JOBS}/j1/output",
        "raw_path": f"{JOBS}/j1/output".encode(),
        "query_string": b"",
        "headers": [*headers, (b"content-length", b"10")],
        "client": ("127.0.0.1", 1),
        "server": ("t", 80),
    }
    with caplog.at_level("INFO"):
        await app(scope, receive, send)
    assert sent[0]["status"] == 499
    assert not [r for r in caplog.records if r.levelname == "ERROR"]
    assert app.state.deps.appends.held == 0
    assert await store.read_output("acme", "j1") == []


async def test_an_answer_that_escaping_would_make_too_big_is_413_and_answers_share_a_budget(
    store, local_shard
):
    """/output's 16 MiB is of output bytes; JSON writes a control character as six
    (`\\u0001`): such an answer past twice the limit is 413, and answers being built hold
    a budget of their own (503 past it)."""
    shards = ShardClient(num_shards=1, shards=[local_shard].__getitem__, store=store)
    app = make_app(store, shards, max_inline_output_bytes=100)
    async with http(app) as api:
        acme = await new_tenant(api, "acme")
        await submit(api, acme, jobId="j1")
        await api.post(f"{JOBS}/j1/output", content=b"\x01" * 34, headers=acme)  # 204 as JSON
        message = error_of(await api.get(f"{JOBS}/j1/output", headers=acme), 413)["message"]
        assert "204 bytes" in message and "/api/v1/jobs/j1/output/raw" in message
        await submit(api, acme, jobId="j2")
        await api.post(f"{JOBS}/j2/output", content=b"\x01" * 33, headers=acme)  # 198
        assert (await api.get(f"{JOBS}/j2/output", headers=acme)).json()["size"] == 33
        answers = app.state.deps.answers
        with answers.hold("acme") as take:
            take(answers.namespace_limit - 100)
            busy = await api.get(f"{JOBS}/j2/output", headers=acme)
            assert error_of(busy, 503)["code"] == "overloaded"
        assert answers.held == 0


async def test_an_append_over_the_chunk_size_is_cut_at_character_boundaries(store, local_shard):
    """Each chunk of a text append must be UTF-8 on its own: cuts never split a character."""
    shards = ShardClient(
        num_shards=1, shards=[local_shard].__getitem__, store=store, max_chunk_bytes=1024
    )
    async with http(make_app(store, shards)) as api:
        acme = await new_tenant(api, "acme")
        await submit(api, acme, jobId="j1")
        text = ("a€😀" * 1000).encode()  # characters of 1, 3 and 4 bytes
        ack = await api.post(f"{JOBS}/j1/output?seq=1", content=text, headers=acme)
        assert ack.json()["size"] == len(text) and ack.json()["chunks"] == ack.json()["seq"]
        chunks = await store.read_output("acme", "j1")
        assert all(len(c.data) <= 1024 for c in chunks) and len(chunks) == ack.json()["chunks"]
        assert all(c.data.decode() for c in chunks)  # each one decodes alone
        assert b"".join(c.data for c in chunks) == text
        again = await api.post(f"{JOBS}/j1/output?seq=1", content=text, headers=acme)
        assert again.json() == ack.json()  # a retried big append is acknowledged whole
        after = await api.post(f"{JOBS}/j1/output", content=b"!", headers=acme)
        assert after.json()["seq"] == ack.json()["seq"] + 1


async def test_a_big_append_with_one_bad_chunk_writes_none_of_it(store, local_shard):
    shards = ShardClient(
        num_shards=1, shards=[local_shard].__getitem__, store=store, max_chunk_bytes=1024
    )
    async with http(make_app(store, shards)) as api:
        acme = await new_tenant(api, "acme")
        await submit(api, acme, jobId="j1")
        body = b"x" * 3000 + b"\xff" + b"y" * 100  # the fourth chunk is not UTF-8
        error_of(await api.post(f"{JOBS}/j1/output", content=body, headers=acme), 422)
        assert await store.read_output("acme", "j1") == []
        job = (await api.get(f"{JOBS}/j1", headers=acme)).json()
        assert job["outputSize"] == 0


async def test_an_append_declared_over_the_limit_is_refused_before_its_body_is_read(api, acme):
    await submit(api, acme, jobId="j1")
    sent: list[bytes] = []

    async def body() -> AsyncIterator[bytes]:
        for part in (b"abc", b"def"):
            sent.append(part)
            yield part

    declared = {"Content-Length": str(MAX_APPEND_BYTES + 1)}
    response = await api.post(f"{JOBS}/j1/output", content=body(), headers=acme | declared)
    error_of(response, 413)
    assert sent == []


async def test_an_empty_output_chunk_is_422(api, acme):
    await submit(api, acme, jobId="j1")
    error_of(await api.post(f"{JOBS}/j1/output", content=b"", headers=acme), 422)


@pytest.mark.parametrize(
    "body",
    [
        {"jobId": "a/b"},
        {"jobId": "has space"},
        {"jobId": ""},
        {"jobId": 5},
        {"webhookEvents": ["job.finished"]},
        {"webhookUrl": "ftp://127.0.0.1/x"},
        {"outputFormat": "xml"},
        {"retentionPolicy": {"ttl": "soon"}},
        {"metadata": {"owner": "me"}},
        {"surprise": True},
    ],
    ids=[
        "job-id-slash",
        "job-id-space",
        "job-id-empty",
        "job-id-type",
        "unknown-event",
        "webhook-scheme",
        "format",
        "ttl",
        "metadata-field",
        "unknown-field",
    ],
)
async def test_a_submit_of_the_wrong_shape_is_422(api, acme, body):
    assert error_of(await api.post(JOBS, json=body, headers=acme), 422)["code"] == "invalid"


async def test_a_job_id_with_a_trailing_newline_is_422(api, acme):
    error_of(await api.post(JOBS, json={"jobId": "j1\n"}, headers=acme), 422)


@pytest.mark.parametrize(
    "body", [{"progress": 150}, {"progress": -1}, {"progress": "half"}, {}], ids=str
)
async def test_a_progress_update_of_the_wrong_shape_is_422(api, acme, body):
    await submit(api, acme, jobId="j1")
    error_of(await api.patch(f"{JOBS}/j1", json=body, headers=acme), 422)


@pytest.mark.parametrize("status", ["Cancelled", "Running", "succeeded"])
async def test_complete_with_a_status_other_than_succeeded_or_failed_is_422(api, acme, status):
    await submit(api, acme, jobId="j1")
    error_of(await api.post(f"{JOBS}/j1/complete", json={"status": status}, headers=acme), 422)
    assert (await api.get(f"{JOBS}/j1", headers=acme)).json()["status"] == "Running"


@pytest.mark.parametrize("name", ["Acme", "acme_corp", "-acme", "a.b", ""])
async def test_a_namespace_name_of_the_wrong_characters_is_422(api, name):
    error_of(await api.post("/api/v1/namespaces", json={"name": name}, headers=ADMIN), 422)


async def test_a_bad_namespace_in_the_query_is_422(api):
    error_of(await api.get(f"{JOBS}/j1?namespace=Not_Valid", headers=ADMIN), 422)


async def test_a_bad_job_id_in_the_path_is_422(api, acme):
    error_of(await api.get(f"{JOBS}/.hidden", headers=acme), 422)


@pytest.mark.parametrize(
    ("method", "path"),
    [
        ("POST", JOBS),
        ("PATCH", f"{JOBS}/j1"),
        ("POST", f"{JOBS}/j1/complete"),
        ("POST", "/api/v1/namespaces"),
    ],
)
async def test_malformed_json_is_400(api, acme, method, path):
    await submit(api, acme, jobId="j1")
    headers = ADMIN if "namespaces" in path else acme
    response = await api.request(
        method, path, content=b'{"jobId": ', headers=headers | {"Content-Type": "application/json"}
    )
    assert error_of(response, 400)["code"] == "bad_request"


async def test_an_unknown_route_is_a_json_404(api):
    assert error_of(await api.get("/api/v1/nothing", headers=ADMIN), 404)["code"] == "not_found"


# -- availability ---------------------------------------------------------------------------


async def test_health_and_readiness_answer_when_the_shard_does(api):
    assert (await api.get("/healthz")).json() == {"status": "ok"}
    ready = await api.get("/readyz")
    assert ready.status_code == 200 and ready.json() == {"status": "ready"}


async def test_an_unavailable_shard_is_503_with_retry_after_and_not_ready(store):
    shards = ShardClient(num_shards=1, shards=lambda slot: Restarting())
    async with http(make_app(store, shards)) as api:
        for method, path, body in [
            ("GET", f"{JOBS}/j1?namespace=acme", None),
            ("POST", f"{JOBS}?namespace=acme", {"jobId": "j1"}),
            ("GET", f"{JOBS}/j1/stream?namespace=acme", None),
            ("GET", "/api/v1/namespaces/acme", None),
        ]:
            response = await api.request(method, path, json=body, headers=ADMIN)
            assert error_of(response, 503)["code"] == "shard_unavailable"
            assert response.headers["retry-after"] == "2"
        ready = await api.get("/readyz")
        assert ready.status_code == 503 and ready.json()["status"] == "unavailable"
        assert "shard_unavailable" in ready.json()["detail"]
        assert ready.headers["retry-after"] == "1"  # HAProxy passes it on as it is
        assert (await api.get("/healthz")).status_code == 200


async def test_a_body_that_is_not_utf8_json_is_a_400_bad_request(api, acme):
    # Starlette refuses it before validation ("error parsing the body"): same code as bad JSON.
    headers = acme | {"Content-Type": "application/json"}
    response = await api.post(JOBS, content=b'{"jobId": "\xff\xfe"}', headers=headers)
    assert error_of(response, 400)["code"] == "bad_request"
