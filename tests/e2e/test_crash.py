"""`kill -9` of the whole service (driver, Ray, actors, replicas): acknowledged writes survive."""

from __future__ import annotations

from collections.abc import Iterable

import httpx
import pytest

from tests.conftest import free_port
from tests.e2e import served
from tests.e2e.receiver import Received, running_receiver
from tests.e2e.waiting import wait_until

pytestmark = pytest.mark.e2e
ADMIN = {"Authorization": f"Bearer {served.ADMIN_KEY}"}


def test_acknowledged_append_survives_kill_9_of_the_whole_service(tmp_path):
    port = free_port()
    proc = served.start(f"sqlite:///{tmp_path}/aos.db", port)
    url = f"http://127.0.0.1:{port}"
    try:
        with httpx.Client(base_url=url, headers=ADMIN, timeout=30) as http:
            params = {"namespace": "default"}
            assert http.post("/api/v1/jobs", params=params, json={"jobId": "j"}).status_code == 201
            acked = []
            for i in range(50):
                r = http.post("/api/v1/jobs/j/output", params=params, content=f"{i},")
                assert r.status_code == 200
                acked.append(f"{i},")
    finally:
        served.kill_all(proc)

    proc = served.start(f"sqlite:///{tmp_path}/aos.db", port)
    try:
        with httpx.Client(base_url=url, headers=ADMIN, timeout=30) as http:
            params = {"namespace": "default"}
            out = http.get("/api/v1/jobs/j/output", params=params).json()
            assert out["output"] == "".join(acked)
            status = http.get("/api/v1/jobs/j/status", params=params).json()
            assert status["status"] == "Running" and status["outputSeq"] == 50
            more = http.post("/api/v1/jobs/j/output", params=params, content="50,")
            assert more.json()["seq"] == 51
    finally:
        served.kill_all(proc)


def test_pending_webhook_deliveries_are_sent_after_a_kill_9_and_restart(tmp_path):
    port = free_port()
    url = f"http://127.0.0.1:{port}"
    params = {"namespace": "default"}
    with running_receiver() as receiver:
        receiver.answers["/hook"] = lambda _: 503
        proc = served.start(f"sqlite:///{tmp_path}/aos.db", port)
        try:
            with httpx.Client(base_url=url, headers=ADMIN, timeout=30) as http:
                retry = {"initialDelayMs": 200, "maxDelayMs": 500, "maxAttempts": 50}
                hooks = {"url": receiver.url + "/hook", "retry": retry}
                assert http.patch("/api/v1/namespaces/default", json={"webhooks": hooks}).is_success
                for i in range(5):
                    http.post("/api/v1/jobs", params=params, json={"jobId": f"j{i}"})
                    http.post(f"/api/v1/jobs/j{i}/cancel", params=params)
                wait_until(
                    lambda: len(_ids(receiver.at("/hook"))) >= 5,
                    timeout_s=30,
                    what="every message to be attempted",
                )
        finally:
            served.kill_all(proc)
        before = _ids(receiver.at("/hook"))
        receiver.answers["/hook"] = lambda _: 200
        proc = served.start(f"sqlite:///{tmp_path}/aos.db", port)
        try:
            # A 200 answer means a send after the restart: before the kill every one got 503.
            wait_until(
                lambda: _ids(r for r in receiver.at("/hook") if r.answered == 200) >= before,
                timeout_s=60,
                what="every pending message to be delivered after the restart",
            )
            delivered = [r for r in receiver.at("/hook") if r.answered == 200]
            ids = _ids(receiver.at("/hook"))
            assert ids == before and len(ids) == 5  # none lost, none invented
            assert {r.json["data"]["jobId"] for r in delivered} == {f"j{i}" for i in range(5)}
        finally:
            served.kill_all(proc)


def _ids(requests: Iterable[Received]) -> set[str]:
    return {r.headers["webhook-id"] for r in requests}
