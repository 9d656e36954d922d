"""Entity tags and `If-None-Match`: the grammar and weak comparison of RFC 9110 §8.8.3 and
§13.1.2, evaluated the same way by every route that gives out an `ETag`.

    If-None-Match = "*" / #entity-tag            (§13.1.2; a list, §5.6.1)
    entity-tag    = [ weak ] opaque-tag          (§8.8.3)
    weak          = %s"W/"
    opaque-tag    = DQUOTE *etagc DQUOTE
    etagc         = %x21 / %x23-7E / obs-text    (obs-text = %x80-FF)

A field value that does not match this grammar is ignored as a whole, as if it were absent
(so the full 200 answer, never a 304 built on a guess). RFC 9110 says so explicitly for an
`If-Modified-Since` that is not a date (§13.1.3); a 304 answered on a misread tag would be
wrong, a 200 never is. Several `If-None-Match` lines are one list (§5.3).
"""

from __future__ import annotations

import re
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Annotated

from fastapi import Depends, Header, Request

_TAG = re.compile(r'(W/)?"([\x21\x23-\x7e\x80-\xff]*)"')
_OWS = " \t"


@dataclass(frozen=True, slots=True)
class EntityTag:
    """`opaque` is the tag without its quotes."""

    opaque: str
    weak: bool = False

    def __str__(self) -> str:
        return f'{"W/" if self.weak else ""}"{self.opaque}"'


@dataclass(frozen=True, slots=True)
class IfNoneMatch:
    """A parsed `If-None-Match`: `*`, or the entity tags listed (maybe none)."""

    any: bool = False
    tags: tuple[EntityTag, ...] = ()

    def matches(self, current: EntityTag) -> bool:
        """True when the condition is false (§13.1.2): a `GET` answers 304. `*` matches any
        current representation; a listed tag matches by weak comparison (§8.8.3.2: the
        opaque tags are equal character by character, `W/` or not)."""
        return self.any or any(tag.opaque == current.opaque for tag in self.tags)


def parse_if_none_match(values: Sequence[str]) -> IfNoneMatch | None:
    """The field's lines (`values`, combined as one list), parsed; None when there are none
    or they do not match the grammar (then the field is ignored)."""
    if not values:
        return None
    value = ", ".join(values)
    if value.strip(_OWS) == "*":
        return IfNoneMatch(any=True)
    tags = parse_entity_tags(value)
    return IfNoneMatch(tags=tags) if tags is not None else None


def parse_entity_tags(value: str) -> tuple[EntityTag, ...] | None:
    """`#entity-tag`: tags separated by commas with optional whitespace, empty elements
    allowed (§5.6.1.2); None when `value` is not such a list. Linear in `value`."""
    tags: list[EntityTag] = []
    pos, end = 0, len(value)
    while True:
        pos = _skip_ows(value, pos)
        while pos < end and value[pos] == ",":
            pos = _skip_ows(value, pos + 1)
        if pos == end:
            return tuple(tags)
        found = _TAG.match(value, pos)
        if found is None:
            return None
        tags.append(EntityTag(found[2], weak=found[1] is not None))
        pos = _skip_ows(value, found.end())
        if pos < end and value[pos] != ",":
            return None


def _skip_ows(value: str, pos: int) -> int:
    while pos < len(value) and value[pos] in _OWS:
        pos += 1
    return pos


async def if_none_match(
    request: Request,
    if_none_match: Annotated[
        str | None,
        Header(description="Entity tags (RFC 9110 §13.1.2): 304 when one matches the ETag."),
    ] = None,
) -> IfNoneMatch | None:
    """The request's `If-None-Match`, every line of it (`if_none_match` names the header in
    the OpenAPI document; FastAPI would pass only its first line)."""
    return parse_if_none_match(request.headers.getlist("if-none-match"))


Condition = Annotated[IfNoneMatch | None, Depends(if_none_match)]
