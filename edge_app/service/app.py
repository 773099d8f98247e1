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
    GET    /v1/kept/{stream}/{clip}   which visual tokens selection kept (flat indices, tokens per group, grid, groups)
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

Layout: one module per resource under api/ (system, streams, captions, ask, events, watches; api/errors.py the JSON
errors), the security middleware in security.py (Host check, bearer token, body cap, tickets), the transport in
transport.py (uvicorn/h11 behind connections.py); this module puts them together (`create_app`, `Server`).

Limits (`connections.Limits`, the connection layer in connections.py): open connections (over the cap a connection
gets 503 and is closed at once, freeing its descriptor), of those at most `max_per_client` per client address and a
reserve only /healthz and /metrics may use; a deadline for the request head, then one for the body (a grace period
plus its declared length at a minimum rate: 408 and closed); an idle keep-alive closed on time whatever trickles in;
every refusal (status >= 400) closes its connection; open event streams, in all (503) and per client address; waiting
questions (429 with Retry-After, core.QuestionGate). /healthz and /metrics run on the event loop, never behind a
question. The asyncio "out of system resource" log line is rate-limited.

Auth (security.py): `Authorization: Bearer <token>`, nothing the browser sends by itself: no cookie is handed out or accepted (a
cookie reaches every port of the host). What cannot send a header (EventSource, <img>) gets a ticket (`Tickets`,
`TicketAuth`): `POST /v1/tickets` with the header, then `GET path?ticket=...`, valid once, for that path, for 60 s.
Questions: both ask endpoints admit at the one gate on the event loop (429 at once when full) and answer on the
service's question pool; a client that hangs up has its question dropped or stopped. Errors are JSON
`{"detail": "what is wrong and how to fix it"}`.
"""

from __future__ import annotations

from typing import Sequence

from fastapi import FastAPI

from rlivs.runtime.errors import UserError

from .api import ask, captions, errors, events, streams, system, watches
from .api.ask import AskRequest  # noqa: F401 (the names they had here)
from .api.common import MAX_ID, MAX_NAME, MAX_QUERY, MAX_QUESTION, MAX_URL  # noqa: F401
from .api.watches import WatchRequest  # noqa: F401
from .connections import GuardedH11, Limits  # noqa: F401
from .core import EdgeService
from .security import OPEN_PATHS, GuardMiddleware, HostCheck, TicketAuth, Tickets  # noqa: F401
from .transport import Transport, is_loopback

_GuardedH11 = GuardedH11  # the name it had here


def create_app(service: EdgeService, token: str | None = None, max_body_bytes: int = 64 * 1024,
               keepalive_s: float = 15.0, hosts: HostCheck | None = None) -> FastAPI:
    """The API over `service`: its routes by resource, its JSON errors, then the security middleware (the ticket
    check runs first, then the Host check, the token and the body cap)."""
    app = FastAPI(title="rlivs", version="0.1.0", docs_url=None, redoc_url=None,
                  description="Streaming video question answering on the device.")
    app.state.service = service
    app.state.tickets = tickets = Tickets()
    errors.install(app, service)
    for router in (system.routes(service, tickets), streams.routes(service), ask.routes(service),
                   captions.routes(service), events.routes(service, keepalive_s), watches.routes(service)):
        app.include_router(router)
    hosts = hosts or HostCheck("127.0.0.1")
    app.add_middleware(GuardMiddleware, token=token, max_body_bytes=max_body_bytes, hosts=hosts,
                       metrics=service.metrics)
    app.add_middleware(TicketAuth, token=token, tickets=tickets, hosts=hosts)  # added last: runs before the guard
    return app


class Server(Transport):
    """The API of `service` served by uvicorn: `run()` in the foreground (signals stop it) or `start()`/`stop()` in
    a thread. Binding anything but loopback needs a token."""

    def __init__(self, service: EdgeService, host: str = "127.0.0.1", port: int = 8000, token: str | None = None,
                 log_level: str = "warning", access_log: bool = False, allow_hosts: Sequence[str] = (),
                 limits: Limits | None = None):
        if not is_loopback(host) and not token:
            raise UserError(f"refusing to bind {host}: any address but loopback exposes the API to the network, so "
                            f"it needs a token: pass --token T (or set RLIVS_TOKEN), or bind 127.0.0.1")
        self.service = service
        limits = limits or Limits()
        self.app = create_app(service, token, max_body_bytes=limits.max_body_bytes, hosts=HostCheck(host, allow_hosts))
        # the service's event streams end as soon as shutdown starts (else open SSE connections hold it up)
        super().__init__(self.app, host, port, limits, service.metrics, service.events.close, log_level, access_log)
