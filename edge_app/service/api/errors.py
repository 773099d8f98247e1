"""The API's error answers: every refusal is JSON `{"detail": "what is wrong and how to fix it"}` with the status
its cause maps to (422 invalid request, 400 bad input, 404 unknown, 409 not ready or a cap reached, 429 too many
questions with Retry-After, 503 too many event streams or stopping, 507 a full or read-only disk, 500 a bug)."""

from __future__ import annotations

import logging
import sqlite3

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from starlette.exceptions import HTTPException as StarletteHTTPException

from rlivs.runtime.errors import UserError

from ..core import Busy, LimitReached, NotFound, NotReady, QuestionCancelled
from ..events import TooManySubscribers
from ..security import json_error

log = logging.getLogger("rlivs.serve")


def _validation_message(exc: RequestValidationError) -> str:
    parts = []
    for err in exc.errors():
        loc = [str(x) for x in err.get("loc", ())]
        if loc and loc[0] in ("body", "query", "path", "header", "cookie"):
            loc = loc[1:]  # where it was sent; the field name is what the caller needs
        where = ".".join(loc) or "body"
        msg = str(err.get("msg", "invalid")).removeprefix("Value error, ")
        if err.get("type") == "json_invalid":
            msg = "the body is not valid JSON"
        elif err.get("type") == "string_unicode":
            msg = "not valid Unicode text (a lone surrogate such as \\ud800?): send the text as UTF-8"
        elif err.get("type") == "extra_forbidden":
            msg = "unknown field (check the spelling; see the API in docs/edge_app.md)"
        elif err.get("type") == "missing":
            msg = "required"
        parts.append(f"{where}: {msg}")
    return "; ".join(parts) or "invalid request"



def install(app: FastAPI, service) -> None:
    """The exception handlers of `app` (rejections are counted in the service's metrics)."""

    @app.exception_handler(RequestValidationError)
    async def _invalid(request: Request, exc: RequestValidationError):
        errors = [{"loc": list(e.get("loc", ())), "msg": e.get("msg"), "type": e.get("type")} for e in exc.errors()]
        return JSONResponse({"detail": _validation_message(exc), "errors": errors}, status_code=422)

    @app.exception_handler(StarletteHTTPException)
    async def _http(request: Request, exc: StarletteHTTPException):
        detail = exc.detail
        if exc.status_code == 400 and detail == "There was an error parsing the body":  # e.g. bytes that are not UTF-8
            detail = "the body could not be parsed: send JSON encoded as UTF-8 with Content-Type: application/json"
        return json_error(exc.status_code, str(detail), getattr(exc, "headers", None))

    @app.exception_handler(NotFound)
    async def _not_found(request: Request, exc: NotFound):
        return json_error(404, str(exc.args[0]) if exc.args else "not found")

    @app.exception_handler(NotReady)
    async def _not_ready(request: Request, exc: NotReady):
        return json_error(409, str(exc))

    @app.exception_handler(UserError)
    async def _bad(request: Request, exc: UserError):
        return json_error(400, str(exc))

    @app.exception_handler(LimitReached)
    async def _limit(request: Request, exc: LimitReached):
        return json_error(409, str(exc))

    @app.exception_handler(Busy)
    async def _busy(request: Request, exc: Busy):
        service.metrics.inc("rlivs_http_rejected_total", reason="questions")
        return json_error(429, str(exc), {"Retry-After": str(exc.retry_after_s)})

    @app.exception_handler(QuestionCancelled)
    async def _cancelled(request: Request, exc: QuestionCancelled):  # only when the service stops under a question
        return json_error(503, f"{exc}: the service is stopping; ask again when it is back", {"Retry-After": "5"})

    @app.exception_handler(TooManySubscribers)
    async def _subscribers(request: Request, exc: TooManySubscribers):
        service.metrics.inc("rlivs_http_rejected_total", reason="subscribers")
        return json_error(503, str(exc), {"Retry-After": "5"})

    @app.exception_handler(sqlite3.OperationalError)
    async def _storage(request: Request, exc: sqlite3.OperationalError):
        text = str(exc).lower()
        if "full" in text or "readonly" in text or "read-only" in text:
            what = "full" if "full" in text else "read-only"
            return json_error(507, f"the service could not store this: its database's disk is {what} ({exc}); "
                                    f"nothing was stored and everything before is intact: free space on the device "
                                    f"and try again", {"Retry-After": "30"})
        return await _crash(request, exc)

    @app.exception_handler(Exception)
    async def _crash(request: Request, exc: Exception):
        log.exception("request %s %s failed", request.method, request.url.path)
        from rlivs.edge_app.options import failed_component

        msg = " ".join(str(exc).split())[:200]
        return json_error(500, f"internal error: {failed_component(exc)} failed ({type(exc).__name__}: {msg}). "
                                "This is a bug in rlivs, not your request: the traceback is in the server log; "
                                "the memory is intact")
