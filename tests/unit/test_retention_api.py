"""Retention over HTTP, without Ray: TTLs as clients write them (422 for anything that is not
whole seconds from 1 s to 10 years) and `expiresAt` in the job record."""

from __future__ import annotations

import json
import re
from collections.abc import AsyncIterator
from typing import Any

import httpx
import pytest

from actors.limits import MAX_TTL_S
from actors.shard import Shard, ShardConfig
from actors.shard_client import ShardClient
from serve_app.durations import parse_duration_s
from storage.errors import Invalid
from storage.memory import MemoryStore
from tests.unit.fakes import FakeClock
from tests.unit.test_api import ADMIN, JOBS, error_of, http, make_app, new_tenant

T0 = 1_767_225_600.0  # 2026-01-01T00:00:00Z

BAD_TTLS = [
    0,
    -5,
    MAX_TTL_S + 1,
    10**400,
    1.5,
    2.0,
    float("nan"),
    True,
    None,
    "",
    "soon",
    "0s",
    "-5s",
    "1.5s",
    "1e3",
    "1500ms",  # not whole seconds
    "500ms",
    "1S",
    "1h30m",
    "P1Y",  # ISO 8601 years and months have no fixed length
    "P3651D",
    "P",
    "PT",
    "P1DT",
    "PT1H2D",  # days belong before T
    "9" * 5000 + "s",
    "\uff11s",  # a fullwidth digit
    {"seconds": 5},
    [5],
    {"ttl": {"ttl": "1s"}},
]
GOOD_TTLS = [(1, 1), ("1s", 1), ("1000ms", 1), ("90", 90), ("12h", 43200), ("P7DT1H", 608400)]
GOOD_TTLS += [(MAX_TTL_S, MAX_TTL_S), ("P3650D", MAX_TTL_S), (" 2 m ", 120)]


@pytest.fixture
def clock() -> FakeClock:
    return FakeClock(T0)


@pytest.fixture
async def api(clock: FakeClock) -> AsyncIterator[httpx.AsyncClient]:
    store = MemoryStore()
    await store.open()
    shard = Shard(store, ShardConfig(slot=0, num_shards=1), clock=clock)
    await shard.start()
    async with http(make_app(store, ShardClient.in_process([shard], store=store))) as client:
        yield client
    await shard.stop()


@pytest.fixture
async def acme(api: httpx.AsyncClient) -> dict[str, str]:
    return await new_tenant(api, "acme")


def request(body: dict[str, Any], headers: dict[str, str]) -> dict[str, Any]:
    """`body` as JSON text (NaN as NaN, 10**400 as its digits: a JSON text may hold both,
    and `json=` would refuse NaN)."""
    content = json.dumps(body).encode()
    return {"content": content, "headers": {**headers, "Content-Type": "application/json"}}


@pytest.mark.parametrize("ttl", BAD_TTLS, ids=lambda ttl: repr(ttl)[:20])
async def test_a_bad_job_ttl_is_422_and_submits_nothing(api, acme, ttl):
    submit = {"jobId": "j1", "retentionPolicy": {"ttl": ttl}}
    error = error_of(await api.post(JOBS, **request(submit, acme)), 422)
    assert error["code"] == "invalid" and error["message"].startswith("retentionPolicy.ttl: ")
    batch = await api.post(f"{JOBS}:batch", **request({"jobs": [submit]}, acme))
    [item] = batch.json()["items"]
    assert (item["status"], item["error"]["code"]) == (422, "invalid")
    error_of(await api.get(f"{JOBS}/j1", headers=acme), 404)


@pytest.mark.parametrize("ttl", BAD_TTLS, ids=lambda ttl: repr(ttl)[:20])
async def test_a_bad_namespace_ttl_is_422_and_changes_nothing(api, acme, ttl):
    await api.patch("/api/v1/namespaces/acme", json={"retention": {"ttl": 60}}, headers=ADMIN)
    changed = {"retention": {"ttl": ttl}}
    error = error_of(await api.patch("/api/v1/namespaces/acme", **request(changed, ADMIN)), 422)
    assert error["code"] == "invalid" and error["message"].startswith("retention.ttl: ")
    created = {"name": "globex", **changed}
    error_of(await api.post("/api/v1/namespaces", **request(created, ADMIN)), 422)
    assert (await api.get("/api/v1/namespaces/acme", headers=ADMIN)).json()["retention"] == {
        "ttlS": 60
    }
    error_of(await api.get("/api/v1/namespaces/globex", headers=ADMIN), 404)


@pytest.mark.parametrize(
    ("ttl", "says"),
    [
        ("PT", "cannot read 'PT'"),
        ("P", "cannot read 'P'"),
        ("PT0S", "from 1 s to"),
        (0, "from 1 s to"),
    ],
)
def test_a_ttl_of_no_duration_is_named_unreadable_and_a_zero_one_out_of_range(ttl, says):
    with pytest.raises(Invalid, match=re.escape(says)):
        parse_duration_s(ttl)


@pytest.mark.parametrize(("ttl", "seconds"), GOOD_TTLS)
async def test_a_ttl_is_whole_seconds_as_a_number_or_a_duration(api, acme, ttl, seconds):
    submit = {"jobId": "j1", "retentionPolicy": {"ttl": ttl}}
    created = await api.post(JOBS, **request(submit, acme))
    assert created.json()["retentionPolicy"] == {"ttl": seconds}
    changed = {"retention": {"ttl": ttl}}
    patched = await api.patch("/api/v1/namespaces/acme", **request(changed, ADMIN))
    assert patched.json()["retention"] == {"ttlS": seconds}


async def test_expires_at_is_null_while_running_then_completion_plus_the_ttl(api, acme, clock):
    job = {"jobId": "j1", "retentionPolicy": {"ttl": "1h"}}
    assert (await api.post(JOBS, json=job, headers=acme)).json()["expiresAt"] is None
    clock.advance(90)
    done = await api.post(f"{JOBS}/j1/complete", json={"status": "Succeeded"}, headers=acme)
    assert done.json()["completedAt"] == "2026-01-01T00:01:30.000Z"
    record = (await api.get(f"{JOBS}/j1", headers=acme)).json()
    assert record["expiresAt"] == "2026-01-01T01:01:30.000Z"


async def test_expires_at_follows_the_namespace_default_or_is_null(api, acme):
    await api.post(JOBS, json={"jobId": "kept"}, headers=acme)
    await api.post(f"{JOBS}/kept/cancel", headers=acme)
    assert (await api.get(f"{JOBS}/kept", headers=acme)).json()["expiresAt"] is None
    await api.patch("/api/v1/namespaces/acme", json={"retention": {"ttl": "1d"}}, headers=ADMIN)
    await api.post(JOBS, json={"jobId": "j1"}, headers=acme)
    await api.post(f"{JOBS}/j1/cancel", headers=acme)
    record = (await api.get(f"{JOBS}/j1", headers=acme)).json()
    assert (record["retentionPolicy"], record["expiresAt"]) == (None, "2026-01-02T00:00:00.000Z")
