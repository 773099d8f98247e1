"""What is not a resource of the memory: the page (`/`), `/favicon.ico`, `/healthz`, `/metrics` and the tickets for
what cannot send the bearer header (POST /v1/tickets)."""

from __future__ import annotations

from fastapi import APIRouter
from fastapi.responses import HTMLResponse, Response

from ..metrics import CONTENT_TYPE
from ..page import PAGE, PAGE_HEADERS
from ..security import TicketRequest, Tickets


def routes(service, tickets: Tickets) -> APIRouter:
    api = APIRouter()

    @api.get("/", response_class=HTMLResponse, include_in_schema=False)
    def page():  # Content-Security-Policy: the page's own script and style (by hash) and requests to this origin only
        return HTMLResponse(PAGE, headers={"Cache-Control": "no-cache", **PAGE_HEADERS})

    @api.get("/favicon.ico", include_in_schema=False)
    def favicon():  # browsers ask for it: "no icon" (204) instead of a 404 in the log and the console
        return Response(status_code=204, headers={"Cache-Control": "max-age=86400"})

    @api.get("/healthz")
    async def healthz():  # on the event loop: never queued behind questions in the thread pool
        return service.health()

    @api.get("/metrics")
    async def metrics():
        return Response(service.render_metrics(), media_type=CONTENT_TYPE)

    @api.post("/v1/tickets", status_code=201)
    def ticket(body: TicketRequest):
        """A ticket for one GET of `path` (/v1/events or a thumbnail) within 60 s, for what cannot send the bearer
        header (EventSource, <img>): `GET path?ticket=...`."""
        return {"ticket": tickets.issue(body.path), "path": body.path, "expires_in_s": tickets.ttl_s}

    return api
