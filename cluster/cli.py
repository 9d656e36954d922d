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
from concurrent import futures
from concurrent.futures import Future
from pathlib import Path
from typing import IO, NoReturn, TypeVar

import ray

from cluster import bootstrap
from cluster.ray_connect import RayUnreachable
from cluster.settings import Settings

T = TypeVar("T")
STOP_TIMEOUT_S = 60.0
#: How long a start that failed or was interrupted may take to let go of Ray.
ABANDON_TIMEOUT_S = 30.0
EXIT_INTERRUPTED = 130


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
        "-v", "--verbose", action="store_true", help="show Ray's and Serve's logs here"
    )
    args = parser.parse_args(argv)
    overrides = {
        k: v for k, v in vars(args).items() if k not in ("command", "verbose") and v is not None
    }
    return serve(Settings(**overrides), verbose=args.verbose)


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
    _on_signals(stop, terminal)
    owner = RayOwner(settings, on_progress=terminal.progress, log_to_driver=verbose)
    try:
        service = _wait(owner.started, settings.start_timeout_s, stop)
    except (bootstrap.PortInUse, RayUnreachable, ValueError) as exc:
        terminal.error(str(exc))
        _exit_after(owner, 1)
    except Interrupted:
        terminal.error("interrupted while starting; stopping", log=True)
        _exit_after(owner, EXIT_INTERRUPTED)
    except TimeoutError:
        message = f"the service did not start within {settings.start_timeout_s:.0f} s"
        terminal.error(message, log=True)
        _exit_after(owner, 1)
    except Exception as exc:
        traceback.print_exception(exc)  # to the log file, or here with -v
        terminal.error(f"could not start: {type(exc).__name__}: {exc}", log=True)
        _exit_after(owner, 1)
    _announce(terminal, settings, service)
    stop.wait()
    terminal.say("Async Output Service stopping")
    owner.stop_requested.set()
    try:
        _wait(owner.stopped, STOP_TIMEOUT_S, threading.Event())
    except TimeoutError:
        terminal.error(f"the service did not stop within {STOP_TIMEOUT_S:.0f} s", log=True)
        os._exit(1)
    except Exception as exc:
        traceback.print_exception(exc)
        terminal.error(f"could not stop cleanly: {type(exc).__name__}: {exc}", log=True)
        return 1
    terminal.say("Async Output Service stopped")
    return 0


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
        self.started: Future[bootstrap.Service] = Future()
        self.stop_requested = threading.Event()
        self.stopped: Future[None] = Future()
        self.start()

    def run(self) -> None:
        try:
            service = bootstrap.start(
                self.settings, on_progress=self._step, log_to_driver=self.log_to_driver
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


def _on_signals(stop: threading.Event, terminal: Terminal) -> None:
    """The first SIGINT/SIGTERM asks for a clean stop; a second one ends the process now."""

    def handle(signum: int, _frame: object) -> None:
        if stop.is_set():
            terminal.error("stopped at once (second signal)")
            os._exit(EXIT_INTERRUPTED)
        stop.set()

    for sig in (signal.SIGINT, signal.SIGTERM):
        signal.signal(sig, handle)


def _wait(future: Future[T], timeout_s: float, stop: threading.Event) -> T:
    """The future's result, waited for in short steps so that signals are handled meanwhile.

    Raises what the future holds, `Interrupted` once `stop` is set, `TimeoutError` after
    `timeout_s`.
    """
    deadline = time.monotonic() + timeout_s
    while not futures.wait([future], timeout=0.2).done:
        if stop.is_set():
            raise Interrupted
        if time.monotonic() > deadline:
            raise TimeoutError
    return future.result()


def _exit_after(owner: RayOwner, code: int) -> NoReturn:
    """Ask the owner to let go of Ray, give it a bounded time to, then exit at once.

    The owner may still be blocked inside Ray, so the interpreter's normal exit (which
    runs Ray's atexit hook) could hang: exit directly.
    """
    owner.stop_requested.set()
    owner.join(ABANDON_TIMEOUT_S)
    os._exit(code)


if __name__ == "__main__":
    sys.exit(main())
