"""The door of the API (serve_app.guard), through the app: the key is checked before any of
the body is read, and a JSON body over `MAX_JSON_BODY_BYTES` is 413 without reading it all.

Bodies are async generators that count what the app pulled from them.
"""

from __future__ import annotations

import json
from collections.abc import AsyncIterator
from typing import Any

import httpx
import pytest
from starlette.requests import Request

from actors.limits import (
    MAX_APPEND_BYTES,
    MAX_CHUNK_BYTES,
    MAX_DESCRIPTION_CHARS,
    MAX_ID_CHARS,
    MAX_JSON_BODY_BYTES,
    MAX_TAG_CHARS,
    MAX_TAGS,
    MAX_TITLE_CHARS,
    MAX_URL_CHARS,
)
from actors.shard import Shard, ShardConfig
from actors.shard_client import ShardClient
from serve_app.deps import principal
from storage.memory import MemoryStore
from tests.unit.test_api import JOBS, error_of, http, make_app, new_tenant

PIECE_BYTES = 16 * 1024
BIG_BYTES = 10 * MAX_JSON_BODY_BYTES


class Body:
    """A request body streamed in pieces, counting the bytes the app pulled."""

    def __init__(self, data: bytes) -> None:
        self.data = data
        self.pulled = 0

    @classmethod
    def of_size(cls, size: int) -> Body:
        return cls(b"x" * size)

    async def __aiter__(self) -> AsyncIterator[bytes]:
        while self.pulled < len(self.data):
            piece = self.data[self.pulled : self.pulled + PIECE_BYTES]
            self.pulled += len(piece)
            yield piece


def declared(body: Body) -> dict[str, str]:
    return {"Content-Length": str(len(body.data))}


@pytest.fixture
async def shards(store: MemoryStore) -> AsyncIterator[ShardClient]:
    """One shard that lets webhooks reach 127.0.0.0/8 (no DNS here)."""
    shard = Shard(store, ShardConfig(slot=0, num_shards=1, webhook_allowed_networks="127.0.0.0/8"))
    await shard.start()
    yield ShardClient.in_process([shard])
    await shard.stop()


@pytest.fixture
async def api(store: MemoryStore, shards: ShardClient) -> AsyncIterator[httpx.AsyncClient]:
    async with http(make_app(store, shards)) as client:
        yield client


@pytest.fixture
async def acme(api: httpx.AsyncClient) -> dict[str, str]:
    return await new_tenant(api, "acme")


def escaped(text: str) -> str:
    """`text` as a JSON string with every character `\\uXXXX`-escaped (two for one outside
    the BMP): the longest way to write it."""
    units = text.encode("utf-16-be")
    pairs = (units[i : i + 2].hex() for i in range(0, len(units), 2))
    return '"' + "".join(f"\\u{pair}" for pair in pairs) + '"'


def largest_submit() -> bytes:
    """A submit with every field at its limit, every character escaped, astral where allowed."""
    wide = "\U0001f600"
    url = "http://127.0.0.1:9/" + "a" * (MAX_URL_CHARS - len("http://127.0.0.1:9/"))
    tags = ",".join(escaped(wide * MAX_TAG_CHARS) for _ in range(MAX_TAGS - 1))
    tags += "," + escaped("t" + wide * (MAX_TAG_CHARS - 1))  # tags are distinct
    return (
        f'{{"jobId": {escaped("j" * MAX_ID_CHARS)}, "metadata": {{'
        f'"title": {escaped(wide * MAX_TITLE_CHARS)}, '
        f'"description": {escaped(wide * MAX_DESCRIPTION_CHARS)}, "tags": [{tags}]}}, '
        f'"webhookUrl": {escaped(url)}, "retentionPolicy": {{"ttl": {escaped("1d")}}}}}'
    ).encode()


# -- authentication at the door -------------------------------------------------------------


@pytest.mark.parametrize(
    "auth", [{}, {"Authorization": "Bearer aos_0123456789abcdef_wrong"}], ids=["none", "wrong"]
)
@pytest.mark.parametrize("length", ["declared", "chunked"])
async def test_a_request_without_a_valid_key_is_401_before_its_body_is_read(api, auth, length):
    body = Body.of_size(BIG_BYTES)
    headers = auth | (declared(body) if length == "declared" else {})
    response = await api.post(JOBS, content=body, headers=headers)
    assert error_of(response, 401)["code"] == "unauthorized"
    assert body.pulled == 0


async def test_an_append_without_a_key_is_401_before_its_body_is_read(api):
    body = Body.of_size(MAX_CHUNK_BYTES)
    error_of(await api.post(f"{JOBS}/j1/output", content=body), 401)
    assert body.pulled == 0


async def test_every_api_path_needs_a_key_even_one_without_a_route(api):
    error_of(await api.get("/api/v1/nothing"), 401)
    error_of(await api.delete(f"{JOBS}/j1"), 401)


@pytest.mark.parametrize("path", ["/healthz", "/openapi.json", "/docs"])
async def test_health_and_docs_need_no_key(api, path):
    assert (await api.get(path)).status_code == 200


async def test_handlers_get_the_caller_the_door_authenticated(api, acme):
    submitted = await api.post(JOBS, json={"jobId": "j1"}, headers=acme)
    assert submitted.status_code == 201 and submitted.json()["namespace"] == "acme"


async def test_the_principal_dependency_refuses_a_request_that_skipped_the_door():
    with pytest.raises(RuntimeError, match="guard"):
        await principal(Request({"type": "http", "headers": [], "state": {}}))


# -- JSON bodies ------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("method", "path"),
    [
        ("POST", JOBS),
        ("PATCH", f"{JOBS}/j1"),
        ("POST", f"{JOBS}/j1/complete"),
        ("PATCH", "/api/v1/namespaces/acme"),
        ("PUT", JOBS),
    ],
)
async def test_a_json_body_declared_over_the_limit_is_413_unread(api, acme, method, path):
    body = Body.of_size(MAX_JSON_BODY_BYTES + 1)
    response = await api.request(method, path, content=body, headers=acme | declared(body))
    assert error_of(response, 413)["code"] == "too_large"
    assert body.pulled == 0


async def test_a_chunked_json_body_is_413_once_past_the_limit_and_read_no_further(api, acme):
    body = Body.of_size(BIG_BYTES)
    response = await api.post(JOBS, content=body, headers=acme)
    assert error_of(response, 413)["code"] == "too_large"
    assert MAX_JSON_BODY_BYTES < body.pulled <= MAX_JSON_BODY_BYTES + PIECE_BYTES


@pytest.mark.parametrize("length", ["declared", "chunked"])
async def test_a_json_body_of_exactly_the_limit_is_accepted(api, acme, length):
    submit = json.dumps({"jobId": "j1", "metadata": {"title": "at the limit"}}).encode()
    body = Body(submit.ljust(MAX_JSON_BODY_BYTES))  # JSON allows the trailing spaces
    headers = acme | {"Content-Type": "application/json"}
    headers |= declared(body) if length == "declared" else {}
    response = await api.post(JOBS, content=body, headers=headers)
    assert response.status_code == 201, response.text
    assert body.pulled == MAX_JSON_BODY_BYTES


async def test_the_largest_valid_submit_fully_escaped_fits_the_limit(api, acme):
    body = largest_submit()
    assert len(body) <= MAX_JSON_BODY_BYTES
    headers = acme | {"Content-Type": "application/json"}
    response = await api.post(JOBS, content=body, headers=headers)
    assert response.status_code == 201, response.text
    assert response.json()["metadata"]["title"] == "\U0001f600" * MAX_TITLE_CHARS


@pytest.mark.parametrize("value", [b"many", b"-1", b"1e3", b"0x10", b"\xb2"])
async def test_a_malformed_content_length_is_400(api, acme, value):
    response = await api.post(JOBS, content=b"{}", headers=acme | {"Content-Length": value})
    assert error_of(response, 400)["code"] == "bad_request"


async def test_a_content_length_of_thousands_of_digits_is_413_not_a_500(api, acme):
    headers = acme | {"Content-Length": "9" * 5000}
    response = await api.post(JOBS, content=b"{}", headers=headers)
    assert error_of(response, 413)["code"] == "too_large"


@pytest.mark.parametrize("length", ["declared", "chunked"])
async def test_an_append_takes_a_body_up_to_the_chunk_limit(api, acme, length):
    assert (await api.post(JOBS, json={"jobId": "j1"}, headers=acme)).status_code == 201
    body = Body.of_size(MAX_CHUNK_BYTES)
    headers = acme | (declared(body) if length == "declared" else {})
    response = await api.post(f"{JOBS}/j1/output", content=body, headers=headers)
    assert response.status_code == 200, response.text
    assert response.json()["size"] == MAX_CHUNK_BYTES


async def test_a_client_gone_while_sending_its_body_gets_no_answer(store, shards, acme):
    app = make_app(store, shards)
    messages = [
        {"type": "http.request", "body": b'{"jobId"', "more_body": True},
        {"type": "http.disconnect"},
    ]
    sent: list[dict[str, Any]] = []

    async def receive() -> dict[str, Any]:
        return messages.pop(0)

    async def send(message: dict[str, Any]) -> None:
        sent.append(message)

    headers = [(b"authorization", acme["Authorization"].encode())]
    scope = {"type": "http", "method": "POST", "path": JOBS, "headers": headers}
    await app(scope, receive, send)
    assert sent == [] and messages == []


async def test_a_body_refused_unread_closes_the_connection(api, acme):
    """Else the server would read the rest (and a client could send gigabytes) to keep the
    connection; a small body read whole keeps it."""
    body = Body.of_size(MAX_JSON_BODY_BYTES + 1)
    unread = await api.post(JOBS, content=body, headers=declared(body))
    assert unread.status_code == 401 and unread.headers["connection"] == "close"
    too_large = await api.post(JOBS, content=body, headers=acme | declared(body))
    assert too_large.status_code == 413 and too_large.headers["connection"] == "close"
    ok = await api.get(JOBS, headers=acme)
    assert ok.status_code == 200 and "connection" not in ok.headers


async def test_a_content_length_with_optional_whitespace_is_read(api, acme):
    headers = acme | {"Content-Length": " 2 ", "Content-Type": "application/json"}
    assert (await api.post(JOBS, content=b"{}", headers=headers)).status_code == 201


async def test_an_append_over_the_chunk_limit_closes_the_connection(api, acme):
    assert (await api.post(JOBS, json={"jobId": "j1"}, headers=acme)).status_code == 201
    body = Body.of_size(MAX_APPEND_BYTES + 1)
    refused = await api.post(f"{JOBS}/j1/output", content=body, headers=acme)
    assert refused.status_code == 413 and refused.headers["connection"] == "close"
