"""The OpenAPI document's share of the contract: the bearer key, and each operation's errors.

Every error answer has one shape, `ErrorBody` (`serve_app.errors`); `responses(...)` lists
the statuses an operation gives, so clients and the fuzzer (tests/e2e/test_fuzz.py) see them.
"""

from __future__ import annotations

from typing import Any

from fastapi import FastAPI
from fastapi.openapi.utils import get_openapi
from pydantic import BaseModel


class ErrorDetail(BaseModel):
    code: str
    message: str


class ErrorBody(BaseModel):
    """`{"error": {"code", "message"}}`: `code` is stable and machine readable."""

    error: ErrorDetail


WHY = {
    304: "Not Modified: the job still has the revision `If-None-Match` names.",
    400: "Bad request: malformed JSON, a cursor this service did not give out, or a key with"
    " several namespaces that did not say which.",
    401: "No API key, or an unknown or revoked one (`Authorization: Bearer <key>`).",
    403: "The key may not use this namespace, or the operation needs the admin key.",
    404: "No such job, namespace, key, delivery or output version.",
    405: "The path exists, the method does not; `Allow` lists the methods.",
    406: "Not Acceptable: `Accept-Encoding` refuses every coding offered (zstd, gzip, identity).",
    408: "The request's body stopped coming for 30 s; nothing of it was kept (send it again).",
    409: "Conflicts with the current state: a finished job, a job id taken by another request,"
    " a seq that leaves a gap or repeats with other data, a namespace that exists.",
    413: "A body, an id, a name or a field is over its limit.",
    416: "Range Not Satisfiable: the range starts at or past the end of the output;"
    " `Content-Range: bytes */<size>` gives its size.",
    422: "A value is malformed or out of range, or no store can hold it.",
    503: "Unavailable for now (a shard restarting, the store down, a full write buffer):"
    " retry after `Retry-After` seconds.",
}

#: What every API operation may answer: the key, the namespace and the limits are checked
#: on every request, and every request may meet a restarting shard or store.
COMMON = (400, 401, 403, 413, 422, 503)


def responses(*statuses: int) -> dict[int | str, dict[str, Any]]:
    """The `responses=` of a route or router: each status with its reason and error shape."""
    return {
        status: (
            {"description": WHY[status]}
            if status == 304
            else {"description": WHY[status], "model": ErrorBody}
        )
        for status in statuses
    }


def install(app: FastAPI) -> None:
    """Serve the document with the bearer scheme on every `/api/` operation."""

    def document() -> dict[str, Any]:
        if app.openapi_schema is None:
            schema = get_openapi(
                title=app.title, version=app.version, description=app.description, routes=app.routes
            )
            schema.setdefault("components", {})["securitySchemes"] = {
                "bearer": {"type": "http", "scheme": "bearer", "description": "An API key."}
            }
            for path, operations in schema["paths"].items():
                if path.startswith("/api/"):
                    for operation in operations.values():
                        operation["security"] = [{"bearer": []}]
            app.openapi_schema = schema
        return app.openapi_schema

    app.openapi = document  # type: ignore[method-assign]
