"""Security middleware of `rlivs serve`'s HTTP API (pure ASGI, so streaming responses pass straight through): which
`Host` is served (`HostCheck`: DNS rebinding), the bearer token and the request-body cap (`GuardMiddleware`), and the
single-use tickets for what a browser cannot send a header with (`Tickets`, `TicketAuth`).

Auth: `Authorization: Bearer <token>`, nothing the browser sends by itself: no cookie is handed out or accepted (a
cookie reaches every port of the host). What cannot send a header (EventSource, <img>) gets a ticket: `POST
/v1/tickets` with the header, then `GET path?ticket=...`, valid once, for that path, for 60 s.
"""

from __future__ import annotations

import ipaddress
import secrets
import threading
import time
from typing import Sequence
from urllib.parse import parse_qs, unquote

from fastapi.responses import JSONResponse
from pydantic import BaseModel, ConfigDict, Field, field_validator

OPEN_PATHS = ("/healthz", "/", "/favicon.ico")  # served without a token: health, the static page shell, no icon


def json_error(status: int, detail: str, headers: dict | None = None) -> JSONResponse:
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
        return await json_error(401, msg, {"WWW-Authenticate": 'Bearer realm="rlivs"'})(scope, receive, send)


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
            return await json_error(421, msg)(scope, receive, send)
        if self.token and scope["path"] not in OPEN_PATHS and not self._authorized(scope):
            msg = ("missing or wrong token: send the header 'Authorization: Bearer <token>' with the token given to "
                   "rlivs serve (--token or RLIVS_TOKEN)")
            return await json_error(401, msg, {"WWW-Authenticate": 'Bearer realm="rlivs"'})(scope, receive, send)
        if scope.get("method") in ("POST", "PUT", "PATCH"):
            headers = {k.decode("latin-1").lower(): v.decode("latin-1") for k, v in scope.get("headers", [])}
            length = headers.get("content-length")
            if length is None:
                return await json_error(411, "send the request body with a Content-Length header")(
                    scope, receive, send)
            if not length.isdigit() or int(length) > self.max_body:
                return await json_error(413, f"request body too large ({length} bytes): at most {self.max_body} "
                                              f"bytes")(scope, receive, send)
        return await self.app(scope, receive, send)
