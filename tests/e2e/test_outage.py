"""The database goes away under load, and a shard is killed: `aos serve` on a PostgreSQL the
test starts and stops itself, producers writing throughout (tests/history.py). Every answer is
a 2xx for a durable write or a 503 with `Retry-After`, never a 500 or a hang; the service
writes again by itself once the database is back; nothing acknowledged is lost or doubled."""

from __future__ import annotations

import time
from collections.abc import Iterator

import httpx
import pytest

from tests.e2e.pg_service import PgService, pg_service, shard_killer
from tests.history import check_history

pytestmark = pytest.mark.e2e

#: How long the database stays down: several store timeouts' worth of writes refused.
DOWN_S = 6.0


@pytest.fixture(scope="module")
def service() -> Iterator[PgService]:
    with pg_service() as started:
        yield started


def test_a_database_stopped_mid_write_answers_503_then_recovers_without_a_restart(
    service: PgService,
) -> None:
    marks: dict[str, float] = {}
    key = _namespace_key(service)
    keyed: list[tuple[int, str | None, float]] = []

    def outage() -> None:
        marks["stop"] = time.monotonic()
        service.pg.stop("immediate")
        time.sleep(1.5)  # past the ingress's key cache (1 s): the key is looked up again
        keyed.extend(_submits_with(service, key, 3))
        time.sleep(max(0.0, marks["stop"] + DOWN_S - time.monotonic()))
        service.pg.start()
        marks["start"] = time.monotonic()

    report = check_history(
        service.url, service.admin_key, duration_s=DOWN_S + 12, fault=outage, fault_at_s=4
    )
    print(report.summary())
    stopped, started = (marks[k] - report.started for k in ("stop", "start"))
    first_503 = report.first(stopped, ok=False)
    first_2xx = report.first(started, ok=True)
    print(
        f"stop -> first 503: {_s(first_503, stopped)}; "
        f"restart -> first 2xx: {_s(first_2xx, started)}"
    )
    print("namespace-key submits during the outage (status, Retry-After, seconds):", keyed)
    assert report.ok, report.summary()
    assert all(status == 503 and retry for status, retry, _ in keyed), keyed
    assert report.codes["503 store_unavailable"] > 0, "the outage was never seen"
    assert set(report.codes) <= {"503 store_unavailable"}, report.codes
    assert first_2xx is not None, "no write succeeded after the database came back"
    assert report.acked["append"] > 0 and not report.unknown, report.summary()
    _writes_now(service)


def _namespace_key(service: PgService) -> str:
    headers = {"Authorization": f"Bearer {service.admin_key}"}
    with httpx.Client(base_url=service.url, headers=headers, timeout=30) as http:
        made = http.post("/api/v1/namespaces/default/keys", json={})
        assert made.status_code == 201, made.text
        return str(made.json()["key"])


def _submits_with(service: PgService, key: str, count: int) -> list[tuple[int, str | None, float]]:
    """`count` submits with a namespace key, one after another: each one's status,
    `Retry-After` and seconds taken."""
    answers = []
    headers = {"Authorization": f"Bearer {key}"}
    with httpx.Client(base_url=service.url, headers=headers, timeout=60) as http:
        for _ in range(count):
            started = time.monotonic()
            answer = http.post("/api/v1/jobs", json={})
            took = round(time.monotonic() - started, 2)
            answers.append((answer.status_code, answer.headers.get("Retry-After"), took))
    return answers


def _writes_now(service: PgService) -> None:
    """A new job and an append, answered 2xx at the first attempt: the service is whole."""
    headers = {"Authorization": f"Bearer {service.admin_key}"}
    with httpx.Client(base_url=service.url, headers=headers, timeout=30) as http:
        params = {"namespace": "default"}
        job = http.post("/api/v1/jobs", params=params, json={"jobId": f"after-{time.time()}"})
        assert job.status_code == 201, job.text
        path = f"/api/v1/jobs/{job.json()['jobId']}/output"
        assert http.post(path, params={**params, "seq": "1"}, content=b"ok").status_code == 200


def _s(at: float | None, since: float) -> str:
    return "never" if at is None else f"{at - since:.2f} s"


def test_the_history_through_killed_shards_and_a_database_crash_is_exactly_what_was_acked(
    service: PgService,
) -> None:
    before = service.epochs()
    with shard_killer(service.ray_address) as killer:

        def faults() -> None:
            killer.kill(0)  # Ray restarts it: a new epoch, its jobs reloaded
            time.sleep(2)
            service.pg.restart("immediate")  # a crash: PostgreSQL replays its WAL
            time.sleep(2)
            killer.kill(1)

        report = check_history(
            service.url, service.admin_key, duration_s=14, fault=faults, fault_at_s=2
        )
    print(report.summary())
    assert report.ok, report.summary()
    assert report.acked["submit"] > 0 and report.acked["append"] > 0
    assert not report.lost and not report.duplicated and not report.gaps
    allowed = {"503 store_unavailable", "503 shard_unavailable"}
    assert set(report.codes) <= allowed, report.codes
    after = service.epochs()
    assert all(after[slot] > before[slot] for slot in (0, 1)), (before, after)
