"""The issue's probes of hostile input, end to end: real Serve, real shard actors, SQLite.

Each gets a 4xx JSON answer over a real HTTP connection (a 500 or a dropped connection
fails), and nothing it sends fails another tenant's writes or breaks a later read.
"""

from __future__ import annotations

import base64
import uuid
from concurrent.futures import ThreadPoolExecutor

import httpx
import pytest

from actors.routing import shard_for
from tests.e2e.conftest import Tenant

pytestmark = pytest.mark.e2e
JOBS = "/api/v1/jobs"
RAW_JSON = {"Content-Type": "application/json"}


def error_of(response: httpx.Response, status: int) -> str:
    assert response.status_code == status, response.text
    body = response.json()
    assert set(body) == {"error"} and set(body["error"]) == {"code", "message"}
    return str(body["error"]["message"])


def namespace_on(slot: int, num_shards: int = 2) -> str:
    """A fresh namespace name that the shard in `slot` owns."""
    while True:
        name = f"h-{uuid.uuid4().hex[:10]}"
        if shard_for(name, num_shards) == slot:
            return name


def new_tenant(service, admin: httpx.Client, name: str) -> httpx.Client:
    assert admin.post("/api/v1/namespaces", json={"name": name}).status_code == 201
    key = admin.post(f"/api/v1/namespaces/{name}/keys").json()["key"]
    return httpx.Client(base_url=service.url, headers={"Authorization": f"Bearer {key}"})


def test_a_lone_surrogate_is_refused_and_never_fails_another_namespaces_writes(service, admin):
    """The probe: 171 writes of one namespace while another, on the same shard, sends
    `{"metadata": {"title": "\\ud800"}}` again and again. Before: 71 of them got 503 with
    the attacker's text."""
    victim = new_tenant(service, admin, namespace_on(0))
    attacker = new_tenant(service, admin, namespace_on(0))
    attack = b'{"metadata": {"title": "\\ud800"}}'

    def attacked(_: int) -> httpx.Response:
        return attacker.post(JOBS, content=attack, headers=RAW_JSON)

    def written(i: int) -> httpx.Response:
        return victim.post(JOBS, json={"jobId": f"v{i}", "metadata": {"title": "fine"}})

    with victim, attacker, ThreadPoolExecutor(16) as pool:
        attacks = pool.map(attacked, range(40))
        writes = list(pool.map(written, range(171)))
        assert all(a.status_code == 422 for a in attacks)
        assert [w.status_code for w in writes] == [201] * 171
        assert not any("ud800" in w.text or "\ud800" in w.text for w in writes)
        listed = victim.get(JOBS, params={"limit": 1000}).json()["items"]
        assert len(listed) == 171
        assert attacker.get(JOBS).json()["items"] == []


def test_a_time_iso_8601_cannot_write_is_refused_and_every_read_still_answers(tenant: Tenant):
    assert tenant.http.post(JOBS, json={"jobId": "j1"}).status_code == 201
    for when in ("9999-12-31T23:59:59-23:59", "0001-01-01T00:00:00+14:00"):
        error_of(tenant.http.patch(f"{JOBS}/j1", json={"estimatedCompletion": when}), 422)
        error_of(tenant.http.get(JOBS, params={"createdBefore": when}), 422)
    assert tenant.http.post(f"{JOBS}/j1/complete", json={"status": "Succeeded"}).status_code == 200
    for path in (f"{JOBS}/j1", f"{JOBS}/j1/status", JOBS, f"{JOBS}/j1/stream"):
        read = tenant.http.get(path)
        assert read.status_code == 200, read.text
    assert tenant.http.get(f"{JOBS}/j1/status").json()["estimatedCompletion"] is None


def test_odd_ids_cursors_and_headers_get_a_json_4xx_over_a_live_connection(tenant: Tenant):
    http = tenant.http
    error_of(http.post(JOBS, json={"jobId": "x\n"}), 422)  # before: stored, then no answer
    error_of(http.post("/api/v1/namespaces", json={"name": "ns\n"}), 403)  # needs the admin
    assert http.post(JOBS, json={"jobId": "j1"}).status_code == 201
    for crafted in ("[" * 300 + "]" * 300, "9" * 400, '["nan", "x"]', "[1, null]"):
        cursor = base64.urlsafe_b64encode(crafted.encode()).decode().rstrip("=")
        error_of(http.get(JOBS, params={"cursor": cursor}), 400)
    for value in ("²".encode(), b"1" * 5000):
        error_of(http.get(f"{JOBS}/j1/stream", headers={"Last-Event-ID": value}), 422)
        tagged = http.get(f"{JOBS}/j1/status", headers={"If-None-Match": value})
        assert tagged.status_code == 200 and tagged.json()["jobId"] == "j1"
    error_of(http.post(JOBS, json={"retentionPolicy": {"ttl": "9" * 5000 + "s"}}), 422)
    for url in ("http://a..com/", f"http://{'a' * 70}.com/"):
        error_of(http.post(JOBS, json={"webhookUrl": url}), 422)
    put = http.put(f"{JOBS}/j1")
    error_of(put, 405)
    assert put.headers["allow"] == "GET, PATCH, DELETE"
    assert http.get(f"{JOBS}/j1/status").status_code == 200  # the connection still serves


def test_a_namespace_name_ending_in_a_newline_is_refused(admin: httpx.Client):
    error_of(admin.post("/api/v1/namespaces", json={"name": "ns\n"}), 422)
