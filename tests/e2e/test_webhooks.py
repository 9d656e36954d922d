"""Webhooks end to end: signed (Standard Webhooks), coalesced, retried, tracked, replayable."""

from __future__ import annotations

import email.utils
import itertools
import time

import pytest
import standardwebhooks
import svix.webhooks

from tests.e2e.receiver import Received
from tests.e2e.waiting import wait_until

pytestmark = pytest.mark.e2e
FAST_RETRY = {"initialDelayMs": 100, "maxDelayMs": 400, "maxAttempts": 3}


def _verify(secret: str, got: Received) -> None:
    """Both public verification libraries must accept every delivery."""
    headers = {k: got.headers[k] for k in ("webhook-id", "webhook-timestamp", "webhook-signature")}
    standardwebhooks.Webhook(secret).verify(got.body, headers)
    svix.webhooks.Webhook(secret).verify(got.body, headers)


def _configure(admin, tenant, **webhooks):
    r = admin.patch(f"/api/v1/namespaces/{tenant.namespace}", json={"webhooks": webhooks})
    assert r.status_code == 200, r.text
    return r.json()


def _deliveries(tenant, job_id):
    r = tenant.http.get(f"/api/v1/jobs/{job_id}/webhooks")
    assert r.status_code == 200
    return r.json()["items"]


def _deliveries_in(tenant, job_id, status, timeout_s=30):
    """The job's deliveries in `status`, once there is at least one."""
    return wait_until(
        lambda: [d for d in _deliveries(tenant, job_id) if d["status"] == status],
        timeout_s=timeout_s,
        what=f"a {status} delivery of job {job_id}",
        state=lambda: [d["status"] for d in _deliveries(tenant, job_id)],
    )


def test_job_completed_goes_to_the_jobs_url_signed_for_both_libraries(tenant, receiver):
    tenant.http.post("/api/v1/jobs", json={"jobId": "j", "webhookUrl": receiver.url + "/done"})
    tenant.http.post("/api/v1/jobs/j/complete", json={"status": "Failed", "error": "boom"})
    (got,) = receiver.wait_for("/done", 1)
    _verify(tenant.webhook_secret, got)
    body = got.json
    assert body["type"] == "job.completed" and body["timestamp"].endswith("Z")
    data = body["data"]
    assert data["namespace"] == tenant.namespace and data["jobId"] == "j"
    assert (data["status"], data["error"]) == ("Failed", "boom")
    assert {"progress", "sequence"} <= set(data)
    (delivery,) = _deliveries_in(tenant, "j", "delivered")
    assert delivery["id"] == got.headers["webhook-id"] and delivery["type"] == "job.completed"
    assert delivery["attempts"][0]["statusCode"] == 200


def test_namespace_settings_apply_at_once_and_chatty_events_are_coalesced(admin, tenant, receiver):
    events = ["job.created", "job.progress", "job.output", "job.completed"]
    _configure(admin, tenant, url=receiver.url + "/ns", events=events)
    tenant.http.post("/api/v1/jobs", json={"jobId": "chatty"})
    for i in range(20):
        tenant.http.post("/api/v1/jobs/chatty/output", content=f"line {i}\n")
    for p in (10, 20, 30):
        tenant.http.patch("/api/v1/jobs/chatty", json={"progress": p})
    tenant.http.post("/api/v1/jobs/chatty/complete", json={"status": "Succeeded"})
    receiver.wait_for("/ns", 1, where=lambda r: r.json["type"] == "job.completed")
    # Every delivery of the job is recorded as delivered only after the receiver got it,
    # and a delivered one is never sent again: from then on, what arrived is all there is.
    wait_until(
        lambda: all(d["status"] == "delivered" for d in _deliveries(tenant, "chatty")),
        timeout_s=30,
        what="every delivery of job chatty to be recorded as delivered",
        state=lambda: [(d["type"], d["status"]) for d in _deliveries(tenant, "chatty")],
    )
    got = receiver.at("/ns")
    for delivery in got:
        _verify(tenant.webhook_secret, delivery)
    by_type: dict[str, list] = {}
    for delivery in got:
        by_type.setdefault(delivery.json["type"], []).append(delivery.json)
    assert len(by_type["job.created"]) == 1 and len(by_type["job.completed"]) == 1
    outputs = by_type["job.output"]
    assert len(outputs) < 20  # coalesced
    seqs = [c["seq"] for body in outputs for c in body["data"]["chunks"]]
    assert sorted(seqs) == list(range(1, 21))  # every chunk, once
    text = "".join(
        c["data"]
        for body in sorted(outputs, key=lambda b: b["data"]["sequence"])
        for c in body["data"]["chunks"]
    )
    assert text == "".join(f"line {i}\n" for i in range(20))
    progress = by_type["job.progress"]
    assert len(progress) < 3 and max(b["data"]["progress"] for b in progress) == 30
    assert by_type["job.completed"][0]["data"]["status"] == "Succeeded"
    sequences = [b["data"]["sequence"] for b in by_type["job.created"] + by_type["job.completed"]]
    assert sequences[0] < sequences[1]


def test_a_receiver_failing_twice_gets_three_attempts_with_growing_gaps(admin, tenant, receiver):
    _configure(admin, tenant, url=receiver.url + "/flaky", retry=FAST_RETRY)
    receiver.answers["/flaky"] = lambda _: 500 if len(receiver.at("/flaky")) <= 2 else 200
    tenant.http.post("/api/v1/jobs", json={"jobId": "j"})
    tenant.http.post("/api/v1/jobs/j/cancel")
    got = receiver.wait_for("/flaky", 3)
    assert len({g.headers["webhook-id"] for g in got}) == 1  # one message, retried
    assert got[0].json["data"]["status"] == "Cancelled"
    gaps = [b.at - a.at for a, b in itertools.pairwise(got)]
    assert all(gap >= 0.09 for gap in gaps)
    (delivery,) = _deliveries_in(tenant, "j", "delivered")
    assert [a["statusCode"] for a in delivery["attempts"]] == [500, 500, 200]


def test_a_receivers_retry_after_is_waited_for_and_recorded(admin, tenant, receiver):
    """429 with `Retry-After: 3` once, then 200: the second attempt comes at least 3 s after
    the first, though the policy's backoff alone would wait 0.2 s."""
    retry = {"initialDelayMs": 200, "maxDelayMs": 10_000, "maxAttempts": 3}
    _configure(admin, tenant, url=receiver.url + "/busy", retry=retry)
    receiver.answers["/busy"] = lambda _: (
        (429, {"Retry-After": "3"}) if len(receiver.at("/busy")) <= 1 else 200
    )
    tenant.http.post("/api/v1/jobs", json={"jobId": "j"})
    tenant.http.post("/api/v1/jobs/j/cancel")
    first, second = receiver.wait_for("/busy", 2)
    assert second.at - first.at >= 3.0
    assert first.headers["webhook-id"] == second.headers["webhook-id"]
    (delivery,) = _deliveries_in(tenant, "j", "delivered")
    assert [(a["statusCode"], a["retryAfterMs"]) for a in delivery["attempts"]] == [
        (429, 3000),
        (200, None),
    ]


def test_an_http_date_retry_after_is_capped_at_the_policys_maximum_delay(admin, tenant, receiver):
    retry = {"initialDelayMs": 100, "maxDelayMs": 500, "maxAttempts": 3}
    _configure(admin, tenant, url=receiver.url + "/later", retry=retry)
    in_an_hour = email.utils.formatdate(time.time() + 3600, usegmt=True)
    receiver.answers["/later"] = lambda _: (
        (503, {"Retry-After": in_an_hour}) if len(receiver.at("/later")) <= 1 else 204
    )
    tenant.http.post("/api/v1/jobs", json={"jobId": "j"})
    tenant.http.post("/api/v1/jobs/j/cancel")
    receiver.wait_for("/later", 2)
    (delivery,) = _deliveries_in(tenant, "j", "delivered")
    assert [(a["statusCode"], a["retryAfterMs"]) for a in delivery["attempts"]] == [
        (503, 500),
        (204, None),
    ]


def test_dead_letter_after_max_attempts_then_a_manual_retry_delivers(admin, tenant, receiver):
    _configure(admin, tenant, url=receiver.url + "/down", retry=FAST_RETRY)
    receiver.answers["/down"] = lambda _: 503
    tenant.http.post("/api/v1/jobs", json={"jobId": "j"})
    tenant.http.post("/api/v1/jobs/j/complete", json={"status": "Succeeded"})
    (dead,) = _deliveries_in(tenant, "j", "failed")
    assert len(dead["attempts"]) == 3 and len(receiver.at("/down")) == 3
    receiver.answers["/down"] = lambda _: 204
    retry = tenant.http.post(f"/api/v1/webhooks/deliveries/{dead['id']}/retry")
    assert retry.status_code == 202
    got = receiver.wait_for("/down", 4)
    assert got[-1].headers["webhook-id"] == dead["id"]
    _verify(tenant.webhook_secret, got[-1])
    (done,) = _deliveries_in(tenant, "j", "delivered")
    assert done["attempts"][-1]["statusCode"] == 204


def test_410_gone_stops_retries_at_once(admin, tenant, receiver):
    _configure(admin, tenant, url=receiver.url + "/gone", retry=FAST_RETRY)
    receiver.answers["/gone"] = lambda _: 410
    tenant.http.post("/api/v1/jobs", json={"jobId": "j"})
    tenant.http.post("/api/v1/jobs/j/cancel")
    (failed,) = _deliveries_in(tenant, "j", "failed")
    assert [a["statusCode"] for a in failed["attempts"]] == [410]


def test_a_hanging_receiver_times_out_without_delaying_others(admin, tenant, receiver):
    _configure(admin, tenant, url=receiver.url + "/hang", timeoutMs=500, retry=FAST_RETRY)

    def hang(_):
        time.sleep(3)  # the scenario: a receiver that answers long after the sender's timeout
        return 200

    receiver.answers["/hang"] = hang
    tenant.http.post("/api/v1/jobs", json={"jobId": "slow"})
    tenant.http.post("/api/v1/jobs/slow/cancel")
    receiver.wait_for("/hang", 1)
    started = time.monotonic()
    tenant.http.post("/api/v1/jobs", json={"jobId": "fast", "webhookUrl": receiver.url + "/fast"})
    tenant.http.post("/api/v1/jobs/fast/cancel")
    receiver.wait_for("/fast", 1, timeout_s=10)
    assert time.monotonic() - started < 2.5
    (slow,) = wait_until(
        lambda: [d for d in _deliveries(tenant, "slow") if d["attempts"]],
        timeout_s=30,
        what="the hanging delivery's first attempt to be recorded",
    )
    assert slow["attempts"][0]["error"] == "timeout"


def test_after_a_secret_rotation_both_secrets_verify_during_the_grace(admin, tenant, receiver):
    rotated = admin.post(
        f"/api/v1/namespaces/{tenant.namespace}/webhook-secret/rotate", json={"graceS": 3600}
    )
    assert rotated.status_code == 200
    new_secret = rotated.json()["webhookSecret"]
    assert new_secret != tenant.webhook_secret and new_secret.startswith("whsec_")
    tenant.http.post("/api/v1/jobs", json={"jobId": "j", "webhookUrl": receiver.url + "/r"})
    tenant.http.post("/api/v1/jobs/j/cancel")
    (got,) = receiver.wait_for("/r", 1)
    assert len(got.headers["webhook-signature"].split(" ")) == 2
    _verify(tenant.webhook_secret, got)
    _verify(new_secret, got)


@pytest.mark.parametrize(
    "url",
    [
        "http://10.0.0.1/hook",
        "http://169.254.169.254/latest/meta-data",
        "http://[::1]:8080/hook",
        "http://192.168.1.5/hook",
        "ftp://example.com/hook",
        "not a url",
        "http://user:pw@127.0.0.1/hook",
    ],
)
def test_webhook_urls_that_could_reach_inside_are_refused_at_submit(tenant, url):
    r = tenant.http.post("/api/v1/jobs", json={"jobId": "j", "webhookUrl": url})
    assert r.status_code == 422, r.text
    assert r.json()["error"]["code"] == "invalid"


@pytest.mark.parametrize(
    "webhooks",
    [
        {"url": "http://10.1.2.3/x"},
        {"events": ["job.exploded"]},
        {"retry": {"maxAttempts": 0}},
        {"retry": {"initialDelayMs": 5000, "maxDelayMs": 10}},
        {"timeoutMs": 10},
    ],
)
def test_bad_namespace_webhook_settings_are_422(admin, tenant, webhooks):
    r = admin.patch(f"/api/v1/namespaces/{tenant.namespace}", json={"webhooks": webhooks})
    assert r.status_code == 422, r.text


def test_an_over_long_webhook_url_is_413_wherever_it_is_given(admin, tenant):
    """One status per kind of violation: a field over its size limit is 413 (README)."""
    url = "http://127.0.0.1/" + "x" * 3000
    r = admin.patch(f"/api/v1/namespaces/{tenant.namespace}", json={"webhooks": {"url": url}})
    assert r.status_code == 413 and r.json()["error"]["code"] == "too_large", r.text
    r = tenant.http.post("/api/v1/jobs", json={"jobId": "j", "webhookUrl": url})
    assert r.status_code == 413 and r.json()["error"]["code"] == "too_large", r.text


def test_unknown_job_event_types_are_422(tenant, receiver):
    r = tenant.http.post(
        "/api/v1/jobs",
        json={"jobId": "j", "webhookUrl": receiver.url, "webhookEvents": ["job.nope"]},
    )
    assert r.status_code == 422


def test_deliveries_are_scoped_to_their_namespace(tenant, other_tenant, receiver):
    tenant.http.post("/api/v1/jobs", json={"jobId": "j", "webhookUrl": receiver.url + "/a"})
    tenant.http.post("/api/v1/jobs/j/cancel")
    receiver.wait_for("/a", 1)
    (delivery,) = wait_until(
        lambda: _deliveries(tenant, "j"), timeout_s=30, what="the job's delivery to be listed"
    )
    assert other_tenant.http.get("/api/v1/jobs/j/webhooks").status_code == 404
    r = other_tenant.http.post(f"/api/v1/webhooks/deliveries/{delivery['id']}/retry")
    assert r.status_code == 404


def test_pending_deliveries_survive_a_shard_restart(admin, tenant, receiver):
    import ray

    from actors.routing import RAY_NAMESPACE, shard_for, shard_name

    _configure(
        admin,
        tenant,
        url=receiver.url + "/later",
        retry={"initialDelayMs": 500, "maxDelayMs": 1000, "maxAttempts": 20},
    )
    receiver.answers["/later"] = lambda _: 503
    for i in range(5):
        assert tenant.http.post("/api/v1/jobs", json={"jobId": f"j{i}"}).status_code == 201
        assert tenant.http.post(f"/api/v1/jobs/j{i}/cancel").status_code == 200
    wait_until(  # each message tried at least once, all refused
        lambda: len({g.headers["webhook-id"] for g in receiver.at("/later")}) == 5,
        timeout_s=30,
        what="a first attempt of each of the 5 messages",
    )
    shard = ray.get_actor(shard_name(shard_for(tenant.namespace, 2)), namespace=RAY_NAMESPACE)
    ray.kill(shard, no_restart=False)
    receiver.answers["/later"] = lambda _: 200
    # Nothing calls the shard (reads go to the store): it must wake by itself.
    wait_until(
        lambda: tenant.http.get("/api/v1/jobs/j0/status").status_code == 200,
        timeout_s=30,
        what="the restarted shard to answer",
    )

    def accepted_by_all() -> list[Received]:
        """Requests answered 200 (so sent after the kill: before it, all got 503), once
        every message is among them."""
        ok = [g for g in receiver.at("/later") if g.answered == 200]
        return ok if len({g.headers["webhook-id"] for g in ok}) >= 5 else []

    ok = wait_until(
        accepted_by_all,
        timeout_s=60,
        what="all 5 messages to be accepted after the restart",
        state=lambda: {
            "received": [(g.json["data"]["jobId"], g.answered) for g in receiver.at("/later")],
            "deliveries": [
                (d["status"], d.get("attempts"), d.get("nextAttemptAt"))
                for i in range(5)
                for d in _deliveries(tenant, f"j{i}")
            ],
        },
    )
    ids = {g.headers["webhook-id"] for g in receiver.at("/later")}
    assert len(ids) == 5  # every message arrived; repeats carry the same webhook-id
    jobs = {g.json["data"]["jobId"] for g in ok}
    assert jobs == {f"j{i}" for i in range(5)}
    delivered = wait_until(
        lambda: all(
            any(d["status"] == "delivered" for d in _deliveries(tenant, f"j{i}")) for i in range(5)
        ),
        timeout_s=60,
        what="every job's delivery to be recorded as delivered",
    )
    assert delivered


def test_a_batch_of_jobs_gets_exactly_one_signed_job_created_message_each(tenant, receiver):
    hook = {"webhookUrl": receiver.url + "/created", "webhookEvents": ["job.created"]}
    job_ids = [f"b{i}" for i in range(200)]
    r = tenant.http.post(
        "/api/v1/jobs:batch", json={"jobs": [{"jobId": j, **hook} for j in job_ids]}
    )
    assert r.status_code == 200 and {item["status"] for item in r.json()["items"]} == {201}
    receiver.wait_for("/created", len(job_ids), timeout_s=60)
    # A delivery recorded as delivered is never sent again: from then on, what arrived is all.
    recorded = {
        job_id: wait_until(
            lambda job_id=job_id: [
                d for d in _deliveries(tenant, job_id) if d["status"] == "delivered"
            ],
            timeout_s=60,
            what=f"job {job_id}'s delivery to be recorded as delivered",
        )
        for job_id in job_ids
    }
    got = receiver.at("/created")
    for delivery in got:
        _verify(tenant.webhook_secret, delivery)
    assert {g.json["type"] for g in got} == {"job.created"}
    by_job: dict[str, list[str]] = {}
    for g in got:
        by_job.setdefault(g.json["data"]["jobId"], []).append(g.headers["webhook-id"])
    assert sorted(by_job) == sorted(job_ids)  # none lost, none invented
    for job_id, ids in by_job.items():
        (delivery,) = recorded[job_id]  # one message a job...
        assert set(ids) == {delivery["id"]}
        # ...received once, or again only as a retry: an attempt recorded as failed
        assert len(ids) <= len(delivery["attempts"])
