"""One mapping from our errors (Ray's translated by the shard client) to HTTP statuses and JSON."""

from __future__ import annotations

import json

import pytest
from ray.exceptions import ActorUnavailableError

from actors.shard_client import _unwrapped
from serve_app.errors import to_response
from storage import errors


@pytest.mark.parametrize(
    ("error", "status"),
    [
        (errors.Invalid("x"), 422),
        (errors.TooLarge("x"), 413),
        (errors.BadRequest("x"), 400),
        (errors.Unauthorized("x"), 401),
        (errors.Forbidden("x"), 403),
        (errors.NotFound("x"), 404),
        (errors.Conflict("x"), 409),
        (errors.StoreUnavailable("x"), 503),
        (errors.Fenced("x"), 503),
        (errors.ShardUnavailable("x"), 503),
    ],
)
def test_each_error_has_its_status_and_a_json_body(error, status):
    response = to_response(error)
    assert response.status_code == status
    assert json.loads(response.body) == {"error": {"code": error.code, "message": "x"}}


def test_overload_is_503_with_retry_after():
    response = to_response(errors.Overloaded("full", retry_after_s=2.0))
    assert response.status_code == 503 and response.headers["retry-after"] == "2"


async def test_a_restarting_shard_is_503_with_retry_after():
    async def restarting() -> None:
        raise ActorUnavailableError("restarting", None)

    with pytest.raises(errors.ShardUnavailable) as caught:
        await _unwrapped(restarting())
    response = to_response(caught.value)
    assert response.status_code == 503 and response.headers["retry-after"]


def test_errors_survive_pickling_across_processes():
    import pickle

    error = pickle.loads(pickle.dumps(errors.Overloaded("full", retry_after_s=3.0)))
    assert isinstance(error, errors.Overloaded) and error.retry_after_s == 3.0
