"""A producer appending over HTTP with `?seq=`, retrying each 503 as a client should, and
recording every answer: what tests/e2e/test_nodes.py and bench/nodeloss.py check."""

from __future__ import annotations

import itertools
import threading
import time
from dataclasses import dataclass, field

import httpx

#: How long one request may take before the producer counts it as unanswered (a hang).
REQUEST_TIMEOUT_S = 90.0
#: The longest the producer sleeps after a 503, whatever `Retry-After` says.
MAX_BACKOFF_S = 1.0


@dataclass(frozen=True)
class Answer:
    seq: int
    status: int  # 0: no answer (timeout, connection refused)
    retry_after: str | None
    code: str | None
    at: float  # time.monotonic() when it was sent
    took_s: float


@dataclass
class Appender:
    """Appends `"<seq>,"` to one job, seq 1, 2, ...; the next seq only after a 2xx."""

    url: str
    headers: dict[str, str]
    namespace: str
    job_id: str
    answers: list[Answer] = field(default_factory=list)
    #: (seq, time.monotonic()) of each acknowledged append, in order.
    acked: list[tuple[int, float]] = field(default_factory=list)
    stop: threading.Event = field(default_factory=threading.Event)
    _thread: threading.Thread | None = None

    def start(self) -> Appender:
        self._thread = threading.Thread(target=self._run, daemon=True)
        self._thread.start()
        return self

    def finish(self, timeout_s: float = 120.0) -> None:
        """Stop after the next acknowledged append (so every append sent was answered 2xx)."""
        self.stop.set()
        assert self._thread is not None
        self._thread.join(timeout_s)
        assert not self._thread.is_alive(), "the producer got no 2xx to stop on"

    def _run(self) -> None:
        params = {"namespace": self.namespace}
        with httpx.Client(
            base_url=self.url, headers=self.headers, timeout=REQUEST_TIMEOUT_S
        ) as http:
            seq = 1
            while True:
                answer = self._send(http, params | {"seq": str(seq)}, seq)
                self.answers.append(answer)
                if 200 <= answer.status < 300:
                    self.acked.append((seq, answer.at + answer.took_s))
                    seq += 1
                    if self.stop.is_set():
                        return
                else:
                    time.sleep(min(float(answer.retry_after or 0.1), MAX_BACKOFF_S))

    def _send(self, http: httpx.Client, params: dict[str, str], seq: int) -> Answer:
        path = f"/api/v1/jobs/{self.job_id}/output"
        started = time.monotonic()
        try:
            response = http.post(path, params=params, content=f"{seq},")
        except httpx.HTTPError:
            return Answer(seq, 0, None, None, started, time.monotonic() - started)
        code = None
        if response.status_code >= 400:
            try:
                code = response.json()["error"]["code"]
            except (ValueError, KeyError, TypeError):
                code = response.text[:80]
        return Answer(
            seq,
            response.status_code,
            response.headers.get("retry-after"),
            code,
            started,
            time.monotonic() - started,
        )

    def longest_gap_s(self, since: float = 0.0) -> float:
        """The longest time between two acknowledged appends (from `since`, when given)."""
        times = [since] if since else []
        times += [at for _, at in self.acked if at >= since]
        return max((b - a for a, b in itertools.pairwise(times)), default=0.0)

    def bad_answers(self) -> list[Answer]:
        """Answers that break the rule: anything but a 2xx or a 503 with `Retry-After`."""
        return [
            a
            for a in self.answers
            if not (200 <= a.status < 300 or (a.status == 503 and a.retry_after))
        ]

    def expected_output(self) -> str:
        return "".join(f"{seq}," for seq, _ in self.acked)
