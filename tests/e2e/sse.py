"""A small SSE reader for tests: frames as dicts, comments kept."""

from __future__ import annotations

import json
from collections.abc import Iterator
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
