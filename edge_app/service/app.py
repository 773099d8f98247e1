"""The HTTP face of `rlivs serve`: a FastAPI app over an `EdgeService`, and a uvicorn runner.

Endpoints (JSON unless stated; every one but `/healthz` and the page `/` needs the bearer token when one is set):

    GET    /                          the web page (static HTML + JS; it holds no data, the data comes from the API)
    GET    /healthz                   liveness and a health summary (no token needed; no stream names or URLs)
    GET    /metrics                   Prometheus text format
    POST   /v1/tickets                {"path"} -> {"ticket", "path", "expires_in_s"} (201): one GET of /v1/events or
                                      a thumbnail with ?ticket=, within 60 s (for EventSource and <img>)
    GET    /v1/streams                every stream: clips, state, source statistics
    POST   /v1/ask                    {"question", "stream"?, "from"?, "to"?} -> answer, its time window, the captions
                                      used (stream and wall-clock times), latency
    POST   /v1/ask/stream             the same, as server-sent events: `token` {"text"} as the answer is generated,
                                      then `answer` (the /v1/ask JSON) or `error` {"status", "detail"}
    GET    /v1/captions               ?stream=&from=&to=&limit=&offset= -> captions, paged; ?stream=&clip= -> that
                                      clip (none when it was gated or forgotten: a stream's clips may have gaps)
    GET    /v1/thumbnails/{stream}/{clip}.jpg    a clip's middle frame
    GET    /v1/kept/{stream}/{clip}   which visual tokens selection kept (flat indices, tokens per frame, grid)
    GET    /v1/events                 server-sent events: `caption` and `watch` (?after=: as Last-Event-ID)
    POST   /v1/watches                {"query", "threshold"?, "stream"?, "webhook"?} -> the watch (201)
    GET    /v1/watches                the watches with match counts
    GET    /v1/watches/{id}           one watch
    DELETE /v1/watches/{id}           204
    GET    /v1/watches/{id}/matches   ?limit=&before= newest first
    GET    /v1/matches                every watch's matches, newest first

Host: only requests whose `Host` names the bound address, a loopback name (127.0.0.1, localhost, [::1]) or a name
given with `--allow-host` are served (421 otherwise, before anything else), so a web page on another site cannot
reach the API through DNS rebinding. When bound to every address (0.0.0.0 / ::), any IP-literal Host is served too.

Limits (`connections.Limits`, the connection layer in connections.py): open connections (over the cap a connection
gets 503 and is closed at once, freeing its descriptor), of those at most `max_per_client` per client address and a
reserve only /healthz and /metrics may use; a deadline for the request head, then one for the body (a grace period
plus its declared length at a minimum rate: 408 and closed); an idle keep-alive closed on time whatever trickles in;
every refusal (status >= 400) closes its connection; open event streams, in all (503) and per client address; waiting
questions (429 with Retry-After, core.QuestionGate). /healthz and /metrics run on the event loop, never behind a
question. The asyncio "out of system resource" log line is rate-limited.

Auth: `Authorization: Bearer <token>`, nothing the browser sends by itself: no cookie is handed out or accepted (a
cookie reaches every port of the host). What cannot send a header (EventSource, <img>) gets a ticket (`Tickets`,
`TicketAuth`): `POST /v1/tickets` with the header, then `GET path?ticket=...`, valid once, for that path, for 60 s.
Questions: both ask endpoints admit at the one gate on the event loop (429 at once when full) and answer on the
service's question pool; a client that hangs up has its question dropped or stopped. Errors are JSON
`{"detail": "what is wrong and how to fix it"}`.
"""

from __future__ import annotations

import asyncio
import ipaddress
import logging
import resource
import secrets
import signal
import socket
import sqlite3
import threading
import time
from dataclasses import dataclass, replace
from typing import Optional, Sequence
from urllib.parse import parse_qs, unquote

import h11
import uvicorn
from uvicorn.protocols.http.h11_impl import H11Protocol
from fastapi import FastAPI, Header, Path, Query, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import HTMLResponse, JSONResponse, Response, StreamingResponse
from pydantic import BaseModel, ConfigDict, Field, field_validator
from starlette.exceptions import HTTPException as StarletteHTTPException

from .core import Busy, EdgeService, LimitReached, NotFound, NotReady, Question, QuestionCancelled
from .events import Event, TooManySubscribers
from .metrics import CONTENT_TYPE
from .page import PAGE, PAGE_HEADERS
from .webhooks import check_syntax
from rlivs.runtime.errors import UserError

log = logging.getLogger("rlivs.serve")

OPEN_PATHS = ("/healthz", "/", "/favicon.ico")  # served without a token: health, the static page shell, no icon
MAX_QUESTION = 2000  # characters
MAX_QUERY = 500  # characters of a watch query
MAX_NAME = 128  # characters of a stream name
MAX_URL = 2000  # characters of a webhook URL
MAX_ID = 2**63 - 1  # ids, clip indices and offsets are SQLite INTEGERs: anything larger is refused with 422


# ---------------------------------------------------------------------------------------------------------------------
# Request bodies
# ---------------------------------------------------------------------------------------------------------------------


class AskRequest(BaseModel):
    model_config = ConfigDict(extra="forbid", str_strip_whitespace=True)
    question: str = Field(..., min_length=1, max_length=MAX_QUESTION, description="The question.")
    stream: Optional[str] = Field(None, min_length=1, max_length=MAX_NAME, description="Only this stream.")
    from_: Optional[str] = Field(None, alias="from", min_length=1, max_length=64,
                                 description="Only captions from this wall-clock time: ISO 8601, -2h, yesterday, ...")
    to: Optional[str] = Field(None, min_length=1, max_length=64, description="... and up to this time.")


def _check_webhook(v: Optional[str]) -> Optional[str]:
    if v is not None:
        check_syntax(v)  # the address policy is applied by the service (400) and again at every connection
    return v


def _check_text(v: Optional[str]) -> Optional[str]:
    if v is not None and any(ord(c) < 32 for c in v):
        raise UserError("holds control characters (NUL, escape, newline ...): send plain text")
    return v


class WatchRequest(BaseModel):
    model_config = ConfigDict(extra="forbid", str_strip_whitespace=True)
    query: str = Field(..., min_length=1, max_length=MAX_QUERY, description="What to watch for.")
    threshold: Optional[float] = Field(
        None, ge=-1.0, le=1.0, allow_inf_nan=False, strict=True,
        description="Match when the caption's relevance is >= this (default: half the query's self-relevance).")
    stream: Optional[str] = Field(None, min_length=1, max_length=MAX_NAME, description="Only this stream.")
    webhook: Optional[str] = Field(None, max_length=MAX_URL, description="POST each match here.")

    _webhook = field_validator("webhook")(_check_webhook)
    _query = field_validator("query", "stream")(_check_text)


# ---------------------------------------------------------------------------------------------------------------------
# Middleware: auth and body size (pure ASGI, so streaming responses pass straight through)
# ---------------------------------------------------------------------------------------------------------------------


def _json_error(status: int, detail: str, headers: dict | None = None) -> JSONResponse:
    return JSONResponse({"detail": detail}, status_code=status, headers=headers)


class HostCheck:
    """Which `Host` header values are served: the bound address, loopback names, `--allow-host` names, and any IP
    literal when bound to every address. A DNS-rebinding page always sends its own (non-literal) name."""

    def __init__(self, bound: str, allow: Sequence[str] = ()):
        self.names = {"localhost", _host_key(bound)} | {_host_key(a) for a in allow}
        try:
            self.any_ip = ipaddress.ip_address(bound.strip("[]")).is_unspecified
        except ValueError:
            self.any_ip = False

    def allows(self, host_header: str | None) -> bool:
        if host_header is None:
            return True  # HTTP/1.0 without Host: not a browser, so not a rebinding page
        host = _host_key(host_header)
        if host in self.names:
            return True
        try:
            ip = ipaddress.ip_address(host.strip("[]"))
        except ValueError:
            return False
        return ip.is_loopback or self.any_ip


def _host_key(value: str) -> str:
    """'Example.COM.:8000' -> 'example.com'; '[::1]:8000' -> '::1'."""
    v = value.strip().lower()
    if v.startswith("["):
        return v[1:v.find("]")] if "]" in v else v
    if v.count(":") == 1:
        v = v.split(":", 1)[0]
    return v.rstrip(".")


TICKET_PATHS = ("/v1/events", "/v1/thumbnails/")  # what a ticket may be issued for: exact path, or a path prefix
TICKET_TTL_S = 60.0


class Tickets:
    """Credentials for the GET requests a browser makes without a script's headers (`EventSource('/v1/events')`,
    `<img src=/v1/thumbnails/...>`): `POST /v1/tickets {"path"}` (with the bearer header) issues one; the request
    `GET path?ticket=...` redeems it. Each is random, valid once, for that one path, for `ttl_s` seconds, and lives in
    the server's memory only (at most `most`; the oldest go first). Nothing is stored in the browser by the server:
    no cookie, so nothing is sent by the browser on its own to this or any other port of the host."""

    def __init__(self, ttl_s: float = TICKET_TTL_S, most: int = 1000):
        self.ttl_s, self.most = ttl_s, most
        self._lock = threading.Lock()
        self._issued: dict[str, tuple[str, float]] = {}  # ticket -> (path, expiry (monotonic))

    def issue(self, path: str) -> str:
        ticket = secrets.token_urlsafe(32)
        now = time.monotonic()
        with self._lock:
            self._issued = {k: v for k, v in self._issued.items() if v[1] > now}
            while len(self._issued) >= self.most:
                self._issued.pop(next(iter(self._issued)))  # the oldest
            self._issued[ticket] = (path, now + self.ttl_s)
        return ticket

    def redeem(self, ticket: str, path: str) -> bool:
        """True once for a ticket issued for `path` (the decoded request path) and not expired; it is spent even when
        the path is wrong."""
        with self._lock:
            issued = self._issued.pop(ticket, None)
        return issued is not None and issued[1] > time.monotonic() and secrets.compare_digest(
            issued[0].encode("utf-8", "surrogateescape"), path.encode("utf-8", "surrogateescape"))


def ticket_path(path: str) -> str:
    """The decoded request path a ticket is for; ValueError unless it is one of TICKET_PATHS."""
    if not path.startswith("/") or "?" in path or "#" in path or any(ord(c) < 32 or ord(c) == 127 for c in path):
        raise ValueError("must be a path such as /v1/events, without a query or fragment")
    decoded = unquote(path)
    if decoded != TICKET_PATHS[0] and not (decoded.startswith(TICKET_PATHS[1]) and decoded.endswith(".jpg")):
        raise ValueError("tickets are for /v1/events and /v1/thumbnails/{stream}/{clip}.jpg only (every other "
                         "request can send the Authorization header)")
    return decoded


class TicketRequest(BaseModel):
    model_config = ConfigDict(extra="forbid")
    path: str = Field(..., min_length=1, max_length=1000, description="The path the ticket is for, e.g. /v1/events.")

    @field_validator("path")
    @classmethod
    def _path(cls, v: str) -> str:
        return ticket_path(v)


class TicketAuth:
    """Runs before GuardMiddleware: a GET/HEAD with `?ticket=` that redeems a ticket for its path goes on as an
    authorized request (the bearer header put in its scope for GuardMiddleware, whose checks all still run); a ticket
    that is spent, expired, for another path or unknown is a 401. Other methods (a ticket never authorizes them),
    requests without a ticket, and those with a Host that is not served (GuardMiddleware answers 421 without the ticket
    being spent) pass through unchanged."""

    def __init__(self, app, token: str | None, tickets: Tickets, hosts: HostCheck):
        self.app, self.token, self.tickets, self.hosts = app, token, tickets, hosts

    async def __call__(self, scope, receive, send):
        if (scope["type"] != "http" or not self.token or scope.get("method") not in ("GET", "HEAD")
                or b"ticket" not in scope.get("query_string", b"")):
            return await self.app(scope, receive, send)
        given = parse_qs(scope["query_string"].decode("latin-1"), keep_blank_values=True).get("ticket")
        hosts = [v.decode("latin-1") for k, v in scope.get("headers", []) if k.lower() == b"host"]
        if not given or len(hosts) > 1 or not self.hosts.allows(hosts[0] if hosts else None):
            return await self.app(scope, receive, send)
        if len(given) == 1 and self.tickets.redeem(given[0], scope["path"]):
            headers = [(k, v) for k, v in scope.get("headers", []) if k.lower() != b"authorization"]
            headers.append((b"authorization", b"Bearer " + self.token.encode()))
            return await self.app(dict(scope, headers=headers), receive, send)
        msg = ("the ticket is not valid for this request: a ticket is valid once, for the path it was issued for, for "
               f"{TICKET_TTL_S:g} s; get a new one with POST /v1/tickets {{\"path\": ...}} (bearer header), or send "
               "the header 'Authorization: Bearer <token>' instead")
        return await _json_error(401, msg, {"WWW-Authenticate": 'Bearer realm="rlivs"'})(scope, receive, send)


class GuardMiddleware:
    def __init__(self, app, token: str | None, max_body_bytes: int, hosts: HostCheck, metrics=None):
        self.app, self.token, self.max_body, self.hosts, self.metrics = app, token, max_body_bytes, hosts, metrics

    def _authorized(self, scope) -> bool:
        """The bearer header only: no cookie is a credential (a cookie reaches every port of the host; the page's
        event stream and thumbnails use single-use tickets, TicketAuth)."""
        headers = {k.decode("latin-1").lower(): v.decode("latin-1") for k, v in scope.get("headers", [])}
        scheme, _, given = headers.get("authorization", "").partition(" ")
        return scheme.lower() == "bearer" and secrets.compare_digest(given.strip().encode(), self.token.encode())

    async def __call__(self, scope, receive, send):
        if scope["type"] != "http":
            return await self.app(scope, receive, send)
        hosts = [v.decode("latin-1") for k, v in scope.get("headers", []) if k.lower() == b"host"]
        if len(hosts) > 1 or not self.hosts.allows(hosts[0] if hosts else None):
            if self.metrics is not None:
                self.metrics.inc("rlivs_http_rejected_total", reason="host")
            msg = (f"this server does not answer to Host {hosts[0] if hosts else ''!r}: use the address it is bound "
                   f"to (or 127.0.0.1 / localhost), or start rlivs serve with --allow-host NAME for a name of this "
                   f"device")
            return await _json_error(421, msg)(scope, receive, send)
        if self.token and scope["path"] not in OPEN_PATHS and not self._authorized(scope):
            msg = ("missing or wrong token: send the header 'Authorization: Bearer <token>' with the token given to "
                   "rlivs serve (--token or RLIVS_TOKEN)")
            return await _json_error(401, msg, {"WWW-Authenticate": 'Bearer realm="rlivs"'})(scope, receive, send)
        if scope.get("method") in ("POST", "PUT", "PATCH"):
            headers = {k.decode("latin-1").lower(): v.decode("latin-1") for k, v in scope.get("headers", [])}
            length = headers.get("content-length")
            if length is None:
                return await _json_error(411, "send the request body with a Content-Length header")(
                    scope, receive, send)
            if not length.isdigit() or int(length) > self.max_body:
                return await _json_error(413, f"request body too large ({length} bytes): at most {self.max_body} "
                                              f"bytes")(scope, receive, send)
        return await self.app(scope, receive, send)


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


# ---------------------------------------------------------------------------------------------------------------------
# The app
# ---------------------------------------------------------------------------------------------------------------------


def create_app(service: EdgeService, token: str | None = None, max_body_bytes: int = 64 * 1024,
               keepalive_s: float = 15.0, hosts: HostCheck | None = None) -> FastAPI:
    app = FastAPI(title="rlivs", version="0.1.0", docs_url=None, redoc_url=None,
                  description="Streaming video question answering on the device.")
    app.state.service = service
    tickets = Tickets()

    @app.exception_handler(RequestValidationError)
    async def _invalid(request: Request, exc: RequestValidationError):
        errors = [{"loc": list(e.get("loc", ())), "msg": e.get("msg"), "type": e.get("type")} for e in exc.errors()]
        return JSONResponse({"detail": _validation_message(exc), "errors": errors}, status_code=422)

    @app.exception_handler(StarletteHTTPException)
    async def _http(request: Request, exc: StarletteHTTPException):
        detail = exc.detail
        if exc.status_code == 400 and detail == "There was an error parsing the body":  # e.g. bytes that are not UTF-8
            detail = "the body could not be parsed: send JSON encoded as UTF-8 with Content-Type: application/json"
        return _json_error(exc.status_code, str(detail), getattr(exc, "headers", None))

    @app.exception_handler(NotFound)
    async def _not_found(request: Request, exc: NotFound):
        return _json_error(404, str(exc.args[0]) if exc.args else "not found")

    @app.exception_handler(NotReady)
    async def _not_ready(request: Request, exc: NotReady):
        return _json_error(409, str(exc))

    @app.exception_handler(UserError)
    async def _bad(request: Request, exc: UserError):
        return _json_error(400, str(exc))

    @app.exception_handler(LimitReached)
    async def _limit(request: Request, exc: LimitReached):
        return _json_error(409, str(exc))

    @app.exception_handler(Busy)
    async def _busy(request: Request, exc: Busy):
        service.metrics.inc("rlivs_http_rejected_total", reason="questions")
        return _json_error(429, str(exc), {"Retry-After": str(exc.retry_after_s)})

    @app.exception_handler(QuestionCancelled)
    async def _cancelled(request: Request, exc: QuestionCancelled):  # only when the service stops under a question
        return _json_error(503, f"{exc}: the service is stopping; ask again when it is back", {"Retry-After": "5"})

    @app.exception_handler(TooManySubscribers)
    async def _subscribers(request: Request, exc: TooManySubscribers):
        service.metrics.inc("rlivs_http_rejected_total", reason="subscribers")
        return _json_error(503, str(exc), {"Retry-After": "5"})

    @app.exception_handler(sqlite3.OperationalError)
    async def _storage(request: Request, exc: sqlite3.OperationalError):
        text = str(exc).lower()
        if "full" in text or "readonly" in text or "read-only" in text:
            what = "full" if "full" in text else "read-only"
            return _json_error(507, f"the service could not store this: its database's disk is {what} ({exc}); "
                                    f"nothing was stored and everything before is intact: free space on the device "
                                    f"and try again", {"Retry-After": "30"})
        return await _crash(request, exc)

    @app.exception_handler(Exception)
    async def _crash(request: Request, exc: Exception):
        log.exception("request %s %s failed", request.method, request.url.path)
        from rlivs.edge_app.options import failed_component

        msg = " ".join(str(exc).split())[:200]
        return _json_error(500, f"internal error: {failed_component(exc)} failed ({type(exc).__name__}: {msg}). "
                                "This is a bug in rlivs, not your request: the traceback is in the server log; "
                                "the memory is intact")

    @app.get("/", response_class=HTMLResponse, include_in_schema=False)
    def page():  # Content-Security-Policy: the page's own script and style (by hash) and requests to this origin only
        return HTMLResponse(PAGE, headers={"Cache-Control": "no-cache", **PAGE_HEADERS})

    @app.get("/favicon.ico", include_in_schema=False)
    def favicon():  # browsers ask for it: "no icon" (204) instead of a 404 in the log and the console
        return Response(status_code=204, headers={"Cache-Control": "max-age=86400"})

    @app.get("/healthz")
    async def healthz():  # on the event loop: never queued behind questions in the thread pool
        return service.health()

    @app.get("/metrics")
    async def metrics():
        return Response(service.render_metrics(), media_type=CONTENT_TYPE)

    @app.post("/v1/tickets", status_code=201)
    def ticket(body: TicketRequest):
        """A ticket for one GET of `path` (/v1/events or a thumbnail) within 60 s, for what cannot send the bearer
        header (EventSource, <img>): `GET path?ticket=...`."""
        return {"ticket": tickets.issue(body.path), "path": body.path, "expires_in_s": tickets.ttl_s}

    @app.get("/v1/streams")
    def streams():
        return {"streams": service.streams()}

    @app.post("/v1/ask")
    async def ask(request: Request, body: AskRequest):
        """Admitted or 429 here, on the loop; answered on the service's question pool; dropped or stopped when the
        client hangs up first."""
        q = service.submit_question(body.question, body.stream, body.from_, body.to)
        try:
            present, _ = await _unless_gone(request, _finished(q))
        except asyncio.CancelledError:  # the server is shutting down under it
            q.cancel()
            raise
        if not present:
            q.cancel()
            return Response(status_code=499)  # nobody reads it (uvicorn sends nothing to a closed connection)
        return q.future.result()  # a refusal raises: the exception handlers answer it

    @app.post("/v1/ask/stream")
    async def ask_stream(request: Request, body: AskRequest):
        return await _streamed_answer(service, request, body)

    @app.get("/v1/captions")
    def captions(stream: Optional[str] = Query(None, min_length=1, max_length=MAX_NAME),
                 t_from: Optional[float] = Query(None, alias="from", ge=0, allow_inf_nan=False,
                                                 description="seconds, stream time"),
                 t_to: Optional[float] = Query(None, alias="to", ge=0, allow_inf_nan=False),
                 limit: int = Query(50, ge=1, le=500), offset: int = Query(0, ge=0, le=MAX_ID),
                 clip: Optional[int] = Query(None, ge=0, le=MAX_ID, description="exactly this clip of `stream`")):
        if t_from is not None and t_to is not None and t_from > t_to:
            raise UserError(f"from={t_from} is after to={t_to}: pass from <= to (seconds of stream time)")
        if clip is not None and stream is None:
            raise UserError(f"clip={clip} names a clip of one stream: pass stream= too, e.g. ?stream=cam0&clip={clip}")
        return service.captions(stream, t_from, t_to, limit, offset, clip=clip)

    @app.get("/v1/thumbnails/{stream:path}/{clip}.jpg")
    def thumbnail(stream: str = Path(..., max_length=MAX_NAME), clip: int = Path(..., ge=0, le=MAX_ID)):
        return Response(service.thumbnail(stream, clip), media_type="image/jpeg",
                        headers={"Cache-Control": "private, max-age=86400, immutable"})

    @app.get("/v1/kept/{stream:path}/{clip}")
    def kept(stream: str = Path(..., max_length=MAX_NAME), clip: int = Path(..., ge=0, le=MAX_ID)):
        return service.kept(stream, clip)

    @app.get("/v1/events")
    async def events(request: Request, last_event_id: Optional[str] = Header(None),
                     after: Optional[int] = Query(None, ge=0, le=MAX_ID,
                                                  description="as the Last-Event-ID header, for a client that "
                                                              "reconnects itself (with a new ticket)")):
        last = int(last_event_id) if last_event_id and last_event_id.isascii() and last_event_id.isdigit() else after
        sub, backlog = service.events.subscribe(asyncio.get_running_loop(), last)

        async def stream():
            try:
                yield "retry: 2000\n\n"
                for ev in backlog:
                    yield ev.sse()
                while True:
                    if await request.is_disconnected():
                        return
                    try:
                        ev = await sub.next(timeout=keepalive_s)
                    except EOFError:
                        return
                    yield ev.sse() if ev is not None else ": keepalive\n\n"
            finally:
                sub.close()

        return StreamingResponse(stream(), media_type="text/event-stream",
                                 headers={"Cache-Control": "no-cache", "X-Accel-Buffering": "no"})

    @app.post("/v1/watches", status_code=201)
    def add_watch(body: WatchRequest):
        return service.add_watch(body.query, body.threshold, body.stream, body.webhook)

    @app.get("/v1/watches")
    def list_watches():
        return {"watches": service.watches()}

    @app.get("/v1/watches/{watch_id}")
    def get_watch(watch_id: int = Path(..., ge=1, le=MAX_ID)):
        return service.watch(watch_id)

    @app.delete("/v1/watches/{watch_id}", status_code=204)
    def delete_watch(watch_id: int = Path(..., ge=1, le=MAX_ID)):
        service.delete_watch(watch_id)
        return Response(status_code=204)

    @app.get("/v1/watches/{watch_id}/matches")
    def watch_matches(watch_id: int = Path(..., ge=1, le=MAX_ID), limit: int = Query(50, ge=1, le=500),
                      before: Optional[int] = Query(None, ge=1, le=MAX_ID)):
        return {"matches": service.matches(watch_id, limit, before)}

    @app.get("/v1/matches")
    def all_matches(limit: int = Query(50, ge=1, le=500), before: Optional[int] = Query(None, ge=1, le=MAX_ID)):
        return {"matches": service.matches(None, limit, before)}

    hosts = hosts or HostCheck("127.0.0.1")
    app.add_middleware(GuardMiddleware, token=token, max_body_bytes=max_body_bytes, hosts=hosts,
                       metrics=service.metrics)
    app.add_middleware(TicketAuth, token=token, tickets=tickets, hosts=hosts)  # added last: runs before the guard
    app.state.tickets = tickets
    return app


def _finished(q: Question) -> asyncio.Future:
    """An asyncio future that completes (with None) when the question's future does; cancelling it never cancels the
    question (that is `Question.cancel`'s job, which counts it)."""
    loop = asyncio.get_running_loop()
    done = loop.create_future()

    def settle(_):
        try:
            loop.call_soon_threadsafe(lambda: done.done() or done.set_result(None))
        except RuntimeError:  # the loop is closed: the server has stopped
            pass

    q.future.add_done_callback(settle)
    return done


async def _hung_up(receive) -> None:
    """Returns when the client has closed the connection (the request body has been read: what comes next is only
    `http.disconnect`)."""
    while (await receive())["type"] != "http.disconnect":
        pass


async def _unless_gone(request: Request, awaitable) -> tuple[bool, object]:
    """(True, its result) when `awaitable` finishes first, (False, None) when the client hangs up first."""
    work = asyncio.ensure_future(awaitable)
    gone = asyncio.ensure_future(_hung_up(request.receive))
    try:
        await asyncio.wait({work, gone}, return_when=asyncio.FIRST_COMPLETED)
    finally:
        gone.cancel()
        if not work.done():
            work.cancel()
    if work.done() and not work.cancelled():
        return True, work.result()
    return False, None


async def _streamed_answer(service: EdgeService, request: Request, body: AskRequest):
    """POST /v1/ask/stream: admitted at the question gate (or 429) like /v1/ask, answered on the service's question
    pool, its tokens relayed as `token` events as they come. A question refused before the first token (unknown
    stream, nothing ingested, bad question) is a plain JSON 4xx, as from /v1/ask; a failure after it ends the stream
    with an `error` event. A client that hangs up before the first token has its question dropped (or stopped), one
    that hangs up later has it stopped at the next token (Starlette ends the response when the client goes)."""
    loop = asyncio.get_running_loop()
    queue: asyncio.Queue = asyncio.Queue()

    def put(item) -> None:  # from the question's thread
        try:
            loop.call_soon_threadsafe(queue.put_nowait, item)
        except RuntimeError:  # the loop is closed: the server has stopped
            pass

    q = service.submit_question(body.question, body.stream, body.from_, body.to, on_token=put)
    q.future.add_done_callback(lambda _: put(None))  # after every token already queued
    try:
        present, first = await _unless_gone(request, queue.get())
    except asyncio.CancelledError:  # the server is shutting down under it
        q.cancel()
        raise
    if not present:
        q.cancel()
        return Response(status_code=499)  # nobody reads it
    if first is None:
        q.future.result()  # a refusal raises here: the exception handlers answer 4xx (or 500)

    async def events():
        try:
            item, n = first, 0
            while item is not None:
                n += 1
                yield Event(n, "token", {"text": item}).sse()
                item = await queue.get()
            try:
                yield Event(n + 1, "answer", q.future.result()).sse()
            except (NotFound, NotReady, UserError) as e:
                status = 404 if isinstance(e, NotFound) else 409 if isinstance(e, NotReady) else 400
                yield Event(n + 1, "error", {"status": status, "detail": str(e.args[0]) if e.args else str(e)}).sse()
            except QuestionCancelled as e:
                yield Event(n + 1, "error", {"status": 503, "detail": f"{e}: the service is stopping"}).sse()
            except Exception as e:  # noqa: BLE001 - reported in the stream, logged with its traceback
                log.exception("streamed question failed")
                yield Event(n + 1, "error", {"status": 500, "detail": f"internal error: {type(e).__name__}: {e}"}).sse()
        finally:
            q.cancel()  # the client went away mid-answer (a no-op once the answer is done)

    return StreamingResponse(events(), media_type="text/event-stream",
                             headers={"Cache-Control": "no-cache", "X-Accel-Buffering": "no"})


# ---------------------------------------------------------------------------------------------------------------------
# Running it
# ---------------------------------------------------------------------------------------------------------------------


def is_loopback(host: str) -> bool:
    """True for 127.0.0.0/8, ::1 and 'localhost'; anything else (0.0.0.0, a LAN address, a name) is not."""
    import ipaddress

    if host.strip().lower() == "localhost":
        return True
    try:
        return ipaddress.ip_address(host.strip("[]")).is_loopback
    except ValueError:
        return False


# The connection layer (caps, deadlines, refusals that close, fair share per client) lives in connections.py.
from .connections import ConnectionPolicy, GuardedH11, Limits, fit_descriptors, protocol_for  # noqa: E402,F401

_GuardedH11 = GuardedH11  # the name it had here


class _Uvicorn(uvicorn.Server):
    """Ends the service's event streams as soon as shutdown starts (else open SSE connections hold it up), and treats
    Ctrl-C / SIGTERM as a requested stop: `run()` returns (so the caller stops ingest cleanly) instead of re-raising
    the signal afterwards, which would kill the process before ingest is stopped. A second Ctrl-C forces the exit.
    Rate-limits the event loop's error lines (asyncio logs "socket.accept() out of system resource" with a traceback
    every time accept fails for want of descriptors)."""

    def __init__(self, config: uvicorn.Config, on_exit, log_every_s: float = 10.0):
        super().__init__(config)
        self._on_exit = on_exit
        self._log_every_s = log_every_s
        self._last_logged: dict[str, tuple[float, int]] = {}  # message -> (last logged, suppressed since)

    def handle_exit(self, sig, frame):
        self._on_exit()
        if self.should_exit and sig == signal.SIGINT:
            self.force_exit = True
        self.should_exit = True

    async def startup(self, sockets=None):
        asyncio.get_running_loop().set_exception_handler(self._loop_error)
        await super().startup(sockets=sockets)

    def _loop_error(self, loop, context):
        msg = str(context.get("message", "event loop error"))
        now = time.monotonic()
        last, suppressed = self._last_logged.get(msg, (-1e9, 0))
        if now - last < self._log_every_s:
            self._last_logged[msg] = (last, suppressed + 1)
            return
        self._last_logged[msg] = (now, 0)
        exc = context.get("exception")
        more = f" ({suppressed} more like it in the last {now - last:.0f} s)" if suppressed else ""
        log.error("%s%s%s", msg, f": {type(exc).__name__}: {exc}" if exc else "", more)


class Server:
    """uvicorn around the app: `run()` in the foreground (signals stop it) or `start()`/`stop()` in a thread."""

    def __init__(self, service: EdgeService, host: str = "127.0.0.1", port: int = 8000, token: str | None = None,
                 log_level: str = "warning", access_log: bool = False, allow_hosts: Sequence[str] = (),
                 limits: Limits | None = None):
        if not is_loopback(host) and not token:
            raise UserError(f"refusing to bind {host}: any address but loopback exposes the API to the network, so "
                            f"it needs a token: pass --token T (or set RLIVS_TOKEN), or bind 127.0.0.1")
        self.service, self.host, self.port = service, host, port
        self.limits = limits or Limits()
        cap = fit_descriptors(self.limits.max_connections, reserve=128 + 2 * self.limits.backlog)
        if cap < self.limits.max_connections:
            log.warning("max connections lowered from %d to %d to fit the open-file limit (ulimit -n)",
                        self.limits.max_connections, cap)
        self.app = create_app(service, token, max_body_bytes=self.limits.max_body_bytes,
                              hosts=HostCheck(host, allow_hosts))
        fitted = replace(self.limits, max_connections=cap)
        self.protocol = protocol_for(fitted, service.metrics)  # .table: who holds which connection
        # proxy_headers off: the client address (per-client caps) is the TCP peer's, never an X-Forwarded-For
        config = uvicorn.Config(ConnectionPolicy(self.app, fitted, service.metrics), host=host, port=port,
                                log_level=log_level, access_log=access_log, log_config=None,
                                timeout_graceful_shutdown=3, lifespan="off", http=self.protocol,
                                timeout_keep_alive=self.limits.keepalive_s, backlog=self.limits.backlog,
                                proxy_headers=False)
        self._server = _Uvicorn(config, service.events.close, self.limits.log_every_s)
        self._thread: threading.Thread | None = None

    def run(self) -> None:
        self._server.run()

    def start(self, timeout: float = 20.0) -> Server:
        """Bind now (port 0 = any free port, read back into .port) and serve from a thread."""
        sock = socket.socket(socket.AF_INET6 if ":" in self.host else socket.AF_INET, socket.SOCK_STREAM)
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        sock.bind((self.host, self.port))
        self.port = sock.getsockname()[1]
        self._thread = threading.Thread(target=self._server.run, kwargs={"sockets": [sock]}, name="rlivs-http",
                                        daemon=True)
        self._thread.start()
        deadline = time.monotonic() + timeout
        while not self._server.started:
            if not self._thread.is_alive() or time.monotonic() > deadline:
                raise RuntimeError(f"the HTTP server did not start on {self.host}:{self.port}")
            time.sleep(0.02)
        return self

    @property
    def url(self) -> str:
        host = f"[{self.host}]" if ":" in self.host else self.host
        return f"http://{host}:{self.port}"

    def stop(self, timeout: float = 10.0) -> None:
        self.service.events.close()
        self._server.should_exit = True
        if self._thread is not None:
            self._thread.join(timeout)
