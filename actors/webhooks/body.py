"""Webhook bodies: what a receiver gets, and the compact form an output window is stored in.

An output window's delivery stores its job header and the seqs it covers, not the
chunks: they are in the output table already, committed in the same batch and never
changed. `render` rebuilds the full body from them at each attempt, byte for byte the
same every time (receivers dedupe on webhook-id; a retry must resend the same body).
"""

from __future__ import annotations

import json
from collections.abc import Awaitable, Callable
from typing import Any

from actors.feed import replay
from actors.render import chunk_json, webhook_data
from actors.timestamps import iso
from storage.errors import NotFound
from storage.records import Chunk, Delivery, Job, OutputFormat

#: Reads a job's committed output: (namespace, job_id, version, after_seq, limit) -> chunks in
#: seq order.
ReadChunks = Callable[[str, str, int, int, int], Awaitable[list[Chunk]]]

#: A stored payload starting with this is a window to render, not a body to send as is.
WINDOW_TAG = b"aos-window/1\n"


class OutputGone(NotFound):
    """A window's chunks are no longer in the store: its job was deleted, deliveries with it."""

    code = "output_gone"


def header(kind: str, job: Job, at: float) -> dict[str, Any]:
    """The body of an event about `job` at `at`, without chunks."""
    return {"type": kind, "timestamp": iso(at), "data": webhook_data(job)}


def encode(body: dict[str, Any]) -> bytes:
    return json.dumps(body, separators=(",", ":")).encode()


def chunk_entry(chunk: Chunk, *, binary: bool, inline_max_bytes: int) -> dict[str, Any]:
    """A chunk as a webhook carries it; one too big to carry says so (fetch it from /output/raw)."""
    output_format = OutputFormat.BINARY if binary else OutputFormat.TEXT
    return chunk_json(chunk, output_format, inline_max_bytes=inline_max_bytes)


def entry_size(chunk: Chunk, *, binary: bool, inline_max_bytes: int) -> int:
    """Bytes `chunk` adds to a body (its entry and a comma): O(chunk), whatever the window holds."""
    return len(encode(chunk_entry(chunk, binary=binary, inline_max_bytes=inline_max_bytes))) + 1


def window_payload(
    body: dict[str, Any], job: Job, *, first_seq: int, inline_max_bytes: int
) -> bytes:
    """The stored form of an output window holding seqs first_seq..job.output_seq of the job's
    latest output version."""
    window = {
        "version": job.output_version,
        "firstSeq": first_seq,
        "lastSeq": job.output_seq,
        "binary": job.output_format is OutputFormat.BINARY,
        "inlineMaxBytes": inline_max_bytes,
    }
    return WINDOW_TAG + encode({"window": window, "body": body})


def is_window(delivery: Delivery) -> bool:
    """Whether `delivery`'s payload is a window to render (else it is the body itself)."""
    return delivery.payload.startswith(WINDOW_TAG)


async def render(delivery: Delivery, read_chunks: ReadChunks) -> bytes:
    """The body to send for `delivery`: its payload, or its window with the chunks read back.

    Raises `OutputGone` when the window's chunks are gone, and whatever `read_chunks`
    raises (e.g. `StoreUnavailable`).
    """
    if not is_window(delivery):
        return delivery.payload
    stored = json.loads(delivery.payload[len(WINDOW_TAG) :])
    window, body = stored["window"], stored["body"]
    chunks = await _read_window(delivery, window, read_chunks)
    binary, inline_max_bytes = window["binary"], window["inlineMaxBytes"]
    body["data"]["chunks"] = [
        chunk_entry(c, binary=binary, inline_max_bytes=inline_max_bytes) for c in chunks
    ]
    return encode(body)


async def _read_window(
    delivery: Delivery, window: dict[str, Any], read_chunks: ReadChunks
) -> list[Chunk]:
    """Chunks firstSeq..lastSeq of its version, all of them, paged as replays are
    (`actors.feed.replay`). A window stored before versions holds version 1's."""
    first, last, version = window["firstSeq"], window["lastSeq"], window.get("version", 1)

    async def read(after_seq: int, limit: int) -> list[Chunk]:
        return await read_chunks(delivery.namespace, delivery.job_id, version, after_seq, limit)

    chunks = [chunk async for chunk in replay(read, after_seq=first - 1, until_seq=last)]
    if [chunk.seq for chunk in chunks] != list(range(first, last + 1)):
        # Never for a window whose job still exists: committed output is immutable.
        raise OutputGone(
            f"output {first}..{last} of job {delivery.job_id!r} is gone "
            f"(delivery {delivery.delivery_id})"
        )
    return chunks
