"""The `aos` command: `aos serve` runs the service until SIGINT/SIGTERM."""

from __future__ import annotations

import argparse
import signal
import sys
import threading

from cluster import bootstrap
from cluster.settings import Settings


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="aos", description="Async Output Service")
    commands = parser.add_subparsers(dest="command", required=True)
    serve_cmd = commands.add_parser("serve", help="start the service and block until stopped")
    serve_cmd.add_argument("--host", dest="http_host", help="HTTP host (AOS_HTTP_HOST)")
    serve_cmd.add_argument("--port", dest="http_port", type=int, help="HTTP port (AOS_HTTP_PORT)")
    serve_cmd.add_argument("--storage", dest="storage_url", help="storage URL (AOS_STORAGE_URL)")
    serve_cmd.add_argument("--shards", dest="num_shards", type=int, help="AOS_NUM_SHARDS")
    serve_cmd.add_argument("--address", dest="ray_address", help="join this Ray cluster")
    args = parser.parse_args(argv)
    overrides = {k: v for k, v in vars(args).items() if k != "command" and v is not None}
    return serve(Settings(**overrides))


def serve(settings: Settings) -> int:
    stop = threading.Event()
    for sig in (signal.SIGINT, signal.SIGTERM):
        signal.signal(sig, lambda *_: stop.set())
    service = bootstrap.start(settings)
    if service.admin_key_generated:
        print(f"Admin key (shown once, kept in {settings.admin_key_path()}): {service.admin_key}")
    print(f"Async Output Service ready at {service.url}", flush=True)
    stop.wait()
    print("Async Output Service stopping", flush=True)
    bootstrap.stop(service)
    return 0


if __name__ == "__main__":
    sys.exit(main())
