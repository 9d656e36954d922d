"""`If-None-Match` on the routes that give out an `ETag` (the job, its status, the status's
long-poll), through the app without Ray: RFC 9110 §13.1.2's whole list, not its first tag."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator

import httpx
import pytest

from actors.shard_client import ShardClient
from storage.memory import MemoryStore
from tests.unit.fakes import WAIT_S, Watched
from tests.unit.test_api import JOBS, error_of, http, make_app, new_tenant, submit


@pytest.fixture
async def api(store: MemoryStore, watched: Watched) -> AsyncIterator[httpx.AsyncClient]:
    async with http(make_app(store, ShardClient.in_process([watched], store=store))) as client:
        yield client


@pytest.fixture
async def acme(api: httpx.AsyncClient) -> dict[str, str]:
    return await new_tenant(api, "acme")


async def _etag(api: httpx.AsyncClient, acme: dict[str, str], path: str = "/status") -> str:
    response = await api.get(f"{JOBS}/j1{path}", headers=acme)
    assert response.status_code == 200
    return response.headers["etag"]


@pytest.mark.parametrize("path", ["/status", ""])
@pytest.mark.parametrize(
    "condition",
    ['"zzz", {tag}', "{tag}", "W/{tag}", '"a",,W/"b" ,  {tag}', "*"],
)
async def test_a_matching_tag_anywhere_in_the_list_is_304(api, acme, path, condition):
    await submit(api, acme, jobId="j1")
    etag = await _etag(api, acme, path)
    headers = acme | {"If-None-Match": condition.format(tag=etag)}
    response = await api.get(f"{JOBS}/j1{path}", headers=headers)
    assert response.status_code == 304 and response.content == b""
    assert response.headers["etag"] == etag


@pytest.mark.parametrize("path", ["/status", ""])
@pytest.mark.parametrize("condition", ['"zzz", "1"', "", "{bare}", "{tag} x", "*, {tag}"])
async def test_a_list_without_the_tag_or_off_the_grammar_is_200(api, acme, path, condition):
    await submit(api, acme, jobId="j1")
    etag = await _etag(api, acme, path)
    value = condition.format(tag=etag, bare=etag.strip('"'))
    response = await api.get(f"{JOBS}/j1{path}", headers=acme | {"If-None-Match": value})
    assert response.status_code == 200 and response.json()["jobId"] == "j1"


async def test_two_field_lines_are_one_list(api, acme):
    await submit(api, acme, jobId="j1")
    etag = await _etag(api, acme)
    headers = [*acme.items(), ("If-None-Match", '"zzz"'), ("If-None-Match", etag)]
    assert (await api.get(f"{JOBS}/j1/status", headers=headers)).status_code == 304


async def test_a_long_poll_holds_while_any_listed_tag_matches(api, acme, watched):
    """The fault: `"zzz", "<tag>"` with `?wait=` answered at once instead of holding."""
    await submit(api, acme, jobId="j1")
    etag = await _etag(api, acme)
    headers = acme | {"If-None-Match": f'"zzz", {etag}'}
    poll = asyncio.ensure_future(api.get(f"{JOBS}/j1/status?wait=30", headers=headers))
    await asyncio.wait_for(watched.watching.wait(), WAIT_S)
    await asyncio.sleep(0.05)
    assert not poll.done()
    await api.post(f"{JOBS}/j1/output", content=b"x", headers=acme)
    answer = await asyncio.wait_for(poll, WAIT_S)
    assert answer.status_code == 200 and answer.headers["etag"] != etag
    assert answer.json()["outputSeq"] == 1


async def test_a_long_poll_with_star_holds_for_the_whole_wait_then_304(api, acme):
    await submit(api, acme, jobId="j1")
    headers = acme | {"If-None-Match": "*"}
    answer = await api.get(f"{JOBS}/j1/status?wait=0.1", headers=headers)
    assert answer.status_code == 304


async def test_a_long_poll_of_tags_never_given_out_answers_at_once(api, acme):
    await submit(api, acme, jobId="j1")
    headers = acme | {"If-None-Match": '"1", "zzz"'}  # the old format: not this job's tag
    answer = await asyncio.wait_for(api.get(f"{JOBS}/j1/status?wait=30", headers=headers), WAIT_S)
    assert answer.status_code == 200


async def test_a_job_deleted_and_submitted_again_never_reuses_an_etag(api, acme):
    await submit(api, acme, jobId="j1")
    await api.post(f"{JOBS}/j1/cancel", headers=acme)
    old = await _etag(api, acme)
    assert (await api.delete(f"{JOBS}/j1", headers=acme)).status_code == 204
    await submit(api, acme, jobId="j1")
    await api.patch(f"{JOBS}/j1", json={"progress": 5}, headers=acme)  # revision 2 again
    assert old.split("-")[0] == (await _etag(api, acme)).split("-")[0]
    response = await api.get(f"{JOBS}/j1/status", headers=acme | {"If-None-Match": old})
    assert response.status_code == 200


async def test_if_none_match_on_a_missing_job_is_404(api, acme):
    response = await api.get(f"{JOBS}/nope/status", headers=acme | {"If-None-Match": "*"})
    error_of(response, 404)
