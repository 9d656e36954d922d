"""Fuzzing the deployed service over HTTP (tests/fuzzing.py): with a namespace key and with
the admin key, no request may get a 5xx or a dropped connection. About a minute per key.

The report (printed; `-s` shows it for a pass) counts cases and names each failure; a
server's traceback is in its replica log, /tmp/ray/session_latest/logs/serve/replica_*.log.
"""

from __future__ import annotations

from collections.abc import Iterator

import pytest
import requests
import schemathesis

from cluster import bootstrap
from tests.e2e.conftest import ADMIN_KEY
from tests.e2e.waiting import wait_until
from tests.fuzzing import Known, config, fuzz

pytestmark = pytest.mark.e2e


@pytest.fixture(scope="module")
def schema(service: bootstrap.Service) -> schemathesis.BaseSchema:
    return schemathesis.openapi.from_url(f"{service.url}/openapi.json", config=config())


@pytest.fixture
def known(service: bootstrap.Service) -> Iterator[Known]:
    with requests.Session() as http:
        # Earlier tests kill shards: begin once every shard answers again (/readyz).
        wait_until(
            lambda: http.get(f"{service.url}/readyz", timeout=10).status_code == 200,
            timeout_s=60,
            what="the service to be ready",
        )
        yield Known.make(http, service.url, ADMIN_KEY)


@pytest.mark.parametrize("who", ["namespace", "admin"])
def test_no_request_gets_a_5xx_or_a_dropped_connection(
    who: str, schema: schemathesis.BaseSchema, known: Known
) -> None:
    key = known.key if who == "namespace" else ADMIN_KEY
    fuzz(schema, who=who, key=key, known=known).check(schema)
