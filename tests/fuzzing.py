"""The fuzz harness: schemathesis sends every operation of the service's own OpenAPI document,
with data that fits it and data that does not; 5xx answers and dropped connections are tallied.

Seeded and bounded, so CI runs the same cases every time. Half the cases aim at real things
(a namespace, a job holding output, a webhook delivery, a spare key); the rest hit whatever
the fuzzer makes up. Cases run to the end and are tallied rather than stopped at the first
failure (so nothing shrinks): the report names every kind of failure with its count and the
shortest request that showed it.
"""

from __future__ import annotations

import base64
import traceback
import uuid
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import hypothesis
import pytest
import requests
import schemathesis
from hypothesis import HealthCheck, Phase, given, settings
from hypothesis import strategies as st
from schemathesis import GenerationMode

SEED = 20240611
EXAMPLES_PER_OPERATION_AND_MODE = 80
MODES = (GenerationMode.POSITIVE, GenerationMode.NEGATIVE)
REQUEST_TIMEOUT_S = 10.0
# An open SSE stream never ends by itself: schemathesis reads it this long, then cuts it.
STREAM_TIMEOUT_S = 2.0
# A long poll may hold a request for max_wait_s (60 s); the fuzzer's polls wait at most this.
MAX_WAIT_S = 1.0
# What a server that dropped, reset or never answered a connection leaves a client with.
DROPPED = (requests.ConnectionError, requests.exceptions.ChunkedEncodingError, requests.Timeout)
# schemathesis checks dictionary entries as UTF-8, which a lone surrogate is not (JSON may
# carry one as "\ud800"), so it enters as this token and is swapped in before the request.
LONE_SURROGATE = "<U+D800>"
HOOK = "http://127.0.0.1:9/hook"
ROOT = Path(__file__).resolve().parents[1]


def _b64(raw: bytes) -> str:
    return base64.urlsafe_b64encode(raw).decode().rstrip("=")


# Strings the service parses itself, past anything the OpenAPI document says of them (an
# opaque cursor, an event id, an entity tag, a URL, a timestamp, free text it stores): a
# random string rarely gets past their first check, so a share comes from these dictionaries.
DICTIONARIES = {
    "numerals": ["0", "-1", "²", '"²"', "9" * 5000, '"' + "9" * 5000 + '"', 'W/"1"', "*"],
    "cursors": [
        _b64(b"[" * 2000 + b"]" * 2000),
        _b64(b"[" + b"9" * 400 + b', "x"]'),
        _b64(b'[1e400, "x"]'),
        _b64(b'["nan", "x"]'),
        _b64(b"[1, null]"),
        _b64(b'[1, "\\u0000"]'),
        _b64(b'[1, "\\ud800"]'),
    ],
    "urls": [
        "http://a..com/",
        "http://" + "a" * 70 + ".com/",
        "http://xn--/",
        "http://[::1/",
        "http://127.0.0.1:99999/",
        "http://localhost./",
    ],
    "datetimes": ["0001-01-01T00:00:00+14:00", "9999-12-31T23:59:59-14:00", "1970-01-01T00:00:00Z"],
    "text": ["a\x00b", LONE_SURROGATE, "\u202e\ufeff", "x" * 70_000],
}
BINDINGS = {
    "header.last-event-id": "numerals",
    "header.if-none-match": "numerals",
    "query.cursor": "cursors",
    "query.createdAfter": "datetimes",
    "query.createdBefore": "datetimes",
    "query.tag": "text",
    "body.estimatedCompletion": "datetimes",
    "body.webhookUrl": "urls",
    "body.webhooks.url": "urls",
    "body.metadata.title": "text",
    "body.metadata.description": "text",
    "body.metadata.tags[*]": "text",
    "body.description": "text",
    "body.error": "text",
}


def config() -> schemathesis.Config:
    """schemathesis's configuration: the dictionaries, each bound to its parameters."""
    return schemathesis.Config.from_dict(
        {
            "dictionaries": {name: {"values": values} for name, values in DICTIONARIES.items()},
            "parameters": {
                where: {"dictionary": name, "probability": 0.3} for where, name in BINDINGS.items()
            },
        }
    )


@dataclass
class Known:
    """Real things in one fresh namespace, for a share of the cases' parameters."""

    http: requests.Session
    base_url: str
    namespace: str
    key: str
    spare_key_id: str
    delivery_id: str

    @classmethod
    def make(cls, http: requests.Session, base_url: str, admin_key: str) -> Known:
        """A namespace, its key, a spare key (the admin may revoke it) and a webhook delivery."""
        admin = {"Authorization": f"Bearer {admin_key}"}
        name = f"fuzz-{uuid.uuid4().hex[:12]}"
        namespaces = f"{base_url}/api/v1/namespaces"
        http.post(namespaces, json={"name": name}, headers=admin).raise_for_status()
        key = http.post(f"{namespaces}/{name}/keys", headers=admin).json()["key"]
        spare = http.post(f"{namespaces}/{name}/keys", headers=admin).json()["keyId"]
        known = cls(http, base_url, name, key, spare, delivery_id="")
        hooked = known.job(finished=True, webhook_url=HOOK)
        deliveries = known.call("GET", f"/api/v1/jobs/{hooked}/webhooks").json()["items"]
        known.delivery_id = deliveries[0]["id"]
        return known

    def call(self, method: str, path: str, **kwargs: Any) -> requests.Response:
        headers = {"Authorization": f"Bearer {self.key}"}
        response = self.http.request(method, self.base_url + path, headers=headers, **kwargs)
        response.raise_for_status()
        return response

    def job(self, *, finished: bool, webhook_url: str | None = None) -> str:
        """A fresh job holding one chunk of output; finished, its stream ends by itself."""
        body = {"webhookUrl": webhook_url} if webhook_url else {}
        job_id: str = self.call("POST", "/api/v1/jobs", json=body).json()["jobId"]
        self.call("POST", f"/api/v1/jobs/{job_id}/output", data=b"hello\n")
        if finished:
            self.call("POST", f"/api/v1/jobs/{job_id}/complete", json={"status": "Succeeded"})
        return job_id

    def path_parameters(self, operation: schemathesis.APIOperation) -> dict[str, str]:
        names = {parameter.name for parameter in operation.path_parameters}
        values = {
            "name": self.namespace,
            "key_id": self.spare_key_id,
            "delivery_id": self.delivery_id,
        }
        if "job_id" in names:  # a GET may stream: its job is finished
            values["job_id"] = self.job(finished=operation.method.upper() == "GET")
        return {name: value for name, value in values.items() if name in names}


@dataclass
class Tally:
    """Cases sent by mode, answers by class, failures by kind with the shortest request."""

    who: str
    cases: Counter[str] = field(default_factory=Counter)
    answers: Counter[str] = field(default_factory=Counter)
    failures: Counter[str] = field(default_factory=Counter)
    shortest: dict[str, str] = field(default_factory=dict)
    nothing_to_generate: list[str] = field(default_factory=list)

    def fail(self, kind: str, curl: str) -> None:
        self.failures[kind] += 1
        if kind not in self.shortest or len(curl) < len(self.shortest[kind]):
            self.shortest[kind] = curl

    def report(self) -> str:
        lines = [f"fuzz with the {self.who} key: {self.cases.total()} cases {dict(self.cases)}"]
        lines.append(f"  answers: {dict(sorted(self.answers.items()))}")
        if self.nothing_to_generate:
            lines.append(f"  nothing to generate for: {', '.join(self.nothing_to_generate)}")
        lines.append(f"  {self.failures.total()} failures of {len(self.failures)} kinds")
        for kind, count in self.failures.most_common():
            lines.append(f"  {count:5} x {kind}\n          {self.shortest[kind][:600]}")
        return "\n".join(lines)

    def check(self, schema: schemathesis.BaseSchema) -> None:
        """Fail with the report on any failure, or when far fewer cases ran than asked, or
        none got past authentication; else print it."""
        report = self.report()
        at_least = len(schema) * len(MODES) * EXAMPLES_PER_OPERATION_AND_MODE // 2
        assert self.cases.total() >= at_least, f"fewer than {at_least} cases ran\n{report}"
        assert self.answers["2xx"] > 0, f"no case got past the door: a wrong key?\n{report}"
        if self.failures:
            pytest.fail(report, pytrace=False)
        print(f"\n{report}")


def fuzz(
    schema: schemathesis.BaseSchema,
    *,
    who: str,
    key: str,
    known: Known,
    dropped: tuple[type[BaseException], ...] = DROPPED,
) -> Tally:
    """Every operation, in both modes, with `key`; an exception of `dropped` is a failure."""
    tally = Tally(who)
    for result in schema.get_all_operations():
        for mode in MODES:
            _fuzz_operation(result.ok(), mode, key, known, dropped, tally)
    return tally


def _fuzz_operation(
    operation: schemathesis.APIOperation,
    mode: GenerationMode,
    key: str,
    known: Known,
    dropped: tuple[type[BaseException], ...],
    tally: Tally,
) -> None:
    auth = {"Authorization": f"Bearer {key}"}  # sent over whatever the fuzzer put there
    namespace = {"namespace": known.namespace} if "namespace" in operation.query else {}
    made_up = operation.as_strategy(mode)
    real = operation.as_strategy(
        mode, query=namespace, path_parameters=known.path_parameters(operation)
    )
    timeout_s = STREAM_TIMEOUT_S if operation.path.endswith("/stream") else REQUEST_TIMEOUT_S

    @_seeded_and_bounded
    @given(case=st.one_of(made_up, real))
    def run(case: schemathesis.Case) -> None:
        tally.cases[mode.value] += 1
        _cap_wait(case)
        body = {"json": _with_surrogates(case.body)} if isinstance(case.body, dict) else {}
        try:
            response = case.call(session=known.http, headers=auth, timeout=timeout_s, **body)
        except dropped as exc:
            kind = f"{type(exc).__name__}{_raised_at(exc)} on {operation.label}"
            tally.fail(kind, case.as_curl_command(auth))
            return
        tally.answers[f"{response.status_code // 100}xx"] += 1
        if response.status_code >= 500:
            kind = f"{response.status_code} {_error_code(response)} on {operation.label}"
            tally.fail(kind, case.as_curl_command(auth))

    try:
        run()
    except hypothesis.errors.Unsatisfiable:  # nothing to make invalid, e.g. no parameters
        tally.nothing_to_generate.append(f"{mode.value} {operation.label}")


def _seeded_and_bounded(test: Any) -> Any:
    bounded = settings(
        max_examples=EXAMPLES_PER_OPERATION_AND_MODE,
        deadline=None,
        database=None,
        phases=[Phase.generate],
        suppress_health_check=list(HealthCheck),
    )
    return hypothesis.seed(SEED)(bounded(test))


def _cap_wait(case: schemathesis.Case) -> None:
    wait = case.query.get("wait")
    if isinstance(wait, int | float) and wait > MAX_WAIT_S:
        case.query["wait"] = MAX_WAIT_S


def _raised_at(exc: BaseException) -> str:
    """Where the service's code raised `exc` (runs in process), or nothing."""
    ours = [
        frame
        for frame in traceback.extract_tb(exc.__traceback__)
        if frame.filename.startswith(str(ROOT))
        and not frame.filename.startswith(str(ROOT / "tests"))
        and "site-packages" not in frame.filename
    ]
    return f" at {Path(ours[-1].filename).relative_to(ROOT)}:{ours[-1].lineno}" if ours else ""


def _error_code(response: schemathesis.Response) -> str:
    try:
        return str(response.json()["error"]["code"])
    except (ValueError, KeyError, TypeError):
        return "(no error body)"


def _with_surrogates(value: Any) -> Any:
    if isinstance(value, str):
        return value.replace(LONE_SURROGATE, "\ud800")
    if isinstance(value, list):
        return [_with_surrogates(item) for item in value]
    if isinstance(value, dict):
        return {key: _with_surrogates(item) for key, item in value.items()}
    return value
