"""A small SSE reader for tests: frames as dicts, comments kept."""

from __future__ import annotations

import json
import time
from collections.abc import Callable, Iterator
from typing import Any

import httpx


def frames(response: httpx.Response) -> Iterator[dict[str, Any]]:
    """Yield {"event", "id", "data", "retry"} per frame, or {"comment": text}."""
    frame: dict[str, Any] = {}
    for line in response.iter_lines():
        if line == "":
            if frame:
                yield frame
            frame = {}
        elif line.startswith(":"):
            yield {"comment": line[1:].strip()}
        else:
            field, _, value = line.partition(":")
            value = value.removeprefix(" ")
            frame[field] = json.loads(value) if field == "data" else value


def until_end(response: httpx.Response) -> list[dict[str, Any]]:
    out = []
    for frame in frames(response):
        out.append(frame)
        if frame.get("event") == "end":
            break
    return out


def read_until(
    stream: Iterator[dict[str, Any]],
    match: Callable[[dict[str, Any]], bool],
    *,
    timeout_s: float,
    what: str,
) -> list[dict[str, Any]]:
    """Frames from an open stream up to and including the first one that `match`es, which
    must arrive within `timeout_s`. An idle stream sends a heartbeat comment every
    heartbeat_s, so the deadline is checked often; the client's read timeout bounds a
    silent stream."""
    deadline = time.monotonic() + timeout_s
    got: list[dict[str, Any]] = []
    for frame in stream:
        got.append(frame)
        late = time.monotonic() > deadline
        if match(frame) and not late:
            return got
        if late:
            break
    raise AssertionError(f"no {what} on the stream within {timeout_s:g} s; got {got}")


def event(kind: str, **data: Any) -> Callable[[dict[str, Any]], bool]:
    """Matches a frame of event `kind` whose data has the given values."""

    def match(frame: dict[str, Any]) -> bool:
        if frame.get("event") != kind:
            return False
        return all(frame["data"].get(key) == value for key, value in data.items())

    return match
