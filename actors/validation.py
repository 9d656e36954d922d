"""Domain validation shared by every entry point (HTTP and the direct Python client)."""

from __future__ import annotations

import hashlib
import json
import re
from dataclasses import asdict, dataclass
from typing import Any

from storage.errors import Invalid, TooLarge
from storage.records import OutputFormat

MAX_ID_CHARS = 128
MAX_TITLE_CHARS = 512
MAX_DESCRIPTION_CHARS = 8192
MAX_TAGS = 32
MAX_TAG_CHARS = 64
MAX_URL_CHARS = 2048
MAX_ERROR_CHARS = 8192
MAX_TTL_S = 10 * 365 * 86400

_ID = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._:-]*$")
_NAMESPACE = re.compile(r"^[a-z0-9][a-z0-9-]{0,62}$")


def check_id(kind: str, value: object) -> str:
    """A job id: 1..128 of letters, digits and . _ : - (no slashes, no spaces)."""
    if not isinstance(value, str) or not value:
        raise Invalid(f"{kind} must be a non-empty string")
    if len(value) > MAX_ID_CHARS:
        raise TooLarge(f"{kind} is longer than {MAX_ID_CHARS} characters")
    if not _ID.match(value):
        raise Invalid(f"{kind} may hold only letters, digits and . _ : - and must start alnum")
    return value


def check_namespace(value: object) -> str:
    """A namespace name: 1..63 of lowercase letters, digits and '-' (DNS-label like)."""
    if not isinstance(value, str) or not _NAMESPACE.match(value):
        raise Invalid("namespace must be 1-63 lowercase letters, digits or '-', starting alnum")
    return value


def check_progress(value: object) -> float:
    if isinstance(value, bool) or not isinstance(value, int | float) or not 0 <= value <= 100:
        raise Invalid("progress must be a number from 0 to 100")
    return float(value)


@dataclass(frozen=True, slots=True)
class JobSpec:
    """What a client asks for when it submits a job."""

    title: str | None = None
    description: str | None = None
    tags: tuple[str, ...] = ()
    webhook_url: str | None = None
    webhook_events: tuple[str, ...] | None = None
    ttl_s: int | None = None
    output_format: OutputFormat = OutputFormat.TEXT

    @classmethod
    def from_metadata(cls, metadata: dict[str, Any] | None = None, **fields: Any) -> JobSpec:
        metadata = metadata or {}
        unknown = set(metadata) - {"title", "description", "tags"}
        if unknown:
            raise Invalid(f"unknown metadata field(s): {', '.join(sorted(unknown))}")
        tags = metadata.get("tags") or ()
        if not isinstance(tags, list | tuple):
            raise Invalid("metadata.tags must be a list of strings")
        spec = cls(
            title=metadata.get("title"),
            description=metadata.get("description"),
            tags=tuple(tags),
            **fields,
        )
        spec.validate()
        return spec

    def validate(self) -> None:
        _check_text("metadata.title", self.title, MAX_TITLE_CHARS)
        _check_text("metadata.description", self.description, MAX_DESCRIPTION_CHARS)
        if len(self.tags) > MAX_TAGS:
            raise Invalid(f"at most {MAX_TAGS} tags")
        for tag in self.tags:
            if not isinstance(tag, str) or not tag or len(tag) > MAX_TAG_CHARS:
                raise Invalid(f"each tag must be a string of 1..{MAX_TAG_CHARS} characters")
        _check_text("webhookUrl", self.webhook_url, MAX_URL_CHARS)
        if self.ttl_s is not None and (
            isinstance(self.ttl_s, bool)
            or not isinstance(self.ttl_s, int)
            or not 1 <= self.ttl_s <= MAX_TTL_S
        ):
            raise Invalid(f"retentionPolicy.ttl must be between 1 s and {MAX_TTL_S} s")
        if not isinstance(self.output_format, OutputFormat):
            raise Invalid("outputFormat must be one of text, json, binary")

    def fingerprint(self) -> str:
        """Stable hash of the request: a resubmit with the same id must match it."""
        canonical = json.dumps(asdict(self), sort_keys=True, default=str)
        return hashlib.sha256(canonical.encode()).hexdigest()[:32]


def _check_text(name: str, value: object, limit: int) -> None:
    if value is None:
        return
    if not isinstance(value, str):
        raise Invalid(f"{name} must be a string")
    if len(value) > limit:
        raise TooLarge(f"{name} is longer than {limit} characters")
