"""The ingress switches, and the `aos-haproxy` wrapper that keeps HAProxy's admin ports off
every interface (cluster/ingress.py)."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

from cluster.ingress import (
    ADMIN_HOST_VAR,
    BINARY_VAR,
    MAXCONN,
    OVERLOADED_RULES,
    RECEIVED_RULES,
    STREAM_PORT_OFFSET,
    STREAM_RULES,
    environment,
    fit_maxconn,
    haproxy_binary,
    rewrite,
)
from cluster.settings import Settings
from serve_app.shedding import RECEIVED_HEADER

#: The parts of the config Serve 2.60 renders that matter here (haproxy_templates.py).
SERVE_CONFIG = """global
    maxconn 100000
    stats socket /tmp/haproxy-serve/admin.sock mode 666 level admin expose-fd listeners
defaults
    mode http
frontend prometheus
    bind :9101
    mode http
    http-request use-service prometheus-exporter if { path /metrics }
frontend http_frontend
    bind *:8000
    acl is_http-aos path_beg /
    use_backend http-aos if is_http-aos
    default_backend default_backend
backend default_backend
    http-request return status 404 content-type text/plain lf-string "Path '%[path]' not found."
backend http-aos
    log global
    http-reuse always
    option httpchk GET /-/healthz
    http-check expect status 200
    default-server inter 5s fall 3 rise 2
    server replica_a 127.0.0.1:30000 check
    server replica_b 10.0.0.7:30012 check
    server fallback 127.0.0.1:8001 check backup
listen stats
  bind *:8404
  stats enable
"""

#: What the rewrite adds for the streams (`stream_backends`), the twin after its backend.
STREAM_TWIN = f"""backend http-aos-streams
    log global
    http-reuse always
    option httpchk GET /healthz
    http-check expect status 200
    default-server inter 5s fall 3 rise 2
    server replica_a 127.0.0.1:{30000 + STREAM_PORT_OFFSET} check
    server replica_b 10.0.0.7:{30012 + STREAM_PORT_OFFSET} check
    server fallback 127.0.0.1:8001 check backup
"""


def test_the_streams_go_to_each_replicas_stream_server_and_the_rest_to_serve():
    """`GET .../stream` is routed, just before the app's own rule, to a twin of the app's
    backend whose servers are the replicas' stream servers (Serve's port + the offset),
    checked at the app's /healthz; the backup stays Serve's proxy, where the route serves
    streams too. Nothing else changes."""
    rewritten = rewrite(SERVE_CONFIG, "127.0.0.1")
    assert (
        "    use_backend http-aos-streams if is_http-aos METH_GET"
        " { path_reg ^/api/v1/jobs/[^/]+/stream$ }\n"
        "    use_backend http-aos if is_http-aos\n"
    ) in rewritten
    assert rewritten.count("use_backend") == 2
    backends = rewritten.split("\nlisten stats")[0].split("backend http-aos\n", 1)[1]
    assert backends.split("\n", 8)[-1] == STREAM_TWIN.rstrip("\n")
    assert "backend default_backend-streams" not in rewritten


def test_only_the_stats_and_metrics_binds_move_and_the_api_frontend_answers_overload():
    rewritten = rewrite(SERVE_CONFIG, "127.0.0.1")
    assert "    bind 127.0.0.1:9101\n" in rewritten
    assert "  bind 127.0.0.1:8404\n" in rewritten
    assert "    bind *:8000\n" in rewritten  # the API stays where --host put it
    frontend = rewritten.split("frontend http_frontend\n")[1].split("backend")[0]
    assert frontend.startswith(OVERLOADED_RULES[0] + "\n" + RECEIVED_RULES[0] + "\n")
    assert rewritten.count("http-response return status 503") == 1
    # Idle connections go; a request queued in HAProxy (none is today) waits 1 s at most.
    assert "defaults\n    timeout http-request 30s\n    timeout queue 1s\n" in rewritten
    restored = rewritten.replace(OVERLOADED_RULES[0] + "\n", "")
    restored = restored.replace(RECEIVED_RULES[0] + "\n", "")
    restored = restored.replace("".join(rule + "\n" for rule in STREAM_RULES), "")
    restored = restored.replace("    timeout http-request 30s\n    timeout queue 1s\n", "")
    restored = restored.replace("127.0.0.1:9101", ":9101").replace("127.0.0.1:8404", "*:8404")
    restored = restored.replace(STREAM_TWIN, "")
    restored = "".join(line for line in restored.splitlines(True) if "-streams" not in line)
    assert restored == SERVE_CONFIG
    assert rewrite(rewritten, "127.0.0.1") == rewritten  # idempotent


def test_maxconn_is_fitted_to_the_open_file_limit_its_connections_and_pipes_need():
    assert fit_maxconn(100_000, 20_000) == 7_974  # HAProxy asked 2.5 x 7,974 + 36 fds
    assert fit_maxconn(4_096, 1_048_576) == 4_096
    rewritten = rewrite(SERVE_CONFIG, "127.0.0.1", max_fds=20_000)
    assert "global\n    maxconn 7974\n" in rewritten
    assert rewrite(rewritten, "127.0.0.1", max_fds=20_000) == rewritten
    assert "    maxconn 100000\n" in rewrite(SERVE_CONFIG, "127.0.0.1")  # no limit given


def test_haproxy_mode_sets_serves_switches_ports_and_the_wrapper():
    env = environment(
        "haproxy", admin_host="10.0.0.7", stats_port=1, metrics_port=2, fallback_port=3
    )
    assert env["RAY_SERVE_ENABLE_HA_PROXY"] == env["RAY_SERVE_THROUGHPUT_OPTIMIZED"] == "1"
    assert env["RAY_SERVE_HAPROXY_STATS_PORT"] == "1"
    assert env["RAY_SERVE_HAPROXY_METRICS_PORT"] == "2"
    assert env["RAY_SERVE_FALLBACK_PROXY_HTTP_PORT"] == "3"
    assert env["RAY_SERVE_HAPROXY_HARD_STOP_AFTER_S"] == "3600"  # streams outlive reloads
    assert env["RAY_SERVE_HAPROXY_MAXCONN"] == str(MAXCONN)  # not Serve's 4,096 streams
    assert env[ADMIN_HOST_VAR] == "10.0.0.7"
    assert env["RAY_SERVE_PROXY_READY_CHECK_TIMEOUT_S"] == "30"  # slow machines start slowly
    assert env["RAY_SERVE_HAPROXY_BINARY_PATH"].endswith("/aos-haproxy")
    assert os.access(env[BINARY_VAR], os.X_OK) and "aos-haproxy" not in env[BINARY_VAR]


def test_serve_mode_turns_both_switches_off():
    assert Settings(ingress="serve").ingress_environment() == {
        "RAY_SERVE_ENABLE_HA_PROXY": "0",
        "RAY_SERVE_THROUGHPUT_OPTIMIZED": "0",
        "RAY_SERVE_PROXY_READY_CHECK_TIMEOUT_S": "30",
    }


def test_haproxy_is_the_default_and_every_port_it_opens_is_listed():
    settings = Settings()
    assert settings.ingress == "haproxy"
    assert settings.listening() == [
        ("127.0.0.1", 8000, "--port"),
        ("127.0.0.1", 8404, "AOS_HAPROXY_STATS_PORT"),
        ("127.0.0.1", 9101, "AOS_HAPROXY_METRICS_PORT"),
        ("127.0.0.1", 8500, "AOS_FALLBACK_PROXY_PORT"),
    ]
    assert Settings(ingress="serve").listening() == [("127.0.0.1", 8000, "--port")]
    with pytest.raises(ValueError):
        Settings(ingress="nginx")


def test_the_wrapper_rewrites_the_config_then_runs_the_real_binary_with_the_same_args(
    tmp_path: Path,
):
    config = tmp_path / "haproxy.cfg"
    config.write_text(SERVE_CONFIG)
    fake = tmp_path / "haproxy"
    fake.write_text('#!/bin/sh\necho "args: $*"\n')
    fake.chmod(0o755)
    wrapper = Path(sys.executable).with_name("aos-haproxy")
    done = subprocess.run(
        [str(wrapper), "-db", "-f", str(config), "-sf", "123"],
        env={**os.environ, BINARY_VAR: str(fake), ADMIN_HOST_VAR: "127.0.0.2"},
        capture_output=True,
        text=True,
        timeout=30,
        check=True,
    )
    assert done.stdout == f"args: -db -f {config} -sf 123\n"
    assert "bind 127.0.0.2:8404" in config.read_text()
    assert "bind 127.0.0.2:9101" in config.read_text()


def test_the_real_haproxy_accepts_the_rewritten_config(tmp_path: Path):
    """The overload answer's `Retry-After` is drawn per answer (`%[rand(3),add(1)]`): HAProxy
    itself checks that the rules parse."""
    config = tmp_path / "haproxy.cfg"
    config.write_text(rewrite(SERVE_CONFIG.replace(" expose-fd listeners", ""), "127.0.0.1"))
    checked = subprocess.run(
        [haproxy_binary(), "-c", "-f", str(config)],
        capture_output=True,
        text=True,
        timeout=30,
        check=False,
    )
    assert checked.returncode == 0, checked.stderr
    assert "hdr Retry-After %[rand(3),add(1)]" in OVERLOADED_RULES[0]


def test_haproxy_stamps_requests_with_the_header_the_replicas_read():
    """The stamp's name is written on both floors (the wrapper imports no app module)."""
    verb, action, name, value = RECEIVED_RULES[0].split()
    assert (verb, action, name.lower(), value) == (
        "http-request",
        "set-header",
        RECEIVED_HEADER,
        "%[date(0,ms)]",  # ms since the epoch, as serve_app.shedding.queued_s reads it
    )


def test_haproxy_tells_serve_that_a_stream_listens_for_its_disconnect_itself():
    """Only `GET .../stream` carries the header Serve reads (a client's own goes); with it
    Serve holds no task and queue of its own per stream (serve_app/sse.py `until_disconnect`)."""
    from ray.serve._private.constants import SERVE_HTTP_REQUEST_DISCONNECT_DISABLED_HEADER
    from ray.serve._private.http_util import parse_disconnect_disabled_header

    removed, added = (rule.split() for rule in STREAM_RULES)
    assert removed[:2] == ["http-request", "del-header"]
    assert added[:2] == ["http-request", "set-header"]
    assert removed[2].lower() == added[2].lower() == SERVE_HTTP_REQUEST_DISCONNECT_DISABLED_HEADER
    assert parse_disconnect_disabled_header({added[2].lower().encode(): added[3].encode()})
    assert added[4:6] == ["if", "METH_GET"]
    assert "^/api/v1/jobs/[^/]+/stream$" in STREAM_RULES[1]
