"""Retention end to end: real Ray, real HTTP, real SQLite. An expired job goes, with its output
and deliveries, and the audit log says so; running jobs and jobs without a TTL stay.

The session's shards sweep every 0.2 s (tests/e2e/conftest.py)."""

from __future__ import annotations

import json
import sqlite3
import time
from contextlib import closing
from datetime import datetime
from typing import Any

import pytest

from cluster.settings import Settings
from tests.e2e.conftest import Tenant
from tests.e2e.receiver import Receiver
from tests.e2e.waiting import wait_until

pytestmark = pytest.mark.e2e
JOBS = "/api/v1/jobs"
#: An expired job is gone within a few sweeps (0.2 s each) of its expiry.
GONE_WITHIN_S = 10.0
#: TTLs here are 2 s, not the smallest (1 s): a test reads the job back after completing
#: it, which on a loaded machine could come too late for a job of 1 s.


def _finished(tenant: Tenant, job_id: str, **submit: Any) -> dict[str, Any]:
    assert tenant.http.post(JOBS, json={"jobId": job_id, **submit}).status_code == 201
    assert tenant.http.post(f"{JOBS}/{job_id}/output", content=b"some output").status_code == 200
    done = tenant.http.post(f"{JOBS}/{job_id}/complete", json={"status": "Succeeded"})
    assert done.status_code == 200, done.text
    record = tenant.http.get(f"{JOBS}/{job_id}").json()
    assert record["status"] == "Succeeded"
    return record


def _seconds(iso: str) -> float:
    return datetime.fromisoformat(iso).timestamp()


def _gone(tenant: Tenant, job_id: str) -> bool:
    return tenant.http.get(f"{JOBS}/{job_id}").status_code == 404


def _rows(settings: Settings, sql: str, *params: Any) -> list[tuple[Any, ...]]:
    """Read the service's SQLite file directly: the audit log has no endpoint."""
    path = settings.storage_url.removeprefix("sqlite:///")
    with closing(sqlite3.connect(path, timeout=30)) as conn:
        return conn.execute(sql, params).fetchall()


def test_an_expired_job_goes_with_its_output_and_deliveries_and_is_audited(
    tenant: Tenant, receiver: Receiver, settings: Settings
) -> None:
    hook = receiver.url + "/brief"
    record = _finished(tenant, "brief", retentionPolicy={"ttl": "2s"}, webhookUrl=hook)
    assert record["retentionPolicy"] == {"ttl": 2}
    expires = _seconds(record["expiresAt"])
    assert expires == pytest.approx(_seconds(record["completedAt"]) + 2, abs=0.002)
    receiver.wait_for("/brief", 1)  # its job.completed delivery, a stored row, went out

    wait_until(lambda: _gone(tenant, "brief"), timeout_s=GONE_WITHIN_S, what="the job to expire")
    gone_after_s = time.time() - expires
    for path in ("", "/output", "/output/raw", "/webhooks", "/status"):
        response = tenant.http.get(f"{JOBS}/brief{path}")
        assert response.status_code == 404, (path, response.text)
        assert response.json()["error"]["code"] == "not_found"
    where = (tenant.namespace, "brief")
    for table in ("output_chunks", "output_versions", "webhook_deliveries"):
        sql = f"SELECT count(*) FROM {table} WHERE namespace = ? AND job_id = ?"
        assert _rows(settings, sql, *where) == [(0,)], table
    audit = _rows(
        settings,
        "SELECT actor, action, detail, at FROM audit_log WHERE namespace = ? AND target = ?"
        " AND action = 'job.delete'",
        *where,
    )
    [(actor, action, detail, at)] = audit
    assert (actor, action, json.loads(detail)) == (
        "retention",
        "job.delete",
        {"expiresAt": record["expiresAt"]},
    )
    assert expires <= at < expires + GONE_WITHIN_S
    print(f"\nexpired job gone {gone_after_s:.2f} s after its expiresAt")


def test_the_namespace_default_expires_jobs_without_their_own_ttl(
    tenant: Tenant, admin: Any
) -> None:
    patched = admin.patch(f"/api/v1/namespaces/{tenant.namespace}", json={"retention": {"ttl": 2}})
    assert patched.json()["retention"] == {"ttlS": 2}
    record = _finished(tenant, "defaulted")
    assert record["retentionPolicy"] is None
    assert _seconds(record["expiresAt"]) == pytest.approx(_seconds(record["completedAt"]) + 2)
    wait_until(lambda: _gone(tenant, "defaulted"), timeout_s=GONE_WITHIN_S, what="expiry")


def test_running_jobs_and_jobs_without_any_ttl_stay(tenant: Tenant, other_tenant: Tenant) -> None:
    running = {"jobId": "running", "retentionPolicy": {"ttl": 1}}
    assert tenant.http.post(JOBS, json=running).status_code == 201
    kept = _finished(other_tenant, "kept")
    assert kept["expiresAt"] is None
    # A job that expires soon marks a time by which sweeps have passed over the others; by
    # then "running" was created over 1 s ago, which a TTL counted from creation would end.
    _finished(tenant, "marker", retentionPolicy={"ttl": 2})
    wait_until(lambda: _gone(tenant, "marker"), timeout_s=GONE_WITHIN_S, what="the marker")
    running = tenant.http.get(f"{JOBS}/running").json()
    assert (running["status"], running["expiresAt"]) == ("Running", None)
    assert other_tenant.http.get(f"{JOBS}/kept").json()["status"] == "Succeeded"
    output = other_tenant.http.get(f"{JOBS}/kept/output/raw")
    assert output.content == b"some output"
