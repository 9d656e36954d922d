"""What the history checker (tests/history.py) recorded, and the check of it against what the
service holds, read back through the API."""

from __future__ import annotations

import asyncio
import time
from collections import Counter
from dataclasses import dataclass, field
from typing import Any

import httpx

#: How long a read-back retries a 503 (a shard restarting, the store coming back).
READ_BACK_S = 60.0
_FINISHED = {"complete": "Succeeded", "cancel": "Cancelled"}


@dataclass
class JobHistory:
    """One job as its producer saw it. Outcomes: acked (a 2xx), unknown (never answered),
    refused (an unexpected 4xx, reported as bad)."""

    namespace: str
    job_id: str
    submitted: str = "unknown"
    #: (seq, bytes, outcome), in the order sent.
    chunks: list[tuple[int, bytes, str]] = field(default_factory=list)
    #: ("complete" | "cancel", outcome), when the producer finished the job.
    finish: tuple[str, str] | None = None


@dataclass
class Report:
    """Counts, every answer, and each breach of the contract, as one line saying what."""

    #: `time.monotonic()` at the start: the timeline's zero.
    started: float = 0.0
    answers: Counter[int] = field(default_factory=Counter)
    #: The error codes of the answers that were not 2xx, e.g. "503 store_unavailable".
    codes: Counter[str] = field(default_factory=Counter)
    #: (seconds since the start, status; 0 = no answer in time, -1 = connection lost).
    timeline: list[tuple[float, int]] = field(default_factory=list)
    #: When the fault callback started and returned (seconds since the start).
    fault_s: tuple[float, float] | None = None
    #: The longest any request took to be answered (seconds).
    slowest_s: float = 0.0
    acked: Counter[str] = field(default_factory=Counter)
    unknown: Counter[str] = field(default_factory=Counter)
    bad: list[str] = field(default_factory=list)
    transport_errors: list[str] = field(default_factory=list)
    lost: list[str] = field(default_factory=list)
    duplicated: list[str] = field(default_factory=list)
    gaps: list[str] = field(default_factory=list)
    foreign: list[str] = field(default_factory=list)
    wrong_status: list[str] = field(default_factory=list)

    @property
    def ok(self) -> bool:
        breaches = (self.bad, self.lost, self.duplicated, self.gaps, self.foreign)
        return not any(breaches) and not self.wrong_status

    def first(self, after_s: float, *, ok: bool) -> float | None:
        """When the first 2xx (`ok`) or first answer that is not one came, at or after
        `after_s`; None if none did."""
        for at, status in self.timeline:
            if at >= after_s and (200 <= status < 300) == ok:
                return at
        return None

    def summary(self) -> str:
        problems = {
            "lost": self.lost,
            "duplicated": self.duplicated,
            "gaps": self.gaps,
            "foreign": self.foreign,
            "wrong status": self.wrong_status,
            "bad answers": self.bad,
        }
        lines = [
            f"acked {dict(self.acked)}, unknown {dict(self.unknown)}, "
            f"answers {dict(sorted(self.answers.items()))}, {dict(self.codes)}, "
            f"fault {self.fault_s}, slowest answer {self.slowest_s:.2f} s",
            *(f"{name}: {len(found)}" for name, found in problems.items()),
        ]
        lines += [f"  {line}" for found in problems.values() for line in found[:10]]
        return "\n".join(lines)


async def verify(
    http: httpx.AsyncClient, jobs: list[JobHistory], namespaces: list[str], report: Report
) -> None:
    """Read every job back and fill `report`'s counts and breaches."""
    for job in jobs:
        _count(job, report)
        if job.submitted != "unknown" or job.chunks:
            await _check_job(http, job, report)
    sent = {(job.namespace, job.job_id) for job in jobs}
    for namespace in namespaces:
        for job_id in await _listed(http, namespace):
            if (namespace, job_id) not in sent:
                report.foreign.append(f"{namespace}/{job_id}: a job nobody submitted")


def _count(job: JobHistory, report: Report) -> None:
    outcomes = [("submit", job.submitted)] + [("append", c[2]) for c in job.chunks]
    if job.finish is not None:
        outcomes.append(job.finish)
    for kind, outcome in outcomes:
        if outcome == "acked":
            report.acked[kind] += 1
        elif outcome == "unknown":
            report.unknown[kind] += 1


async def _check_job(http: httpx.AsyncClient, job: JobHistory, report: Report) -> None:
    name = f"{job.namespace}/{job.job_id}"
    params = {"namespace": job.namespace}
    status = await _read(http, f"/api/v1/jobs/{job.job_id}/status", params)
    if status.status_code == 404:
        if job.submitted == "acked":
            report.lost.append(f"{name}: an acknowledged submit is gone")
        return
    raw = await _read(http, f"/api/v1/jobs/{job.job_id}/output/raw", params)
    _check_output(name, job, status.json(), raw.content, report)
    _check_status(name, job, status.json()["status"], report)


def _check_output(
    name: str, job: JobHistory, status: dict[str, Any], raw: bytes, report: Report
) -> None:
    sent = {seq: data for seq, data, _ in job.chunks}
    seqs: list[int] = []
    for token in raw.split(b";")[:-1] if raw else []:
        owner, _, rest = token.partition(b":")
        seq_text = rest.partition(b":")[0]
        seq = int(seq_text) if seq_text.isdigit() else -1
        if owner.decode(errors="replace") != job.job_id or sent.get(seq) != token + b";":
            report.foreign.append(f"{name}: holds {token[:60]!r}, which nobody appended")
        seqs.append(seq)
    if raw and not raw.endswith(b";"):
        report.foreign.append(f"{name}: its output ends in a torn chunk {raw[-60:]!r}")
    for seq, count in Counter(seqs).items():
        if count > 1:
            report.duplicated.append(f"{name}: seq {seq} is there {count} times")
    if sorted(set(seqs)) != list(range(1, len(set(seqs)) + 1)) or seqs != sorted(seqs):
        report.gaps.append(f"{name}: seqs {seqs} are not 1..n in order")
    if status.get("outputSeq") != len(seqs):
        report.gaps.append(f"{name}: outputSeq {status.get('outputSeq')}, {len(seqs)} chunks")
    for seq, _, outcome in job.chunks:
        if outcome == "acked" and seq not in seqs:
            report.lost.append(f"{name}: acknowledged seq {seq} is gone")


def _check_status(name: str, job: JobHistory, status: str, report: Report) -> None:
    how, outcome = job.finish or ("", "")
    target = _FINISHED.get(how)
    allowed = {"Running"}
    if target is not None:  # when not acknowledged (unknown, refused): either
        allowed = {target} if outcome == "acked" else {"Running", target}
    if status not in allowed:
        report.wrong_status.append(f"{name}: {status}, expected one of {sorted(allowed)}")


async def _listed(http: httpx.AsyncClient, namespace: str) -> list[str]:
    ids: list[str] = []
    cursor: str | None = None
    while True:
        params = {"namespace": namespace, "limit": "1000"} | ({"cursor": cursor} if cursor else {})
        page = (await _read(http, "/api/v1/jobs", params)).json()
        ids.extend(item["jobId"] for item in page["items"])
        cursor = page.get("nextCursor")
        if not cursor:
            return ids


async def _read(http: httpx.AsyncClient, path: str, params: dict[str, str]) -> httpx.Response:
    """GET, retrying a 503 (or no answer) for up to `READ_BACK_S`: reads are safe to repeat."""
    deadline = time.monotonic() + READ_BACK_S
    while True:
        try:
            response = await http.get(path, params=params)
            if response.status_code != 503:
                if response.status_code not in (200, 404):
                    raise AssertionError(f"GET {path}: {response.status_code} {response.text}")
                return response
        except httpx.TransportError:
            if time.monotonic() > deadline:
                raise
        if time.monotonic() > deadline:
            raise AssertionError(f"GET {path} answered 503 for {READ_BACK_S} s")
        await asyncio.sleep(0.5)
