"""One shared copy of the equal values that records read back from a store repeat: a
shard holding a million Running jobs keeps one "prod" tag, one copy of each namespace's
name and one `("job.completed",)` between them, not a million each.

Every value a store returns is a new object, even when a thousand rows hold the same
text; these functions hand back an equal object that is shared. Values stay what they
are (the same type, equal, immutable): only their identity changes.
"""

from __future__ import annotations

import functools
import json
import math
import sys

#: Distinct tuples remembered (tags, webhook events); past that the least recently seen go,
#: so free-form values cost a bounded amount.
MAX_SHARED_TUPLES = 4096
#: Distinct numbers remembered (TTLs, timestamps' common values).
MAX_SHARED_NUMBERS = 1024
_ZERO = 0.0


def text(value: str | None) -> str | None:
    """`value`, interned (an interned string no longer used is freed, as any other)."""
    return None if value is None else sys.intern(value)


@functools.lru_cache(maxsize=MAX_SHARED_TUPLES)
def _strings(values: tuple[str, ...]) -> tuple[str, ...]:
    return tuple(sys.intern(value) for value in values)


def strings(values: tuple[str, ...] | list[str]) -> tuple[str, ...]:
    """The tuple of `values` (interned strings), shared with every equal one seen lately."""
    return _strings(tuple(values))


@functools.lru_cache(maxsize=MAX_SHARED_TUPLES)
def json_strings(text: str) -> tuple[str, ...]:
    """The JSON list of strings `text` as a shared tuple, parsed once per distinct text."""
    return strings(json.loads(text))


def maybe_strings(values: tuple[str, ...] | list[str] | None) -> tuple[str, ...] | None:
    return None if values is None else strings(values)


@functools.lru_cache(maxsize=MAX_SHARED_NUMBERS)
def _integer(value: int) -> int:
    return value


def integer(value: int | None) -> int | None:
    """`value` (an int), shared with every equal one seen lately (`bool` is left as is)."""
    return value if value is None or type(value) is not int else _integer(value)


def zero_or(value: float) -> float:
    """`value`, or the one shared 0.0 when it is the float +0.0 (a new job's progress)."""
    if type(value) is float and value == 0.0 and math.copysign(1.0, value) > 0:
        return _ZERO
    return value


def same_or(value: float, other: float) -> float:
    """`other` when it is the same float as `value` (a new job's `updated_at` is its
    `created_at`), else `value`."""
    if type(value) is float and type(other) is float and value == other:
        return other
    return value
