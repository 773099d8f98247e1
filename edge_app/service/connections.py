"""The connection layer of `rlivs serve`: what one client may hold open, and for how long (docs/edge_app.md, Security).

uvicorn's h11 protocol alone bounds neither a request body nor an idle keep-alive connection that trickles bytes
(every byte cancels its keep-alive timer), and it lets any one client take every connection. Here:

- `GuardedH11`, uvicorn's h11 protocol with
  - deadlines: a request head within `header_timeout_s` of the connection (or of the previous answer); once the head
    is in, the declared body within `body_timeout_s + length / min_body_rate` (then `408` and closed); an idle
    keep-alive connection closed after `keepalive_s` however many bytes trickle in (only a complete request head
    counts as activity);
  - fair share: open connections at most `max_connections`, of which one client address holds at most
    `max_per_client`; the last `reserved` are kept for `GET /healthz` and `GET /metrics` (see `ConnectionTable`).
- `ConnectionPolicy`, the outermost ASGI layer: every answer with a status >= 400 closes its connection
  (`Connection: close`, then uvicorn closes the transport), whoever produced it (the Host check, auth, FastAPI's
  404/413/422, the question gate's 429, a cap's 503); and at most `max_streams_per_client` open `/v1/events` streams
  per client address (`StreamShare`).

A "client" is its IP address as the TCP peer (IPv6: its /64; uvicorn's X-Forwarded-For handling is off, so a header
cannot pick the address). Everything here runs on the event loop thread: no locks.
"""

from __future__ import annotations

import ipaddress
import json
import logging
import resource
from dataclasses import dataclass

import h11
from uvicorn.protocols.http.h11_impl import H11Protocol

from rlivs.runtime.errors import UserError

log = logging.getLogger("rlivs.serve")

LINGER_S = 2.0  # after an answer that closes, unread request bytes are read and dropped this long at most
RESERVED_PATHS = ("/healthz", "/metrics")  # what a connection from the reserve may ask for
STREAM_PATHS = ("/v1/events",)  # long-lived event streams, counted per client by StreamShare


@dataclass
class Limits:
    """What one `rlivs serve` holds open at most, and for how long (documented in docs/edge_app.md, Security)."""

    max_connections: int = 256  # open HTTP connections; beyond, 503 and closed at once (lowered to fit RLIMIT_NOFILE)
    max_per_client: int = 32  # of those, held by one client address (beyond: only the reserve, i.e. health)
    reserved: int = 16  # of max_connections (at most a quarter), only for GET /healthz and /metrics
    header_timeout_s: float = 10.0  # a connection that has not sent a whole request head in this time is closed
    body_timeout_s: float = 5.0  # after the head, the body may take this long ...
    min_body_rate: float = 8192.0  # ... plus its declared length / this (bytes per second); then 408 and closed
    reserve_head_s: float = 2.0  # a connection from the reserve sends its request head within this (or is closed)
    keepalive_s: int = 5  # an idle keep-alive connection is closed after this (uvicorn's timeout_keep_alive)
    max_streams_per_client: int = 8  # open /v1/events streams of one client address (the service's cap is global)
    max_body_bytes: int = 64 * 1024  # a larger declared body gets 413 (GuardMiddleware)
    backlog: int = 128  # listen backlog, which is also how many connections asyncio accepts in one burst
    log_every_s: float = 10.0  # the asyncio "out of system resource" line at most this often

    def __post_init__(self):
        if self.max_connections < 2:
            raise UserError(f"max_connections must be >= 2, got {self.max_connections}")
        for name in ("header_timeout_s", "body_timeout_s", "min_body_rate", "reserve_head_s"):
            if not getattr(self, name) > 0:
                raise UserError(f"{name} must be > 0, got {getattr(self, name)}")
        for name in ("max_per_client", "max_streams_per_client", "max_body_bytes", "keepalive_s"):
            if getattr(self, name) < 1:
                raise UserError(f"{name} must be >= 1, got {getattr(self, name)}")
        if self.reserved < 0:
            raise UserError(f"reserved must be >= 0, got {self.reserved}")

    @property
    def reserve(self) -> int:
        """Connections kept for /healthz and /metrics: `reserved`, at most a quarter of the cap."""
        return min(self.reserved, self.max_connections // 4)

    def body_allowance_s(self, length: int) -> float:
        """Seconds a body of `length` bytes may take to arrive once the request head is in."""
        return self.body_timeout_s + length / self.min_body_rate


def fit_descriptors(wanted: int, reserve: int = 128) -> int:
    """Raise the soft RLIMIT_NOFILE to the hard one when allowed, and return the connection cap that fits under it
    with `reserve` descriptors left (the memory, the model, sources, webhooks, and the connections accepted in one
    burst before the cap closes them)."""
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if hard == resource.RLIM_INFINITY or hard > soft:
        target = wanted + reserve if hard == resource.RLIM_INFINITY else min(hard, max(soft, wanted + reserve))
        if target > soft:
            try:
                resource.setrlimit(resource.RLIMIT_NOFILE, (target, hard))
                soft = target
            except (ValueError, OSError):
                pass
    return max(2, min(wanted, soft - reserve))


def client_key(host: str | None) -> str:
    """The address a client is counted under: an IPv4 address as is, IPv6 by its /64 (one host usually holds a whole
    /64), an IPv4-mapped IPv6 address as its IPv4; a Unix socket (no address) as "local"."""
    if not host:
        return "local"
    try:
        ip = ipaddress.ip_address(host.split("%", 1)[0])
    except ValueError:
        return host
    if ip.version == 6:
        if ip.ipv4_mapped is not None:
            return str(ip.ipv4_mapped)
        return str(ipaddress.ip_network(f"{ip}/64", strict=False))
    return str(ip)


def _json(detail: str) -> bytes:
    return json.dumps({"detail": detail}).encode()


async def _answer(send, status: int, detail: str, retry_after: int | None = None) -> None:
    """A complete JSON answer through ASGI, closing the connection."""
    body = _json(detail)
    headers = [(b"content-type", b"application/json"), (b"content-length", str(len(body)).encode()),
               (b"connection", b"close")]
    if retry_after is not None:
        headers.append((b"retry-after", str(retry_after).encode()))
    await send({"type": "http.response.start", "status": status, "headers": headers})
    await send({"type": "http.response.body", "body": body})


def _closing(message: dict) -> dict:
    """`message` (an http.response.start) with `Connection: close` in place of any Connection header."""
    headers = [(k, v) for k, v in message.get("headers", []) if k.lower() != b"connection"]
    return {**message, "headers": headers + [(b"connection", b"close")]}


# ---------------------------------------------------------------------------------------------------------------------
# Who holds which connection
# ---------------------------------------------------------------------------------------------------------------------


class ConnectionTable:
    """The open connections of one server, by kind:

    - regular: at most `max_connections - reserve` in all and `max_per_client` per client address;
    - reserve: a connection that finds no regular slot (the server or its own address full) is admitted into the
      reserve, `reserve` slots that serve one `GET /healthz` or `/metrics` and close (anything else: 503). When the
      reserve is full, its oldest connection that is not answering a health request (one that has not sent a head
      yet: closed with a 503; one that asked for anything else, or is draining after its answer: closed) makes room: a
      flood cannot keep a health probe out, since a probe sends its head at once. Only while every reserve slot is
      answering a health request is a new connection refused at once (503).

    So the total never exceeds `max_connections`; one address holds at most `max_per_client + reserve` of them, and
    an operator's `/healthz` gets through a flood, from the flooding address too."""

    def __init__(self, limits: Limits, metrics=None):
        self.limits, self.metrics = limits, metrics
        self.regular = 0
        self.by_client: dict[str, int] = {}
        self.reserve: dict[GuardedH11, None] = {}  # insertion order: oldest first

    def count(self, reason: str) -> None:
        if self.metrics is not None:
            self.metrics.inc("rlivs_http_rejected_total", reason=reason)

    def admit(self, conn: GuardedH11) -> str | None:
        """'regular', 'reserve', or None (refuse at once)."""
        lim = self.limits
        if self.regular < lim.max_connections - lim.reserve and self.by_client.get(conn.key, 0) < lim.max_per_client:
            self.regular += 1
            self.by_client[conn.key] = self.by_client.get(conn.key, 0) + 1
            return "regular"
        if lim.reserve == 0:
            return None
        if len(self.reserve) >= lim.reserve:
            victim = next((c for c in self.reserve if not c.serving_health), None)
            if victim is None:
                return None
            victim.refuse_now("evicted")  # releases its slot
        self.reserve[conn] = None
        return "reserve"

    def release(self, conn: GuardedH11, slot: str) -> None:
        if slot == "regular":
            self.regular -= 1
            left = self.by_client.get(conn.key, 1) - 1
            if left > 0:
                self.by_client[conn.key] = left
            else:
                self.by_client.pop(conn.key, None)
        else:
            self.reserve.pop(conn, None)


_BUSY = b'{"detail":"too many open connections to rlivs serve: try again shortly"}'
_SLOW_BODY = _json("the request body did not arrive in time (the body must follow its head within the body deadline "
                   "and at a least transfer rate; see docs/edge_app.md, Security): send the whole request at once")


class _Transport:
    """The transport as uvicorn sees it: `close()` is the protocol's lingering close (`GuardedH11._linger`)."""

    def __init__(self, real, protocol: GuardedH11):
        self._real, self._protocol = real, protocol

    def __getattr__(self, name):
        return getattr(self._real, name)

    def close(self) -> None:
        self._protocol._linger()

    def is_closing(self) -> bool:
        return self._protocol._lingering or self._real.is_closing()


class GuardedH11(H11Protocol):
    """uvicorn's h11 protocol with the connection caps of `ConnectionTable` (checked in connection_made, so a refused
    connection never holds a descriptor) and the deadlines of `Limits`. One timer per connection, in one of two
    phases: "head" (armed when the connection is made and after each answer: no complete request head by then, the
    connection is closed) and "body" (armed when a head declaring a body is in: the body not complete by then, `408`
    and closed). No timer runs while the app works on a request or streams its answer.

    Closing after an answer (a refusal, `Connection: close`, the 408) is a lingering close: the answer is flushed,
    the write side shut (the client reads the answer, then end of stream), and what the client still sends (the body
    of a refused request) is read and dropped until it closes its side, for `LINGER_S` at most. Closing a socket with
    unread bytes would send a TCP reset, and the client could lose the answer it had not read yet."""

    limits: Limits = Limits()
    metrics = None
    table: ConnectionTable | None = None  # one per server: set by `protocol_for`

    def connection_made(self, transport):
        self._real, self._lingering, self._hard, self._linger_timer = transport, False, False, None
        super().connection_made(_Transport(transport, self))
        self._timer = None
        self._phase: str | None = None
        self._seen = None  # the request cycle the deadlines last looked at
        self._slot: str | None = None
        self.key = client_key(self.client[0] if self.client else None)
        if self.table is None:
            type(self).table = ConnectionTable(self.limits, self.metrics)
        slot = self.table.admit(self)
        if slot is None:
            self._busy("connections")
            return
        self._slot = slot
        if slot == "reserve":
            self.app = ReserveOnly(self.app, self.table)
            self._arm(min(self.limits.reserve_head_s, self.limits.header_timeout_s), "head")
        else:
            self._arm(self.limits.header_timeout_s, "head")

    # -- refusing -----------------------------------------------------------------------------------------------------

    def _busy(self, reason: str) -> None:
        """503 and closed at once (no linger: the descriptor is freed now; the client has sent nothing we read)."""
        self._real.write(b"HTTP/1.1 503 Service Unavailable\r\nContent-Type: application/json\r\n"
                         b"Retry-After: 1\r\nConnection: close\r\nContent-Length: %d\r\n\r\n%s"
                         % (len(_BUSY), _BUSY))
        self._real.close()
        self.table.count(reason)

    def _linger(self) -> None:
        real = self._real
        if self._lingering or real.is_closing():
            return
        self._cancel()
        if self._hard or not real.can_write_eof():
            real.close()
            return
        self._lingering = True
        try:
            real.write_eof()  # FIN once the answer is flushed
            real.resume_reading()
        except (OSError, RuntimeError):
            real.close()
            return
        self._linger_timer = self.loop.call_later(LINGER_S, real.close)

    def _close_now(self) -> None:
        self._hard = True
        self.transport.close()

    def eof_received(self):
        return None  # the client closed its side: the transport closes (after a lingering close too)

    def timeout_keep_alive_handler(self) -> None:
        self._hard = True  # nothing was asked: nothing to linger for
        super().timeout_keep_alive_handler()

    def shutdown(self) -> None:
        self._hard = True  # the server stops: no lingering
        super().shutdown()

    @property
    def serving_health(self) -> bool:
        """A reserve connection whose request is a health one, not answered yet: the only kind never evicted."""
        return (self.cycle is not None and not self._lingering and not self.cycle.response_complete
                and self.scope["method"] in ("GET", "HEAD") and self.scope["path"] in RESERVED_PATHS)

    def refuse_now(self, reason: str) -> None:
        """Close a reserve connection to make room: one whose answer has not begun (nothing sent yet, or a request
        that is not for health whose 503 is not written yet) gets a 503; one whose answer is under way or that is
        draining after it is just closed."""
        self._cancel()
        self._release()
        if self.cycle is None:
            if not self._real.is_closing():
                self._busy(reason)
            return
        if not self.cycle.response_complete:
            started = self.cycle.response_started
            self.cycle.disconnected = True  # whatever the app still sends is dropped
            self.cycle.message_event.set()
            if not started and not self._real.is_closing():  # its own 503 not written yet: answer it here
                self._busy(reason)
                return
        self._real.close()
        self.table.count(reason)

    def _release(self) -> None:
        if self._slot is not None:
            self.table.release(self, self._slot)
            self._slot = None

    # -- deadlines ----------------------------------------------------------------------------------------------------

    def _cancel(self) -> None:
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None
        self._phase = None

    def _arm(self, delay: float, phase: str) -> None:
        self._cancel()
        self._phase, self._seen = phase, self.cycle
        self._timer = self.loop.call_later(delay, self._expired)

    def _expired(self) -> None:
        phase, self._timer, self._phase = self._phase, None, None
        if self.transport.is_closing() or self.cycle is not self._seen:
            return  # (a new request came in without the timer being moved: cannot happen, but never close it then)
        if phase == "head" and (self.cycle is None or self.cycle.response_complete):
            self.table.count("header_timeout")
            self._close_now()
        elif phase == "body" and self.conn.their_state is h11.SEND_BODY:
            self.table.count("body_timeout")
            self._answer_408()

    def _answer_408(self) -> None:
        cycle = self.cycle
        if cycle is not None and not cycle.response_started:
            try:
                out = self.conn.send(h11.Response(status_code=408, reason=b"Request Timeout", headers=[
                    (b"content-type", b"application/json"), (b"content-length", str(len(_SLOW_BODY)).encode()),
                    (b"connection", b"close")]))
                out += self.conn.send(h11.Data(data=_SLOW_BODY)) + self.conn.send(h11.EndOfMessage())
                self.transport.write(out)
            except h11.LocalProtocolError:
                pass
        if cycle is not None:  # the app reading the body sees a disconnect; whatever it sends is dropped
            cycle.disconnected = True
            cycle.message_event.set()
        self.transport.close()

    def _declared_body(self) -> int:
        for name, value in self.headers or ():
            if name == b"content-length" and value.isdigit():
                return int(value)
        return self.limits.max_body_bytes  # chunked: at most what the app accepts

    def data_received(self, data: bytes) -> None:
        if self._lingering:
            return  # after the answer that closes: dropped
        # uvicorn's own data_received cancels the keep-alive timer on every byte, so one byte a second keeps an idle
        # connection forever. Here only a complete request head counts (handle_events cancels it on an h11.Request).
        self.conn.receive_data(data)
        self.handle_events()

    def handle_events(self) -> None:
        super().handle_events()
        if self.transport.is_closing():
            self._cancel()
        elif self.cycle is not None and self.cycle is not self._seen:  # a new request head is in
            if self.conn.their_state is h11.SEND_BODY:
                self._arm(self.limits.body_allowance_s(self._declared_body()), "body")
            else:
                self._cancel()
                self._seen = self.cycle
        elif self._phase == "body" and self.conn.their_state is not h11.SEND_BODY:
            self._cancel()  # the body is complete

    def on_response_complete(self) -> None:
        if not self.transport.is_closing():
            self._arm(self.limits.header_timeout_s, "head")  # the next head (uvicorn's keep-alive timer is shorter)
        super().on_response_complete()  # may parse a pipelined request: handle_events moves the timer

    def connection_lost(self, exc):
        self._cancel()
        if self._linger_timer is not None:
            self._linger_timer.cancel()
            self._linger_timer = None
        self._release()
        super().connection_lost(exc)


def protocol_for(limits: Limits, metrics=None) -> type[GuardedH11]:
    """A GuardedH11 subclass for one server: its limits, metrics and its own ConnectionTable."""
    return type("GuardedH11", (GuardedH11,), {"limits": limits, "metrics": metrics,
                                              "table": ConnectionTable(limits, metrics)})


# ---------------------------------------------------------------------------------------------------------------------
# ASGI layers
# ---------------------------------------------------------------------------------------------------------------------


class ReserveOnly:
    """The app as a connection from the reserve sees it: `GET`/`HEAD` `/healthz` and `/metrics` (auth and the Host
    check still apply), answered and closed; anything else 503 and closed."""

    def __init__(self, app, table: ConnectionTable):
        self.app, self.table = app, table

    async def __call__(self, scope, receive, send):
        if scope["type"] != "http":
            return await self.app(scope, receive, send)
        if scope.get("method") in ("GET", "HEAD") and scope.get("path") in RESERVED_PATHS:

            async def send_closing(message):
                await send(_closing(message) if message["type"] == "http.response.start" else message)

            return await self.app(scope, receive, send_closing)
        self.table.count("reserve")
        await _answer(send, 503, f"too many open connections to rlivs serve (or from your address, at most "
                                 f"{self.table.limits.max_per_client}): this connection only serves /healthz and "
                                 f"/metrics; close some connections or try again shortly", retry_after=1)


class StreamShare:
    """Open event streams per client address: `enter(key)` is False (nothing counted) when `key` already holds
    `most`; else counted until `leave(key)`."""

    def __init__(self, most: int):
        self.most = most
        self.open: dict[str, int] = {}

    def enter(self, key: str) -> bool:
        n = self.open.get(key, 0)
        if n >= self.most:
            return False
        self.open[key] = n + 1
        return True

    def leave(self, key: str) -> None:
        n = self.open.get(key, 0) - 1
        if n > 0:
            self.open[key] = n
        else:
            self.open.pop(key, None)


class ConnectionPolicy:
    """The outermost ASGI layer: every answer with status >= 400 carries `Connection: close` (so uvicorn closes the
    connection after it: a refused client keeps nothing open), and each client address holds at most
    `limits.max_streams_per_client` of the `/v1/events` streams (503 with Retry-After beyond; the service's global
    cap, --max-subscribers, still applies)."""

    def __init__(self, app, limits: Limits, metrics=None):
        self.app, self.metrics = app, metrics
        self.streams = StreamShare(limits.max_streams_per_client)

    async def __call__(self, scope, receive, send):
        if scope["type"] != "http":
            return await self.app(scope, receive, send)

        async def send_closing(message):
            if message["type"] == "http.response.start" and message.get("status", 200) >= 400:
                message = _closing(message)
            await send(message)

        if scope.get("path") not in STREAM_PATHS:
            return await self.app(scope, receive, send_closing)
        key = client_key((scope.get("client") or (None,))[0])
        if not self.streams.enter(key):
            if self.metrics is not None:
                self.metrics.inc("rlivs_http_rejected_total", reason="client_streams")
            return await _answer(send, 503, f"{self.streams.most} event streams are already open from your address, "
                                            f"the most one client may hold: close one (a page needs one)",
                                 retry_after=5)
        try:
            return await self.app(scope, receive, send_closing)
        finally:
            self.streams.leave(key)
