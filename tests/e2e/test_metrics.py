"""Metrics end to end: after real requests, Ray's metrics export (the session cluster's
metrics port) serves ours, with bounded labels and the values the requests made."""

from __future__ import annotations

import uuid
from collections.abc import Iterable

import httpx
import pytest
from prometheus_client.parser import text_string_to_metric_families
from prometheus_client.samples import Sample

from cluster import ray_connect
from cluster.settings import Settings
from tests.e2e.conftest import Tenant
from tests.e2e.receiver import Receiver
from tests.e2e.waiting import wait_until

pytestmark = pytest.mark.e2e

JOB_ROUTE = "/api/v1/jobs/{job_id}"
#: Ray exports every second here (tests/e2e/conftest.py); this bounds a hang, not a speed.
EXPORT_TIMEOUT_S = 60


def scrape(endpoint: str) -> list[Sample]:
    """Every sample of ours (`ray_aos_*`) the endpoint serves now."""
    text = httpx.get(f"http://{endpoint}/metrics", timeout=10).text
    return [
        sample
        for family in text_string_to_metric_families(text)
        if family.name.startswith("ray_aos_")
        for sample in family.samples
    ]


def total(samples: Iterable[Sample], name: str, **labels: str) -> float:
    """The sum of `name` over every series (replica, worker) with `labels`."""
    return sum(
        s.value
        for s in samples
        if s.name == name and all(s.labels.get(k) == v for k, v in labels.items())
    )


def test_our_metrics_are_exported_with_route_templates_and_the_values_requests_made(
    service, settings: Settings, tenant: Tenant, receiver: Receiver
) -> None:
    job_id = f"metrics-{uuid.uuid4().hex[:8]}"
    http = tenant.http
    submitted = http.post(
        "/api/v1/jobs", json={"jobId": job_id, "webhookUrl": receiver.url + "/hook"}
    )
    assert submitted.status_code == 201, submitted.text
    assert http.post(f"/api/v1/jobs/{job_id}/output", content=b"line\n").status_code == 200
    assert http.get(f"/api/v1/jobs/{job_id}-missing").status_code == 404
    done = http.post(f"/api/v1/jobs/{job_id}/complete", json={"status": "Succeeded"})
    assert done.status_code == 200, done.text
    receiver.wait_for("/hook", 1)

    [endpoint] = ray_connect.metrics_endpoints()  # one node; on the port the settings name
    assert endpoint.endswith(f":{settings.metrics_port}")
    streamed = f"{job_id}-streamed"
    assert http.post("/api/v1/jobs", json={"jobId": streamed}).status_code == 201
    with http.stream("GET", f"/api/v1/jobs/{streamed}/stream") as stream:  # open while scraped
        assert stream.status_code == 200
        _scraped_while_a_stream_is_open(endpoint, settings, tenant, job_id)


def _scraped_while_a_stream_is_open(
    endpoint: str, settings: Settings, tenant: Tenant, job_id: str
) -> None:

    def exported() -> list[Sample] | None:
        samples = scrape(endpoint)
        wanted = [
            total(
                samples,
                "ray_aos_http_requests_total",
                method="POST",
                route="/api/v1/jobs",
                status="201",
            ),
            total(
                samples,
                "ray_aos_http_requests_total",
                method="POST",
                route=JOB_ROUTE + "/output",
                status="200",
            ),
            total(
                samples, "ray_aos_http_requests_total", method="GET", route=JOB_ROUTE, status="404"
            ),
            total(
                samples,
                "ray_aos_http_request_duration_seconds_count",
                method="POST",
                route="/api/v1/jobs",
            ),
            total(samples, "ray_aos_commit_batch_size_count"),
            total(samples, "ray_aos_commit_duration_seconds_count"),
            total(samples, "ray_aos_webhook_deliveries_total", outcome="delivered"),
            total(samples, "ray_aos_jobs_total", event="created"),
            total(samples, "ray_aos_jobs_total", event="succeeded"),
            # The stream the test holds open.
            total(samples, "ray_aos_http_open_streams", route=JOB_ROUTE + "/stream"),
        ]
        return samples if all(value >= 1 for value in wanted) else None

    samples = wait_until(
        exported,
        timeout_s=EXPORT_TIMEOUT_S,
        what="our metrics in Ray's export",
        state=lambda: sorted({s.name for s in scrape(endpoint)}),
        interval_s=0.5,
    )
    # Pending writes and outbox depth: one gauge per shard slot, sampled by the shard.
    for gauge in ("ray_aos_shard_pending_writes", "ray_aos_shard_outbox_depth"):
        slots = {s.labels["slot"] for s in samples if s.name == gauge}
        assert slots == {str(slot) for slot in range(settings.num_shards)}, (gauge, slots)
    # Bounded labels: no job id, no namespace, anywhere.
    for sample in samples:
        for value in sample.labels.values():
            assert job_id not in value and tenant.namespace not in value, sample
