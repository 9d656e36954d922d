"""The one mapping from our errors to HTTP: `{"error": {"code", "message"}}` (RFC 9110 codes),
and to WebSocket close codes (RFC 6455 §7.4).

Ray's errors never get here: `ShardClient` translates them (`ShardUnavailable`).
"""

from __future__ import annotations

import logging
from collections.abc import Mapping, Sequence
from typing import Any

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse, Response
from starlette.exceptions import HTTPException
from starlette.requests import ClientDisconnect
from starlette.routing import Match

from actors import metrics
from actors.limits import clip, storable
from storage import errors

log = logging.getLogger(__name__)

STATUS = {
    errors.TooLarge: 413,
    errors.Unstorable: 422,
    errors.Invalid: 422,
    errors.BadRequest: 400,
    errors.Unauthorized: 401,
    errors.Forbidden: 403,
    errors.NotFound: 404,
    errors.RequestTimeout: 408,
    errors.Conflict: 409,
    errors.Overloaded: 503,
    errors.StoreUnavailable: 503,
    errors.ShardUnavailable: 503,
    errors.DnsUnavailable: 503,
}


#: The status logged for a request its client closed before it was read (no one gets it).
CLIENT_CLOSED = 499

#: An error message may quote the request (a bad field name, a bad value): it is clipped,
#: and what UTF-8 cannot carry is replaced, so rendering an error never fails.
MAX_MESSAGE_CHARS = 1000


#: A WebSocket closed after an error says why with its close code (RFC 6455 §7.4.1; 1013 is
#: in the IANA registry of close codes, RFC 6455 §11.7). The first class that matches wins.
CLOSE_CODES: tuple[tuple[type[errors.AosError], int], ...] = (
    (errors.TooLarge, 1009),  # Message Too Big
    (errors.Invalid, 1007),  # Invalid frame payload data (Unstorable too: the data's fault)
    (errors.Conflict, 1008),  # Policy Violation
    (errors.Forbidden, 1008),
    (errors.Unauthorized, 1008),
    (errors.NotFound, 1008),
    (errors.BadRequest, 1008),
    (errors.Overloaded, 1013),  # Try Again Later
    (errors.ShardUnavailable, 1013),
    (errors.DnsUnavailable, 1013),
    (errors.StoreUnavailable, 1011),  # Internal Error (the store failed; retryable)
)
#: A bug: RFC 6455's "unexpected condition that prevented it from fulfilling the request".
CLOSE_INTERNAL = 1011


def close_code(exc: BaseException) -> int:
    """The WebSocket close code for an error (`CLOSE_CODES`; anything else is 1011)."""
    return next((code for cls, code in CLOSE_CODES if isinstance(exc, cls)), CLOSE_INTERNAL)


def error_body(exc: BaseException) -> dict[str, Any]:
    """`{"error": {"code", "message"}}` for any error (a bug is logged, its text never sent)."""
    if isinstance(exc, errors.AosError):
        return error_json(exc.code, exc.message)
    log.exception("unhandled error", exc_info=exc)
    return error_json("internal", "internal error")


def error_response(
    status: int,
    code: str,
    message: str,
    *,
    retry_after_s: float | None = None,
    headers: Mapping[str, str] | None = None,
) -> JSONResponse:
    """`{"error": {"code", "message"}}` with `status`; `Retry-After` (whole seconds, at
    least 1) when `retry_after_s` is given."""
    headers = dict(headers or {})
    if retry_after_s:
        headers["Retry-After"] = retry_after(retry_after_s)
    return JSONResponse(error_json(code, message), status_code=status, headers=headers)


def error_json(code: str, message: str) -> dict[str, dict[str, str]]:
    """The error body `{"error": {"code", "message"}}`, its message clipped and made encodable."""
    return {"error": {"code": code, "message": storable(clip(message, MAX_MESSAGE_CHARS) or "")}}


def status_of(exc: errors.AosError) -> int:
    """The HTTP status of one of our errors."""
    return next(s for cls, s in STATUS.items() if isinstance(exc, cls))


def retry_after(seconds: float) -> str:
    """A `Retry-After` value: whole seconds, at least 1."""
    return str(max(1, round(seconds)))


def to_response(exc: BaseException) -> JSONResponse:
    """The response for any error an endpoint lets through."""
    if isinstance(exc, errors.AosError):
        if isinstance(exc, errors.Overloaded):
            metrics.HTTP_SHED.inc()
        status = status_of(exc)
        retry = exc.retry_after_s or (1.0 if status == 503 else None)
        return error_response(status, exc.code, exc.message, retry_after_s=retry)
    log.exception("unhandled error", exc_info=exc)
    return error_response(500, "internal", "internal error")


def invalid_body(
    problems: Sequence[Mapping[str, Any]], *, subject: str = "the body"
) -> errors.AosError:
    """Our error for a JSON body pydantic refused (its `errors()`): `BadRequest` for JSON
    that is not well formed, else `Invalid` naming the first problem's field. `subject`
    is what the message calls the value: a job of a batch submit (`serve_app.batch`) is
    checked as a body of its own."""
    first = problems[0] if problems else {}
    loc, kind = tuple(first.get("loc", ())), first.get("type")
    if kind == "json_invalid":  # FastAPI's loc is ("body", <character offset>)
        at = f" at character {loc[-1]}" if len(loc) > 1 else ""
        reason = first.get("ctx", {}).get("error", "")
        return errors.BadRequest(f"the body is not well-formed JSON{at}: {reason}")
    loc = loc[1:] if loc[:1] == ("body",) else loc  # FastAPI's locations start at the body
    if not loc and kind in _NOT_AN_OBJECT:
        how = ", sent with Content-Type: application/json" if subject == "the body" else ""
        return errors.Invalid(f"{subject} must be a JSON object{how}")
    where = ".".join(str(part) for part in loc)
    message = f"{where}: {first.get('msg', 'invalid')}" if where else first.get("msg", "")
    return errors.Invalid(message or "invalid request")


def install(app: FastAPI) -> None:
    @app.exception_handler(errors.AosError)
    async def _ours(request: Request, exc: Exception) -> JSONResponse:
        return to_response(exc)

    @app.exception_handler(RequestValidationError)
    async def _invalid(request: Request, exc: RequestValidationError) -> JSONResponse:
        return to_response(invalid_body(exc.errors()))

    @app.exception_handler(HTTPException)
    async def _http(request: Request, exc: HTTPException) -> JSONResponse:
        codes = {400: errors.BadRequest.code, 404: "not_found", 405: "method_not_allowed"}
        code = codes.get(exc.status_code, "http_error")
        headers = dict(exc.headers or {})
        if exc.status_code == 405:  # RFC 9110 §15.5.6: Allow lists every method of the resource
            headers["Allow"] = ", ".join(_allowed_methods(request))
        return error_response(exc.status_code, code, str(exc.detail), headers=headers)

    @app.exception_handler(ClientDisconnect)
    async def _gone(request: Request, exc: Exception) -> Response:
        # No one receives this: the status is for the access log, which said 500 (a bug)
        # for every client that hung up mid-body. 499 is nginx's "client closed request".
        log.info("the client closed its request: %s %s", request.method, request.url.path)
        return Response(status_code=CLIENT_CLOSED)

    @app.exception_handler(Exception)
    async def _other(request: Request, exc: Exception) -> JSONResponse:
        return to_response(exc)


#: What pydantic says of a body that is missing, or not a JSON object (often a form body).
_NOT_AN_OBJECT = {"missing", "model_attributes_type", "dict_type", "model_type"}


def _allowed_methods(request: Request) -> list[str]:
    """Every method some route serves at this path (Starlette's own 405 names only the
    first route that matched the path)."""
    return [
        method
        for method in _METHODS
        if any(
            route.matches({**request.scope, "method": method})[0] is Match.FULL
            for route in request.app.routes
        )
    ]


_METHODS = ("GET", "HEAD", "POST", "PUT", "PATCH", "DELETE")
