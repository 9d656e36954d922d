"""The HTTP throughput benchmark: wrk against the service, each rate beside a no-op ceiling.

One command: `.venv/bin/python bench/http.py [--quick] [--ingress haproxy|serve]` (see
bench/README.md). The ceilings (a no-op FastAPI app on bare uvicorn, and on the same Serve
in the same ingress mode as the service) and the service's rates come from the same run:
this machine is shared and noisy, so the ratio is the figure to watch.
"""

from __future__ import annotations

import argparse
import asyncio
import collections
import json
import os
import shutil
import socket
import subprocess
import sys
import tempfile
import time
import uuid
from collections.abc import Iterator, Mapping
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

HERE = Path(__file__).resolve().parent
ROOT = HERE.parent
# `python bench/http.py` puts bench/ first on the path, where this file shadows the standard
# library's `http` (httpx and uvicorn import it, and Ray gives its workers the driver's
# script folder too): take bench/ off, put the repository on.
sys.path[:] = [entry for entry in sys.path if Path(entry or ".").resolve() != HERE]
sys.path.insert(0, str(ROOT))

import httpx  # noqa: E402
import ray  # noqa: E402
from fastapi import FastAPI  # noqa: E402
from pydantic import SecretStr  # noqa: E402
from ray import serve  # noqa: E402
from websockets.asyncio.client import ClientConnection, connect  # noqa: E402
from websockets.exceptions import InvalidStatus, WebSocketException  # noqa: E402

from cluster import bootstrap, ray_connect  # noqa: E402
from cluster.ingress import HAPROXY, SERVE_PROXY, Ingress  # noqa: E402
from cluster.settings import Settings  # noqa: E402
from serve_app.deployment import OPTIONS as API_OPTIONS  # noqa: E402

HOST = "127.0.0.1"
ADMIN_KEY = "bench"
NAMESPACE = "bench"
NUM_SHARDS = 4
NOOP_APP = "noop"
LUA = HERE / "wrk" / "aos.lua"
WRK_MARK = "AOS-WRK "
WRK_THREADS = 2
WRK_TIMEOUT_S = 30
WARMUP_S = 1
JOBS_SPREAD = 100  # the jobs status and append requests cycle through
BATCH_PATH = "/api/v1/jobs:batch"
BATCH_JOBS = 1000
BATCH_CONNECTIONS = 4
CHUNK_BYTES = 1024
WS_TIMEOUT_S = 120.0
WS_EXTRA_ACK_WAIT_S = 0.5
SUBMIT_BODY = json.dumps({"metadata": {"title": "t", "tags": ["a"]}}).encode()
APPEND_BODY = b"x" * (CHUNK_BYTES - 1) + b"\n"
TARGET_SUBMIT_RATIO = 0.35
TARGET_STATUS_RATIO = 0.5
TARGET_SUBMIT_P99_MS = 100.0
TARGET_STATUS_P99_MS = 50.0
TARGET_BATCH_JOBS_S = 10_000
TARGET_WS_APPENDS_S = 3000
STARTED = time.perf_counter()


@dataclass(frozen=True)
class Sizes:
    duration_s: int
    ws_chunks: int


FULL = Sizes(duration_s=10, ws_chunks=5000)
QUICK = Sizes(duration_s=5, ws_chunks=2000)


# -- the ceilings: a FastAPI app that does nothing -----------------------------------------

noop_api = FastAPI(title="noop ceiling")


@noop_api.post("/jobs", status_code=201)
async def noop_submit(body: dict[str, Any]) -> dict[str, bool]:
    return {"ok": True}


@noop_api.get("/status")
async def noop_status() -> dict[str, str]:
    return {"jobId": "noop", "status": "Running"}


@serve.deployment(name="Noop", **API_OPTIONS)
@serve.ingress(noop_api)
class Noop:
    """What HTTP, the ingress and FastAPI cost on their own, with `Api`'s options."""


# -- wrk ----------------------------------------------------------------------------------


@dataclass(frozen=True)
class Load:
    """What wrk sends: one method, the paths it cycles through, a body for every request."""

    method: str
    paths: tuple[str, ...]
    body: bytes | None = None
    headers: tuple[tuple[str, str], ...] = ()


@dataclass(frozen=True)
class Wrk:
    """One wrk run's figures, as bench/wrk/aos.lua's `done` hook prints them."""

    requests: int
    duration_s: float
    non2xx: int
    socket_errors: int
    p50_ms: float
    p99_ms: float

    @classmethod
    def parse(cls, output: str) -> Wrk:
        line = next((ln for ln in output.splitlines() if ln.startswith(WRK_MARK)), None)
        if line is None:
            raise RuntimeError(f"wrk printed no figures:\n{output}")
        f = json.loads(line.removeprefix(WRK_MARK))
        return cls(
            requests=f["requests"],
            duration_s=f["duration_us"] / 1e6,
            non2xx=f["non2xx"],
            socket_errors=f["socket_errors"],
            p50_ms=f["p50_us"] / 1e3,
            p99_ms=f["p99_us"] / 1e3,
        )

    @property
    def per_s(self) -> float:
        return self.requests / self.duration_s

    @property
    def errors(self) -> str:
        """'' when every answer was 2xx and no socket failed, else what went wrong."""
        if not (self.non2xx or self.socket_errors):
            return ""
        return f" [FLAGGED: non-2xx {self.non2xx}, socket errors {self.socket_errors}]"

    def __str__(self) -> str:
        return f"{self.per_s:.0f} req/s p50 {self.p50_ms:.1f} ms p99 {self.p99_ms:.1f} ms"


def run_wrk(base_url: str, load: Load, *, connections: int, duration_s: int) -> Wrk:
    """wrk with bench/wrk/aos.lua: `connections` keep-alive connections for `duration_s`."""
    with tempfile.TemporaryDirectory(prefix="aos-wrk-") as tmp:
        env = {**os.environ, "AOS_WRK_METHOD": load.method}
        if load.body is not None:
            env["AOS_WRK_BODY"] = str(Path(tmp, "body"))
            Path(tmp, "body").write_bytes(load.body)
        if len(load.paths) > 1:
            env["AOS_WRK_PATHS"] = str(Path(tmp, "paths"))
            Path(tmp, "paths").write_text("".join(f"{path}\n" for path in load.paths))
        command = [
            "wrk", f"-t{min(WRK_THREADS, connections)}", f"-c{connections}",
            f"-d{duration_s}s", f"--timeout={WRK_TIMEOUT_S}s", f"--script={LUA}",
        ]  # fmt: skip
        for name, value in load.headers:
            command += ["-H", f"{name}: {value}"]
        done = subprocess.run(
            [*command, base_url + load.paths[0]],
            env=env,
            capture_output=True,
            text=True,
            timeout=duration_s + WRK_TIMEOUT_S + 60,
            check=False,
        )
    if done.returncode != 0:
        raise RuntimeError(f"wrk failed ({done.returncode}): {done.stderr or done.stdout}")
    return Wrk.parse(done.stdout)


@dataclass(frozen=True)
class Figure:
    """A measured rate, and the ceiling it is a ratio to (none for a ceiling of its own)."""

    name: str
    wrk: Wrk
    ceiling: Figure | None = None

    @property
    def ratio(self) -> float:
        assert self.ceiling is not None
        return self.wrk.per_s / self.ceiling.wrk.per_s

    def __str__(self) -> str:
        text = f"{self.name}: {self.wrk}"
        if self.ceiling is not None:
            text += f" ratio {self.ratio:.2f} (to {self.ceiling.name})"
        return text + self.wrk.errors


@dataclass(frozen=True)
class Bench:
    """How every rate of this run is measured."""

    connections: int
    duration_s: int

    def figure(
        self, name: str, base_url: str, load: Load, ceiling: Figure | None = None, **options: Any
    ) -> Figure:
        """A warm-up, then the measured run, printed as it comes."""
        options = {"connections": self.connections, **options}
        run_wrk(base_url, load, duration_s=WARMUP_S, **options)
        wrk = run_wrk(base_url, load, duration_s=self.duration_s, **options)
        measured = Figure(name, wrk, ceiling)
        print(f"  {measured}", flush=True)
        return measured


def json_post(path: str, body: bytes, *headers: tuple[str, str]) -> Load:
    return Load("POST", (path,), body, (("Content-Type", "application/json"), *headers))


# -- the processes: bare uvicorn, Ray with the service and the Serve no-op -------------------


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind((HOST, 0))
        port: int = sock.getsockname()[1]
        return port


@contextmanager
def bare_uvicorn() -> Iterator[str]:
    """The no-op app on uvicorn (httptools, uvloop, one worker) in a subprocess; its URL."""
    port = free_port()
    server = subprocess.Popen(
        [
            sys.executable, "-m", "uvicorn", "bench.http:noop_api", f"--host={HOST}",
            f"--port={port}", "--http=httptools", "--loop=uvloop", "--workers=1",
            "--log-level=warning", "--no-access-log",
        ],
        cwd=ROOT,
    )  # fmt: skip
    url = f"http://{HOST}:{port}"
    try:
        wait_until_up(f"{url}/status", server)
        yield url
    finally:
        server.terminate()
        try:
            server.wait(timeout=10)
        except subprocess.TimeoutExpired:
            server.kill()
            server.wait()


def wait_until_up(url: str, server: subprocess.Popen[bytes], timeout_s: float = 60) -> None:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if server.poll() is not None:
            raise RuntimeError(f"uvicorn exited with {server.returncode}")
        try:
            if httpx.get(url, timeout=1).status_code == 200:
                return
        except httpx.TransportError:
            pass
        time.sleep(0.2)
    raise RuntimeError(f"uvicorn did not answer at {url} within {timeout_s:.0f} s")


def marked_processes(run_var: str, kinds: Mapping[str, str]) -> dict[int, str]:
    """pid -> name of this run's processes (those whose environment holds `run_var` as this
    process has it; Ray's workers and Serve's HAProxy inherit it) whose command line holds
    a key of `kinds` (the last such key names it)."""
    mark = f"{run_var}={os.environ[run_var]}".encode()
    found = {}
    for pid in (int(entry) for entry in os.listdir("/proc") if entry.isdigit()):
        try:
            if mark not in Path(f"/proc/{pid}/environ").read_bytes():
                continue
            cmd = Path(f"/proc/{pid}/cmdline").read_bytes().replace(b"\0", b" ").decode()
        except OSError:
            continue
        for part, name in kinds.items():
            if part in cmd:
                found[pid] = name
    return found


def service_settings(data_dir: str | Path, admin_key: str, **chosen: Any) -> Settings:
    """A benchmark's service: SQLite in `data_dir`, on free ports of HOST (the API, HAProxy's
    stats and metrics, Serve's fallback proxy), `admin_key`, and `chosen` settings (e.g.
    `num_shards`, `ingress`); everything else from AOS_* as `aos serve` reads it."""
    return Settings(
        storage_url=f"sqlite:///{data_dir}/aos.db",
        http_host=HOST,
        http_port=free_port(),
        haproxy_stats_port=free_port(),
        haproxy_metrics_port=free_port(),
        fallback_proxy_port=free_port(),
        admin_key=SecretStr(admin_key),
        **chosen,
    )


def start(data_dir: str, ingress: Ingress) -> tuple[bootstrap.Service, str]:
    """Ray, the service, the no-op Serve app, and a namespace key. Returns (service, key)."""
    # log_to_driver=False: the replicas' access logs (one line a request) would flood this output.
    ray_connect.connect(None, log_to_driver=False)  # a private cluster, never another's
    settings = service_settings(data_dir, ADMIN_KEY, ingress=ingress, num_shards=NUM_SHARDS)
    service = bootstrap.start(settings)
    # The ceiling runs as many replicas as the service's `Api`, with the same options.
    noop = Noop.options(num_replicas=settings.num_replicas)  # type: ignore[attr-defined]
    serve.run(noop.bind(), name=NOOP_APP, route_prefix=f"/{NOOP_APP}")
    return service, create_key(service.url)


def create_key(url: str) -> str:
    admin = {"Authorization": f"Bearer {ADMIN_KEY}"}
    with httpx.Client(base_url=url, headers=admin, timeout=30) as http:
        http.post("/api/v1/namespaces", json={"name": NAMESPACE}).raise_for_status()
        created = http.post(f"/api/v1/namespaces/{NAMESPACE}/keys")
        created.raise_for_status()
        key: str = created.json()["key"]
        return key


def stop(service: bootstrap.Service | None) -> None:
    """Delete the no-op app and the service; ending Ray ends Serve with it."""
    try:
        if service is not None:
            serve.delete(NOOP_APP)
            bootstrap.stop(service)
    finally:
        ray.shutdown()


def create_jobs(url: str, key: str, run: str) -> list[str]:
    """`JOBS_SPREAD` Running jobs to read the status of and append to; their ids."""
    job_ids = [f"{run}-{i}" for i in range(JOBS_SPREAD)]
    auth = {"Authorization": f"Bearer {key}"}
    with httpx.Client(base_url=url, headers=auth, timeout=30) as http:
        for job_id in job_ids:
            body = {"jobId": job_id, **json.loads(SUBMIT_BODY)}
            http.post("/api/v1/jobs", json=body).raise_for_status()
    return job_ids


# -- the figures ----------------------------------------------------------------------------


@dataclass(frozen=True)
class Figures:
    """The wrk figures, in the order they are measured."""

    uvicorn_get: Figure
    uvicorn_post: Figure
    serve_get: Figure
    status: Figure
    serve_post: Figure
    submit: Figure
    append: Figure


def wrk_figures(bench: Bench, url: str, key: str, job_ids: list[str]) -> Figures:
    """The ceilings and the service's rates. Each rate is measured right after the Serve
    no-op ceiling it is a ratio to, so the machine's load drifts little between the two."""
    auth = ("Authorization", f"Bearer {key}")
    with bare_uvicorn() as bare:
        uvicorn_get = bench.figure("bare uvicorn GET", bare, Load("GET", ("/status",)))
        uvicorn_post = bench.figure("bare uvicorn POST", bare, json_post("/jobs", SUBMIT_BODY))
    noop_get = Load("GET", (f"/{NOOP_APP}/status",))
    serve_get = bench.figure("serve no-op GET", url, noop_get, uvicorn_get)
    status_paths = tuple(f"/api/v1/jobs/{job_id}/status" for job_id in job_ids)
    status = bench.figure("status", url, Load("GET", status_paths, None, (auth,)), serve_get)
    noop_post = json_post(f"/{NOOP_APP}/jobs", SUBMIT_BODY)
    serve_post = bench.figure("serve no-op POST", url, noop_post, uvicorn_post)
    submit_load = json_post("/api/v1/jobs", SUBMIT_BODY, auth)
    submit = bench.figure("submit", url, submit_load, serve_post)
    output_paths = tuple(f"/api/v1/jobs/{job_id}/output" for job_id in job_ids)
    append_load = Load("POST", output_paths, APPEND_BODY, (auth,))
    append = bench.figure("append", url, append_load, serve_post)
    return Figures(uvicorn_get, uvicorn_post, serve_get, status, serve_post, submit, append)


@dataclass(frozen=True)
class Outcome:
    """A figure whose route may not be there yet: its line, and its rate when measured."""

    line: str
    per_s: float | None = None
    clean: bool = True


def batch(bench: Bench, url: str, key: str) -> Outcome:
    """Jobs/s of `POST /api/v1/jobs:batch`, 1,000 jobs (without ids: each one new) a request,
    once a sample request made with httpx has answered 201 for every item."""
    auth = ("Authorization", f"Bearer {key}")
    body = json.dumps({"jobs": [json.loads(SUBMIT_BODY)] * BATCH_JOBS}).encode()
    load = json_post(BATCH_PATH, body, auth)
    sample = httpx.post(url + BATCH_PATH, content=body, headers=dict(load.headers), timeout=60)
    if sample.status_code == 404:
        return Outcome("batch: not available (404)")
    if sample.status_code != 200:
        return Outcome(f"batch: FAILED, the sample: {sample.status_code} {sample.text[:300]}")
    statuses = collections.Counter(item["status"] for item in sample.json()["items"])
    if statuses != {201: BATCH_JOBS}:
        return Outcome(f"batch: FAILED, the sample's item statuses: {dict(statuses)}")
    figure = bench.figure("batch requests", url, load, connections=BATCH_CONNECTIONS)
    jobs_s = figure.wrk.per_s * BATCH_JOBS
    line = (
        f"batch: {jobs_s:.0f} jobs/s ({figure.wrk} of {BATCH_JOBS} jobs, {BATCH_CONNECTIONS}"
        f" connections; a sample's {BATCH_JOBS} items all 201){figure.wrk.errors}"
    )
    return Outcome(line, jobs_s, not figure.wrk.errors)


# -- WebSocket appends ---------------------------------------------------------------------


def chunks(n: int) -> list[str]:
    """`n` distinct 1 KiB text chunks (their numbers first), each ending in a newline."""
    return [f"{i:08d} ".ljust(CHUNK_BYTES - 1, "x") + "\n" for i in range(n)]


def check_acks(acks: list[dict[str, Any]], n: int) -> list[str]:
    """Every chunk acknowledged exactly once, in order: seq 1..n, offsets back to back."""
    expected = [{"seq": i + 1, "offset": i * CHUNK_BYTES, "size": CHUNK_BYTES} for i in range(n)]
    if acks == expected:
        return []
    wrong = next((i for i, (a, e) in enumerate(zip(acks, expected, strict=False)) if a != e), None)
    where = f"; first wrong: #{wrong + 1} {acks[wrong]}" if wrong is not None else ""
    return [f"{len(acks)} acks for {n} chunks{where}"]


async def produce(ws: ClientConnection, texts: list[str]) -> tuple[list[dict[str, Any]], float]:
    """Send every chunk from one task while this one reads the acks; (acks, seconds from the
    first send to the last ack)."""
    start = time.perf_counter()

    async def send() -> None:
        for text in texts:
            await ws.send(text)

    sender = asyncio.create_task(send())
    acks = [json.loads(await ws.recv()) for _ in texts]
    elapsed = time.perf_counter() - start
    await sender
    try:  # an ack sent twice would be here by now
        acks.append(json.loads(await asyncio.wait_for(ws.recv(), WS_EXTRA_ACK_WAIT_S)))
    except TimeoutError:
        pass
    return acks, elapsed


async def stream_chunks(url: str, key: str, job_id: str, n: int) -> Outcome:
    """One producer on `/output/ws`: `n` chunks, their acks checked, the output read back."""
    auth = {"Authorization": f"Bearer {key}"}
    ws_url = url.replace("http://", "ws://", 1) + f"/api/v1/jobs/{job_id}/output/ws"
    texts = chunks(n)
    try:
        async with connect(ws_url, additional_headers=auth, compression=None) as ws:
            acks, elapsed_s = await asyncio.wait_for(produce(ws, texts), WS_TIMEOUT_S)
    except InvalidStatus as exc:  # Starlette refuses a WebSocket it has no route for with 403
        return Outcome(f"websocket: not available ({exc.response.status_code})")
    problems = check_acks(acks, n)
    async with httpx.AsyncClient(base_url=url, headers=auth, timeout=60) as http:
        raw = await http.get(f"/api/v1/jobs/{job_id}/output/raw")
    if raw.content != "".join(texts).encode():
        problems.append(f"read back {len(raw.content)} bytes, not the {n * CHUNK_BYTES} sent")
    checked = "; ".join(problems) or "every chunk acked once, in order, and read back exactly"
    line = (
        f"websocket: {n / elapsed_s:.0f} appends/s ({n} chunks of {CHUNK_BYTES} bytes in"
        f" {elapsed_s:.2f} s, one producer; {checked}){' [FLAGGED]' if problems else ''}"
    )
    return Outcome(line, n / elapsed_s, not problems)


def websocket(url: str, key: str, run: str, n: int) -> Outcome:
    """WebSocket appends/s into a fresh job, or why there is no figure."""
    job_id = f"{run}-ws"
    auth = {"Authorization": f"Bearer {key}"}
    created = httpx.post(f"{url}/api/v1/jobs", json={"jobId": job_id}, headers=auth, timeout=30)
    created.raise_for_status()
    try:
        return asyncio.run(stream_chunks(url, key, job_id, n))
    except (WebSocketException, OSError, TimeoutError, ValueError) as exc:  # ValueError: not JSON
        return Outcome(f"websocket: FAILED ({type(exc).__name__}: {exc})", clean=False)


# -- the run --------------------------------------------------------------------------------


def section(title: str) -> None:
    print(f"\n== [{time.perf_counter() - STARTED:4.0f} s] {title}", flush=True)


@dataclass(frozen=True)
class Results:
    figures: Figures
    batch: Outcome
    websocket: Outcome


def measure_all(bench: Bench, sizes: Sizes, ingress: Ingress) -> Results:
    """Everything, with Ray and the service up only meanwhile."""
    run = uuid.uuid4().hex[:8]
    service = None
    with tempfile.TemporaryDirectory(prefix="aos-bench-http-") as tmp:
        try:
            section(f"starting Ray, the service ({ingress} ingress) and the Serve no-op app")
            service, key = start(tmp, ingress)
            job_ids = create_jobs(service.url, key, run)
            section(
                f"wrk -t{WRK_THREADS} -c{bench.connections} -d{bench.duration_s}s after a"
                f" {WARMUP_S} s warm-up; each rate right after its ceiling"
            )
            figures = wrk_figures(bench, service.url, key, job_ids)
            section(f"batch submit: {BATCH_JOBS} jobs a request, {BATCH_CONNECTIONS} connections")
            batched = batch(bench, service.url, key)
            print(f"  {batched.line}", flush=True)
            section(f"WebSocket appends: one producer, {sizes.ws_chunks} chunks of 1 KiB")
            streamed = websocket(service.url, key, run, sizes.ws_chunks)
            print(f"  {streamed.line}", flush=True)
        finally:
            section("tearing down")
            stop(service)
    return Results(figures, batched, streamed)


def target(text: str, ok: bool) -> str:
    return f"{text} {'met' if ok else 'MISSED'}"


def summary(results: Results) -> list[str]:
    """Every figure again, each with its targets; the last line is the machine-readable one."""
    f = results.figures
    submit, status = f.submit, f.status
    batched, streamed = results.batch, results.websocket
    lines = [str(c) for c in (f.uvicorn_get, f.uvicorn_post, f.serve_get, f.serve_post)]
    lines += [
        f"{submit}; target {target('ratio >= 0.35', submit.ratio >= TARGET_SUBMIT_RATIO)},"
        f" {target('p99 < 100 ms', submit.wrk.p99_ms < TARGET_SUBMIT_P99_MS)}",
        f"{status}; target {target('ratio >= 0.5', status.ratio >= TARGET_STATUS_RATIO)},"
        f" {target('p99 < 50 ms', status.wrk.p99_ms < TARGET_STATUS_P99_MS)}",
        f"{f.append}; 1 KiB chunks over {JOBS_SPREAD} jobs",
        batched.line,
        streamed.line,
    ]
    if batched.per_s is not None:
        ok = batched.per_s >= TARGET_BATCH_JOBS_S and batched.clean
        lines[-2] += "; target " + target(">= 10,000 jobs/s", ok)
    if streamed.per_s is not None:
        ok = streamed.per_s >= TARGET_WS_APPENDS_S and streamed.clean
        lines[-1] += "; target " + target(">= 3,000 appends/s, each acked once, exact", ok)
    fastest = max(fig.wrk.per_s for fig in (submit, status, f.append))
    lines += [
        f"generator: wrk drove bare uvicorn at {f.uvicorn_get.wrk.per_s:.0f} req/s,"
        f" {f.uvicorn_get.wrk.per_s / fastest:.1f}x the service's fastest rate here",
        f"http: submit {submit.ratio:.2f} status {status.ratio:.2f} of the Serve no-op ceiling;"
        f" submit p99 {submit.wrk.p99_ms:.1f} ms status p99 {status.wrk.p99_ms:.1f} ms;"
        f" batch {rounded(batched.per_s)} jobs/s; websocket {rounded(streamed.per_s)} appends/s",
    ]
    return lines


def rounded(per_s: float | None) -> str:
    return "n/a" if per_s is None else f"{per_s:.0f}"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--quick", action="store_true", help="5 s runs, 2,000 WebSocket chunks")
    parser.add_argument("--ingress", choices=(HAPROXY, SERVE_PROXY), default=HAPROXY)
    parser.add_argument("--duration", type=int, help="seconds a wrk run (default 10, quick 5)")
    parser.add_argument("--connections", type=int, default=32, help="wrk connections (32)")
    args = parser.parse_args()
    if shutil.which("wrk") is None:
        sys.exit("bench/http.py needs wrk, the HTTP load generator: apt-get install wrk")
    sizes = QUICK if args.quick else FULL
    bench = Bench(args.connections, args.duration or sizes.duration_s)
    os.chdir(ROOT)  # Ray puts the driver's working directory on its workers' path
    results = measure_all(bench, sizes, args.ingress)
    section(
        f"summary ({'quick' if args.quick else 'full'} run, {args.ingress} ingress,"
        f" {bench.duration_s} s runs, {bench.connections} connections,"
        f" {time.perf_counter() - STARTED:.0f} s)"
    )
    for line in summary(results):
        print(line)


if __name__ == "__main__":
    main()
