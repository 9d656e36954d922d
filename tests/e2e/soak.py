"""Requests that stay open for minutes through the ingress, started with the session's service
and checked by tests/e2e/test_ingress.py once they have lasted `SOAK_S`.

One SSE stream on an idle job (heartbeats only), and long-polls that each wait the
service's maximum (`max_wait_s`) for a change that does not come. They run on their own
threads while the rest of the suite runs, so minutes of holding cost the suite no time.
Once they are open, a deploy makes Serve reload HAProxy: they must outlive the process that
carries them being replaced (Serve's default would cut them 120 s later).
"""

from __future__ import annotations

import threading
import time
import uuid
from dataclasses import dataclass, field
from typing import Any

import httpx
from ray import serve

from tests.e2e.sse import frames

#: How long the stream and the long-polls are held before they are checked.
SOAK_S = 150.0


@dataclass
class Soak:
    url: str
    key: str
    job_id: str
    started: float = field(default_factory=time.monotonic)
    #: (monotonic time, frame) of every SSE frame or comment received.
    frames: list[tuple[float, dict[str, Any]]] = field(default_factory=list)
    #: (status code, seconds) of every finished long-poll.
    polls: list[tuple[int, float]] = field(default_factory=list)
    errors: list[BaseException] = field(default_factory=list)
    stop: threading.Event = field(default_factory=threading.Event)
    opened: threading.Event = field(default_factory=threading.Event)
    #: The code of every `error` event that ended the stream before it was opened again.
    restarts: list[str] = field(default_factory=list)
    #: The error code of every long-poll that ended in 503 (it is asked again).
    interrupted: list[str] = field(default_factory=list)
    threads: list[threading.Thread] = field(default_factory=list)

    def headers(self) -> dict[str, str]:
        return {"Authorization": f"Bearer {self.key}"}

    def stream(self) -> None:
        """Read the stream as EventSource would: after an `error` event (the suite kills
        shard actors; a stream whose shard restarts ends with `shard_unavailable`) open it
        again with Last-Event-ID. The connection itself must never be cut."""
        last_id = None
        try:
            with httpx.Client(base_url=self.url, headers=self.headers(), timeout=30) as http:
                while True:
                    headers = {"Last-Event-ID": last_id} if last_id else {}
                    path = f"/api/v1/jobs/{self.job_id}/stream"
                    with http.stream("GET", path, headers=headers) as response:
                        if response.status_code == 503:  # the shard is still restarting
                            time.sleep(float(response.headers.get("Retry-After", "1")))
                            continue
                        response.raise_for_status()
                        for frame in frames(response):
                            self.frames.append((time.monotonic(), frame))
                            self.opened.set()
                            last_id = frame.get("id", last_id)
                            if frame.get("event") == "end":
                                return
                            if frame.get("event") == "error":
                                self.restarts.append(frame["data"]["code"])
                                break
                        else:
                            raise AssertionError("the stream ended without an event saying why")
        except BaseException as exc:  # kept for the test to report
            self.errors.append(exc)

    def long_polls(self, etag: str, wait_s: float) -> None:
        try:
            with httpx.Client(
                base_url=self.url, headers=self.headers(), timeout=wait_s + 30
            ) as http:
                while not self.stop.is_set():
                    began = time.monotonic()
                    answer = http.get(
                        f"/api/v1/jobs/{self.job_id}/status",
                        params={"wait": wait_s},
                        headers={"If-None-Match": etag},
                    )
                    if answer.status_code == 503:  # its shard restarted: ask again, as clients do
                        self.interrupted.append(answer.json()["error"]["code"])
                        time.sleep(float(answer.headers.get("Retry-After", "1")))
                        continue
                    self.polls.append((answer.status_code, time.monotonic() - began))
                    if answer.status_code != 304:
                        return
        except BaseException as exc:
            self.errors.append(exc)


def start(url: str, admin_key: str, *, max_wait_s: float) -> Soak:
    """A namespace, a key and an idle job; the stream and the long-polls begin now."""
    admin = {"Authorization": f"Bearer {admin_key}"}
    name = f"soak-{uuid.uuid4().hex[:8]}"
    with httpx.Client(base_url=url, headers=admin, timeout=30) as http:
        http.post("/api/v1/namespaces", json={"name": name}).raise_for_status()
        key = http.post(f"/api/v1/namespaces/{name}/keys").json()["key"]
    soak = Soak(url, key, job_id="idle")
    with httpx.Client(base_url=url, headers=soak.headers(), timeout=30) as http:
        http.post("/api/v1/jobs", json={"jobId": soak.job_id}).raise_for_status()
        etag = http.get(f"/api/v1/jobs/{soak.job_id}/status").headers["etag"]
    soak.threads = [
        threading.Thread(target=soak.stream, name="soak-stream", daemon=True),
        threading.Thread(
            target=soak.long_polls, args=(etag, max_wait_s), name="soak-poll", daemon=True
        ),
    ]
    for thread in soak.threads:
        thread.start()
    if not soak.opened.wait(30):
        raise RuntimeError("the held stream did not open")
    serve.run(_reload.bind(), name="soak-reload", route_prefix="/soak-reload")
    serve.delete("soak-reload")
    return soak


@serve.deployment(ray_actor_options={"num_cpus": 0})
def _reload(request: object) -> str:
    """A deployment whose coming and going makes Serve reload HAProxy."""
    return "reloaded"
