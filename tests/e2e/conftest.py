"""End-to-end fixtures: one real Ray cluster and one deployed service for the whole session."""

from __future__ import annotations

import time
import uuid
from collections.abc import Callable, Iterator
from dataclasses import dataclass

import httpx
import pytest
import ray

from cluster import bootstrap, ray_connect
from cluster.settings import Settings
from tests.conftest import free_port
from tests.e2e import soak
from tests.e2e.receiver import Receiver, running_receiver

ADMIN_KEY = "e2e-admin-key"
METRICS_REPORT_INTERVAL_MS = 1000


@pytest.fixture(scope="session")
def settings(tmp_path_factory: pytest.TempPathFactory) -> Settings:
    """The session service's settings: the defaults (HAProxy ingress), free ports."""
    data = tmp_path_factory.mktemp("aos")
    return Settings(
        storage_url=f"sqlite:///{data}/aos.db",
        http_port=free_port(),
        haproxy_stats_port=free_port(),
        haproxy_metrics_port=free_port(),
        fallback_proxy_port=free_port(),
        metrics_port=free_port(),
        admin_key=ADMIN_KEY,
        num_shards=2,
        heartbeat_s=1.0,
        webhook_allowed_networks="127.0.0.0/8",
        webhook_coalesce_s=1.0,
        # Expired jobs go within a fraction of a second (tests/e2e/test_retention.py).
        retention_sweep_interval_s=0.2,
    )


@pytest.fixture(scope="session")
def service(settings: Settings) -> Iterator[bootstrap.Service]:
    ray_connect.connect(
        None,
        num_cpus=2,
        metrics_port=settings.metrics_port,
        # Metrics reach the export within a second, not ten (tests/e2e/test_metrics.py).
        _system_config={"metrics_report_interval_ms": METRICS_REPORT_INTERVAL_MS},
    )
    svc = bootstrap.start(settings)
    global _soak
    _soak = soak.start(svc.url, ADMIN_KEY, max_wait_s=settings.max_wait_s)
    yield svc
    _soak.stop.set()
    bootstrap.stop(svc)
    ray.shutdown()


_soak: soak.Soak | None = None


@pytest.fixture
def held(service: bootstrap.Service) -> soak.Soak:
    """The stream and long-polls opened when the session's service started (tests/e2e/soak.py)."""
    assert _soak is not None
    return _soak


@pytest.fixture
def admin(service: bootstrap.Service) -> Iterator[httpx.Client]:
    with httpx.Client(
        base_url=service.url, headers={"Authorization": f"Bearer {ADMIN_KEY}"}, timeout=30
    ) as client:
        yield client


@dataclass
class Tenant:
    namespace: str
    key: str
    http: httpx.Client
    webhook_secret: str


@pytest.fixture
def tenant(service: bootstrap.Service, admin: httpx.Client) -> Iterator[Tenant]:
    """A fresh namespace and a client holding its own key."""
    yield from _tenant(service, admin)


@pytest.fixture
def other_tenant(service: bootstrap.Service, admin: httpx.Client) -> Iterator[Tenant]:
    yield from _tenant(service, admin)


def _tenant(service: bootstrap.Service, admin: httpx.Client) -> Iterator[Tenant]:
    name = f"t-{uuid.uuid4().hex[:12]}"
    created = _created(lambda: admin.post("/api/v1/namespaces", json={"name": name}))
    key = admin.post(f"/api/v1/namespaces/{name}/keys").json()["key"]
    with httpx.Client(
        base_url=service.url, headers={"Authorization": f"Bearer {key}"}, timeout=30
    ) as http:
        yield Tenant(name, key, http, created.json()["webhookSecret"])


def _created(create: Callable[[], httpx.Response]) -> httpx.Response:
    """`create`'s 201, asked again after each 503 as a client does (an earlier test may have
    killed the shard that owns the name: it is back within seconds), for up to 60 s."""
    deadline = time.monotonic() + 60
    while (response := create()).status_code == 503 and time.monotonic() < deadline:
        time.sleep(float(response.headers.get("retry-after", "1")))
    assert response.status_code == 201, response.text
    return response


@pytest.fixture
def receiver() -> Iterator[Receiver]:
    with running_receiver() as receiver:
        yield receiver
