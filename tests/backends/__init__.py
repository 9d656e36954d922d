"""The backends the contract suite (tests/contract), the end-to-end store test
(tests/e2e/test_backends.py) and bench/stores.py run on: one `TestBackend` each, in a module
of its own, listed in `BACKENDS`.

Adding a backend to the suites is its module here and its line in `BACKENDS`. A backend
whose server is unreachable skips loudly, or fails when CI=true (`need_server`).
"""

from __future__ import annotations

from tests.backends.base import TestBackend
from tests.backends.cassandra import Cassandra
from tests.backends.dynamodb import DynamoDB
from tests.backends.local import Memory, Sqlite
from tests.backends.mongodb import Mongodb
from tests.backends.mysql import Mysql
from tests.backends.postgres import Postgres

__all__ = ["BACKENDS", "PERSISTENT", "WITH_A_SERVER", "TestBackend"]

#: Every backend, by the name tests are parametrized with.
BACKENDS: dict[str, TestBackend] = {
    backend.name: backend
    for backend in (
        Memory(),
        Sqlite(),
        Postgres(),
        Mysql(),
        Mongodb(),
        DynamoDB(),
        Cassandra(),
    )
}
PERSISTENT = [name for name, backend in BACKENDS.items() if backend.persistent]
WITH_A_SERVER = [name for name, backend in BACKENDS.items() if backend.has_server]
