"""The DynamoDB store's items: keys, sort keys that order as the records do, and each record
as the attributes its table holds (low-level attribute values: {"S": ...}, {"N": ...}).

A record is one JSON document (`doc`, UTF-8: a NUL is held, a lone surrogate refused)
beside the few attributes a key, an index or a
filter needs. Numbers in keys are ints (exact in DynamoDB's 38 digits); floats live in
the JSON (exact: `repr`) and in sort keys (`sortable`).
"""

from __future__ import annotations

import json
import struct
from collections.abc import Mapping
from dataclasses import asdict, fields
from typing import Any
from urllib.parse import quote, unquote

from storage.codec import pack, unpack
from storage.records import (
    ApiKey,
    AuditEntry,
    Chunk,
    Delivery,
    DeliveryStatus,
    Job,
    Namespace,
    OutputVersion,
)

Item = dict[str, Any]

#: Retention's backstop: DynamoDB's TTL deletes a finished job this long after it expired,
#: if the service's own sweeper (which deletes it first, with its output, and audits) has
#: not. Reads never depend on it: TTL deletion runs when DynamoDB gets to it.
TTL_GRACE_S = 86_400
#: Bits of a chunk item's sort key: version, then seq, then the part of the chunk.
_SEQ_BITS, _PART_BITS = 64, 8
MAX_PARTS = 1 << _PART_BITS


def key(*parts: object) -> str:
    """A partition key of several parts, each percent-encoded so "/" joins them unambiguously;
    the namespace comes first."""
    return "/".join(quote(str(part), safe="") for part in parts)


def unkey(value: str) -> list[str]:
    return [unquote(part) for part in value.split("/")]


def sortable(value: float) -> str:
    """16 hex digits whose string order is the order of the floats (IEEE 754 bits, the sign
    bit flipped for positives, all bits for negatives)."""
    (bits,) = struct.unpack(">Q", struct.pack(">d", value))
    bits = bits ^ 0xFFFF_FFFF_FFFF_FFFF if bits >> 63 else bits | 1 << 63
    return f"{bits:016x}"


def created_key(created_at: float, job_id: str) -> str:
    """A job's place in a listing (`rules.newest_first`) as a string of the same order: the
    fixed-width time, then "#" and the id."""
    return f"{sortable(created_at)}#{job_id}"


def expiry_key(expires_at: float, namespace: str, job_id: str) -> str:
    """(expires_at, namespace, job_id) as a string of the same order: the namespace in hex
    (all hex digits sort after "#", so a shorter namespace sorts first, as in Python)."""
    return f"{sortable(expires_at)}#{namespace.encode().hex()}#{job_id}"


def due_key(created_at: float, delivery_id: str) -> str:
    """A delivery's place in `rules.due_order` as a string of the same order."""
    return f"{sortable(created_at)}#{delivery_id}"


def chunk_sort(version: int, seq: int, part: int = 0) -> int:
    """A chunk item's sort key: (version, seq, part) packed in one int, in that order."""
    return (version << (_SEQ_BITS + _PART_BITS)) | (seq << _PART_BITS) | part


def seq_of(sort: int) -> int:
    return (sort >> _PART_BITS) & ((1 << _SEQ_BITS) - 1)


def version_of(sort: int) -> int:
    return sort >> (_SEQ_BITS + _PART_BITS)


def S(value: str) -> dict[str, str]:  # DynamoDB's type letters
    return {"S": value}


def N(value: int) -> dict[str, str]:
    return {"N": str(value)}


def dump(value: Any) -> str:
    """`value` as JSON text DynamoDB can hold: UTF-8, so a lone surrogate is refused here
    (`UnicodeEncodeError`, the data's fault: `Unstorable`), as the SQL stores refuse it."""
    text = json.dumps(value, ensure_ascii=False, separators=(",", ":"))
    text.encode()
    return text


def _doc(record: Any, skip: str = "", **values: Any) -> str:
    """The record's fields as a JSON object, without `skip`, with `values` in place."""
    plain = {f.name: getattr(record, f.name) for f in fields(record) if f.name != skip}
    return dump(plain | values)


def _load(item: Mapping[str, Any]) -> dict[str, Any]:
    loaded: dict[str, Any] = json.loads(item["doc"]["S"])
    return loaded


def text(value: str) -> str:
    """`value` for a string attribute of its own (a key, a tag): DynamoDB holds UTF-8 only,
    so a lone surrogate is refused here (`UnicodeEncodeError`: the data's fault)."""
    value.encode()
    return value


# -- jobs ----------------------------------------------------------------------------------


def job_key(namespace: str, job_id: str) -> Item:
    return {"ns": S(text(namespace)), "id": S(text(job_id))}


def job_item(job: Job) -> Item:
    """The job's item: its record, and the attributes of the indexes it is in: a listing
    (`cr`), its slot's running jobs (`rs`, while Running) or expiring ones (`xs`, `xk`, once
    finished with an expiry), and DynamoDB's TTL (`ttl`, epoch seconds)."""
    item = {
        **job_key(job.namespace, job.job_id),
        "doc": S(_doc(job)),
        "st": S(job.status.value),
        "cr": S(created_key(job.created_at, job.job_id)),
    }
    if job.tags:
        item["tg"] = {"L": [S(text(tag)) for tag in job.tags]}
    if not job.status.terminal:
        item["rs"] = N(job.slot)
    elif job.expires_at is not None:
        item["xs"] = N(job.slot)
        item["xk"] = S(expiry_key(job.expires_at, job.namespace, job.job_id))
        item["ttl"] = N(int(job.expires_at) + TTL_GRACE_S)
    return item


def job_of(item: Mapping[str, Any]) -> Job:
    return Job.from_plain(_load(item))


# -- output ----------------------------------------------------------------------------------


def chunk_items(chunk: Chunk, part_bytes: int) -> list[Item]:
    """A chunk as its items: packed (`storage.codec`) and cut to `part_bytes` each. The first
    holds where it starts (`o`, indexed by `kv` for `read_output_at`), its part count and
    its encoding ("" for the bytes as appended)."""
    stored, encoding = pack(chunk.data)
    pieces = [stored[i : i + part_bytes] for i in range(0, len(stored), part_bytes)] or [b""]
    if len(pieces) > MAX_PARTS:
        raise ValueError(f"a chunk of {len(stored)} stored bytes needs over {MAX_PARTS} parts")
    whole = key(chunk.namespace, chunk.job_id)
    items = [
        {"k": S(whole), "s": N(chunk_sort(chunk.version, chunk.seq, part)), "d": {"B": piece}}
        for part, piece in enumerate(pieces)
    ]
    items[0] |= {
        "kv": S(key(chunk.namespace, chunk.job_id, chunk.version)),
        "o": N(chunk.offset),
        "n": N(len(pieces)),
        "e": S(encoding or ""),
    }
    return items


def chunks_of(namespace: str, job_id: str, items: list[Item]) -> list[Chunk]:
    """The whole chunks among `items` (a query's, in sort order), each joined from its parts;
    a chunk whose parts are not all there is left out."""
    chunks: list[Chunk] = []
    at = 0
    while at < len(items):
        first = items[at]
        count = int(first.get("n", {"N": "0"})["N"])
        parts = items[at : at + count]
        sort = int(first["s"]["N"])
        if count == 0 or len(parts) < count or int(parts[-1]["s"]["N"]) != sort + count - 1:
            break
        stored = b"".join(bytes(part["d"]["B"]) for part in parts)
        data = unpack(stored, first["e"]["S"] or None)
        offset = int(first["o"]["N"])
        chunks.append(Chunk(namespace, job_id, seq_of(sort), offset, data, version_of(sort)))
        at += count
    return chunks


def version_item(version: OutputVersion) -> Item:
    return {
        "k": S(key(version.namespace, version.job_id)),
        "v": N(version.version),
        "doc": S(_doc(version)),
    }


def version_of_item(item: Mapping[str, Any]) -> OutputVersion:
    return OutputVersion(**_load(item))


# -- deliveries --------------------------------------------------------------------------------


def delivery_item(delivery: Delivery) -> Item:
    """A delivery under its job (`k`, `i`), found by id (`nid`) and, while pending, among its
    slot's (`ps`, in due order by `due`)."""
    item = {
        "k": S(key(delivery.namespace, delivery.job_id)),
        "i": S(text(delivery.delivery_id)),
        "nid": S(key(delivery.namespace, delivery.delivery_id)),
        "doc": S(_doc(delivery, "payload", attempts=[asdict(a) for a in delivery.attempts])),
        "p": {"B": delivery.payload},
    }
    if delivery.status is DeliveryStatus.PENDING:
        item["ps"] = N(delivery.slot)
        item["due"] = S(due_key(delivery.created_at, delivery.delivery_id))
    return item


def delivery_of(item: Mapping[str, Any]) -> Delivery:
    return Delivery.from_plain(_load(item), bytes(item["p"]["B"]))


# -- namespaces, keys, audit --------------------------------------------------------------------


def namespace_key(name: str) -> Item:
    return {"k": S(key("ns", name))}


def api_key_key(key_id: str) -> Item:
    return {"k": S(key("key", key_id))}


def namespace_item(namespace: Namespace) -> Item:
    return {**namespace_key(namespace.name), "doc": S(_doc(namespace))}


def namespace_of(item: Mapping[str, Any]) -> Namespace:
    return Namespace(**_load(item))


def api_key_item(api_key: ApiKey) -> Item:
    return {**api_key_key(api_key.key_id), "doc": S(_doc(api_key))}


def api_key_of(item: Mapping[str, Any]) -> ApiKey:
    values = _load(item)
    return ApiKey(**{**values, "namespaces": tuple(values["namespaces"])})


def audit_item(entry: AuditEntry, entry_id: str) -> Item:
    """An audit entry under an id that orders entries as they were appended."""
    return {"id": S(entry_id), "doc": S(_doc(entry))}


def audit_of(item: Mapping[str, Any]) -> AuditEntry:
    return AuditEntry(**_load(item))
