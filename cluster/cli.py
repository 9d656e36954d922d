"""The `aos` command: `aos serve` runs the service until SIGINT/SIGTERM."""

from __future__ import annotations

import argparse
import os
import signal
import sys
import threading
import time
import traceback
from collections.abc import Callable
from concurrent.futures import Future
from pathlib import Path
from typing import IO, NoReturn

import ray
from pydantic import ValidationError
from ray.exceptions import RayTaskError

from cluster import bootstrap
from cluster.http_port import PortInUse
from cluster.ray_connect import RayUnreachable
from cluster.settings import Settings

STOP_TIMEOUT_S = 60.0
#: How long a start that failed or was interrupted may take to let go of Ray.
ABANDON_TIMEOUT_S = 30.0
#: Past the TCP check of a named cluster, how long Ray may take to connect to its GCS.
RAY_HANDSHAKE_S = 20.0
EXIT_INTERRUPTED = 130
#: A joined cluster's nodes each serve metrics: `aos serve` names this many.
MAX_METRICS_SHOWN = 3


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="aos", description="Async Output Service")
    commands = parser.add_subparsers(dest="command", required=True)
    serve_cmd = commands.add_parser("serve", help="start the service and block until stopped")
    serve_cmd.add_argument("--host", dest="http_host", help="HTTP host (AOS_HTTP_HOST)")
    serve_cmd.add_argument("--port", dest="http_port", type=int, help="HTTP port (AOS_HTTP_PORT)")
    serve_cmd.add_argument("--storage", dest="storage_url", help="storage URL (AOS_STORAGE_URL)")
    serve_cmd.add_argument("--shards", dest="num_shards", type=int, help="AOS_NUM_SHARDS")
    serve_cmd.add_argument(
        "--address",
        dest="ray_address",
        help="join exactly this Ray cluster, host:port or ray://host:port (RAY_ADDRESS); "
        "without it a private local cluster is started",
    )
    serve_cmd.add_argument(
        "--metrics-port",
        dest="metrics_port",
        type=int,
        help="where a private cluster serves Prometheus metrics (AOS_METRICS_PORT); "
        "default: a free port, printed at start",
    )
    serve_cmd.add_argument(
        "-v", "--verbose", action="store_true", help="show Ray's and Serve's logs here"
    )
    args = parser.parse_args(argv)
    overrides = {
        k: v for k, v in vars(args).items() if k not in ("command", "verbose") and v is not None
    }
    try:
        settings = Settings(**overrides)
    except ValidationError as exc:
        for error in exc.errors():
            where = ".".join(map(str, error["loc"]))
            print(f"aos: error: {where}: {error['msg']}", file=sys.stderr)
        return 2
    return serve(settings, verbose=args.verbose)


class Interrupted(Exception):
    """SIGINT or SIGTERM arrived while a step was still running."""


class Terminal:
    """What the person who ran `aos serve` sees: our lines, and Ray's logs only if asked.

    Ray writes from C++ as well as Python (GCS connection retries, a token-auth warning),
    so quiet mode moves file descriptors 1 and 2 to the log file; our lines go to copies
    of the original ones.
    """

    def __init__(self, log_path: Path | None) -> None:
        self.out: IO[str] = os.fdopen(os.dup(1), "w", buffering=1)
        self.err: IO[str] = os.fdopen(os.dup(2), "w", buffering=1)
        self.log_path = log_path
        if log_path is not None:
            log_path.parent.mkdir(parents=True, exist_ok=True)
            with open(log_path, "ab") as log:
                os.dup2(log.fileno(), 1)
                os.dup2(log.fileno(), 2)

    def say(self, line: str) -> None:
        print(line, file=self.out)

    def progress(self, step: str) -> None:
        print(f"aos: {step}", file=self.out)

    def error(self, message: str, *, log: bool = False) -> None:
        """`message` on stderr; `log` adds where Ray's logs are, when they are not here."""
        where = f" (Ray's logs: {self.log_path})" if log and self.log_path is not None else ""
        print(f"aos: error: {message}{where}", file=self.err)


def serve(settings: Settings, *, verbose: bool = False) -> int:
    terminal = Terminal(None if verbose else settings.log_path())
    stop = threading.Event()
    rearm = _signal_handlers(stop, terminal)
    owner = RayOwner(settings, on_progress=terminal.progress, log_to_driver=verbose)
    service = _started(owner, settings, terminal, stop, rearm)
    _announce(terminal, settings, service)
    while not stop.wait(0.2):
        rearm()
    terminal.say("Async Output Service stopping")
    owner.stop_requested.set()
    try:
        _wait(owner.stopped.done, STOP_TIMEOUT_S, threading.Event(), rearm)
        owner.stopped.result()
    except TimeoutError:
        terminal.error(f"the service did not stop within {STOP_TIMEOUT_S:.0f} s", log=True)
        os._exit(1)
    except Exception as exc:
        traceback.print_exception(exc)
        terminal.error(f"could not stop cleanly: {type(exc).__name__}: {exc}", log=True)
        return 1
    terminal.say("Async Output Service stopped")
    return 0


def _started(
    owner: RayOwner,
    settings: Settings,
    terminal: Terminal,
    stop: threading.Event,
    rearm: Callable[[], None],
) -> bootstrap.Service:
    """The service once `owner` has started it; on any failure, a message and the exit."""
    # Only a named cluster can fail to answer; a private one is part of the start.
    connect_bound_s = settings.ray_connect_timeout_s + RAY_HANDSHAKE_S
    try:
        if settings.ray_address is not None:
            _wait(owner.connected_or_done, connect_bound_s, stop, rearm)
        _wait(owner.started.done, settings.start_timeout_s, stop, rearm)
        return owner.started.result()
    except RayUnreachable as exc:
        terminal.error(
            f"{exc}; start it, or leave out --address and RAY_ADDRESS to run a private one"
        )
        _exit_after(owner, 1)
    except (PortInUse, bootstrap.ServeElsewhere, ValueError) as exc:
        terminal.error(str(exc))
        _exit_after(owner, 1)
    except Interrupted:
        terminal.error("interrupted while starting; stopping", log=True)
        _exit_after(owner, EXIT_INTERRUPTED)
    except TimeoutError:
        if settings.ray_address is not None and not owner.connected.is_set():
            # Stuck inside Ray's GCS handshake with a cluster it did not start: nothing of
            # ours runs there, nothing to wait for.
            terminal.error(f"Ray did not connect to {settings.ray_address} in time", log=True)
            _exit_after(owner, 1, wait_s=0)
        terminal.error(f"the service did not start within {settings.start_timeout_s:.0f} s")
        _exit_after(owner, 1)
    except Exception as exc:
        traceback.print_exception(exc)  # to the log file, or here with -v
        root = exc.cause if isinstance(exc, RayTaskError) and exc.cause else exc
        terminal.error(f"could not start: {type(root).__name__}: {root}", log=True)
        _exit_after(owner, 1)


class RayOwner(threading.Thread):
    """The one thread that starts the service, keeps it, and stops it.

    The main thread must stay free for signals while Ray blocks in C++ code (a GCS that
    never answers), so Ray runs here. And it runs here from start to stop: a private
    cluster's GCS and raylet die with the thread that started them (Ray spawns them with
    PR_SET_PDEATHSIG, which follows the parent thread, not the process). A stop requested
    during the start takes effect at the start's next step.
    """

    def __init__(
        self, settings: Settings, *, on_progress: Callable[[str], None], log_to_driver: bool
    ) -> None:
        super().__init__(name="aos-ray-owner", daemon=True)
        self.settings = settings
        self.on_progress = on_progress
        self.log_to_driver = log_to_driver
        self.connected = threading.Event()
        self.started: Future[bootstrap.Service] = Future()
        self.stop_requested = threading.Event()
        self.stopped: Future[None] = Future()
        self.start()

    def run(self) -> None:
        try:
            service = bootstrap.start(
                self.settings,
                on_progress=self._step,
                on_connected=self.connected.set,
                log_to_driver=self.log_to_driver,
            )
        except BaseException as exc:  # handed to the main thread, raised there
            if ray.is_initialized():
                ray.shutdown()
            self.started.set_exception(exc)
            return
        self.started.set_result(service)
        self.stop_requested.wait()
        try:
            bootstrap.stop(service)
        except BaseException as exc:
            self.stopped.set_exception(exc)
            return
        self.stopped.set_result(None)

    def connected_or_done(self) -> bool:
        return self.connected.is_set() or self.started.done()

    def _step(self, line: str) -> None:
        if self.stop_requested.is_set():
            raise Interrupted
        self.on_progress(line)


def _announce(terminal: Terminal, settings: Settings, service: bootstrap.Service) -> None:
    terminal.say(f"Async Output Service ready at {service.url}")
    key_path = settings.admin_key_path()
    if service.admin_key_generated:
        terminal.say(f"Admin key (new, shown once; kept in {key_path}): {service.admin_key}")
    elif settings.admin_key is None:
        terminal.say(f"Admin key: in {key_path}")
    terminal.say(
        f"Ray address: {service.ray_address} (Python in the cluster: "
        f'Client.connect("{service.ray_address}"), or RAY_ADDRESS)'
    )
    endpoints = service.metrics_endpoints
    shown = ", ".join(f"http://{at}/metrics" for at in endpoints[:MAX_METRICS_SHOWN])
    more = (
        f" and {len(endpoints) - MAX_METRICS_SHOWN} more nodes"
        if len(endpoints) > MAX_METRICS_SHOWN
        else ""
    )
    terminal.say(f"Metrics (Prometheus, ray_aos_*): {shown or 'not exported'}{more}")


def _signal_handlers(stop: threading.Event, terminal: Terminal) -> Callable[[], None]:
    """Install the handlers; returns a function that installs them again.

    The first SIGINT/SIGTERM asks for a clean stop; a second one ends the process now.
    Ray's C++ core installs a SIGTERM handler of its own when it connects (it aborts the
    process), so the waiting loops put ours back while they wait.
    """

    def handle(signum: int, _frame: object) -> None:
        if stop.is_set():
            terminal.error("stopped at once (second signal)")
            os._exit(EXIT_INTERRUPTED)
        stop.set()

    def install() -> None:
        for sig in (signal.SIGINT, signal.SIGTERM):
            signal.signal(sig, handle)

    install()
    return install


def _wait(
    done: Callable[[], bool], timeout_s: float, stop: threading.Event, rearm: Callable[[], None]
) -> None:
    """Return once `done()`, checking in short steps so that signals are handled meanwhile.

    Raises `Interrupted` once `stop` is set, `TimeoutError` after `timeout_s`.
    """
    deadline = time.monotonic() + timeout_s
    while not done():
        rearm()
        if stop.wait(0.2):
            raise Interrupted
        if time.monotonic() > deadline:
            raise TimeoutError


def _exit_after(owner: RayOwner, code: int, *, wait_s: float = ABANDON_TIMEOUT_S) -> NoReturn:
    """Ask the owner to let go of Ray, give it a bounded time to, then exit at once.

    The owner may still be blocked inside Ray, so the interpreter's normal exit (which
    runs Ray's atexit hook) could hang: exit directly.
    """
    owner.stop_requested.set()
    owner.join(wait_s)
    os._exit(code)


if __name__ == "__main__":
    sys.exit(main())
