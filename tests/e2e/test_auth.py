"""Keys and namespaces: 401 without a key, 403 outside its namespace, no leaks between tenants."""

from __future__ import annotations

import time

import httpx
import pytest

from tests.e2e.waiting import wait_until

pytestmark = pytest.mark.e2e


def test_every_api_endpoint_needs_a_key(service):
    for path in ("/api/v1/jobs", "/api/v1/jobs/x/status", "/api/v1/namespaces/default"):
        r = httpx.get(service.url + path)
        assert r.status_code == 401 and r.json()["error"]["code"] == "unauthorized"
    bad = httpx.get(service.url + "/api/v1/jobs", headers={"Authorization": "Bearer aos_x_y"})
    assert bad.status_code == 401


def test_two_namespaces_never_see_each_others_jobs(tenant, other_tenant):
    # The job and its output must exist, or every "cannot see it" below would hold vacuously.
    assert tenant.http.post("/api/v1/jobs", json={"jobId": "shared-name"}).status_code == 201
    secret = tenant.http.post("/api/v1/jobs/shared-name/output", content=b"tenant secret")
    assert secret.status_code == 200
    assert other_tenant.http.get("/api/v1/jobs/shared-name").status_code == 404
    assert other_tenant.http.get("/api/v1/jobs").json()["items"] == []
    # The same id in the other namespace is a different job.
    assert other_tenant.http.post("/api/v1/jobs", json={"jobId": "shared-name"}).status_code == 201
    assert other_tenant.http.get("/api/v1/jobs/shared-name/output").json()["output"] == ""
    # Naming the other namespace explicitly is forbidden, not a leak.
    foreign = other_tenant.http.get(
        "/api/v1/jobs/shared-name/output", params={"namespace": tenant.namespace}
    )
    assert foreign.status_code == 403
    smuggled = other_tenant.http.post(
        "/api/v1/jobs", json={"namespace": tenant.namespace, "jobId": "evil"}
    )
    assert smuggled.status_code == 403


def test_admin_manages_namespaces_and_keys(admin, tenant):
    assert admin.post("/api/v1/namespaces", json={"name": tenant.namespace}).status_code == 409
    assert admin.post("/api/v1/namespaces", json={"name": "Bad Name"}).status_code == 422
    got = admin.get(f"/api/v1/namespaces/{tenant.namespace}").json()
    assert got["name"] == tenant.namespace
    patched = admin.patch(
        f"/api/v1/namespaces/{tenant.namespace}",
        json={"description": "team A", "retention": {"ttl": "30d"}},
    ).json()
    assert patched["description"] == "team A" and patched["retention"] == {"ttlS": 2592000}
    assert admin.get("/api/v1/namespaces/does-not-exist").status_code == 404


def test_a_namespace_key_cannot_do_admin_work(tenant):
    assert tenant.http.post("/api/v1/namespaces", json={"name": "mine"}).status_code == 403
    assert tenant.http.post(f"/api/v1/namespaces/{tenant.namespace}/keys").status_code == 403
    assert tenant.http.get(f"/api/v1/namespaces/{tenant.namespace}").status_code == 200
    assert tenant.http.get("/api/v1/namespaces/default").status_code == 403


def test_a_new_key_is_shown_once_and_a_revoked_key_stops_working(service, admin, tenant):
    created = admin.post(f"/api/v1/namespaces/{tenant.namespace}/keys").json()
    headers = {"Authorization": f"Bearer {created['key']}"}
    assert httpx.get(service.url + "/api/v1/jobs", headers=headers).status_code == 200
    revoke = admin.delete(f"/api/v1/namespaces/{tenant.namespace}/keys/{created['keyId']}")
    assert revoke.status_code == 204
    # At once on the replica that revoked it, within the key cache's 1 s on the others.
    revoked_at = time.monotonic()
    wait_until(
        lambda: httpx.get(service.url + "/api/v1/jobs", headers=headers).status_code == 401,
        timeout_s=5,
        what="the revoked key to be refused",
    )
    time.sleep(max(0.0, revoked_at + 1.5 - time.monotonic()))
    answers = [httpx.get(service.url + "/api/v1/jobs", headers=headers) for _ in range(10)]
    assert [a.status_code for a in answers] == [401] * 10  # every replica, every time


def test_the_admin_key_must_name_a_namespace_on_seed_paths(admin, tenant):
    assert admin.get("/api/v1/jobs").status_code == 400
    assert admin.get("/api/v1/jobs", params={"namespace": tenant.namespace}).status_code == 200


def test_default_namespace_exists_after_start(admin):
    assert admin.get("/api/v1/namespaces/default").status_code == 200
