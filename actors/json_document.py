"""Whether a json job's output is one JSON document (RFC 8259), checked page by page.

The bytes are fed to an incremental parser (ijson over yajl, its C backend) that builds
nothing: memory is its state and one page, whatever the document's size. yajl is strict:
no comments, no NaN, nothing after the document, no byte order mark. A number of more than
4,300 digits is refused too (Python's own limit for converting it).
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator

import ijson

#: A page this big is parsed in a worker thread, so a long check leaves the event loop free.
THREAD_BYTES = 256 * 1024


class _Discard:
    """The parser's events go nowhere: only whether it accepts the bytes counts."""

    def send(self, event: object) -> None:
        pass


async def document_error(pages: AsyncIterator[bytes]) -> str | None:
    """None when `pages`, in order, make one JSON document; else what is wrong with them
    (the parser's one-line reason, e.g. "parse error: premature EOF")."""
    parser = ijson.basic_parse_coro(_Discard())
    try:
        async for page in pages:
            if len(page) > THREAD_BYTES:
                await asyncio.to_thread(parser.send, page)
            else:
                parser.send(page)
        parser.close()
    except ijson.JSONError as exc:
        return str(exc).splitlines()[0].strip() if str(exc) else "not JSON"
    except UnicodeDecodeError:  # yajl refuses a lone low surrogate escape (it takes a high one)
        return "a string holds a \\u escape of a lone surrogate (U+DC00..U+DFFF)"
    except (ValueError, SystemError):  # yajl's C backend: a number Python cannot convert
        return "a number has more than 4300 digits"
    return None
