"""Events: GET /v1/events, server-sent `caption` and `watch` events (a reconnecting client gets what it missed:
Last-Event-ID or `after=`), a keepalive comment every `keepalive_s` seconds."""

from __future__ import annotations

import asyncio
from typing import Optional

from fastapi import APIRouter, Header, Query, Request
from fastapi.responses import StreamingResponse

from .common import MAX_ID


def routes(service, keepalive_s: float) -> APIRouter:
    api = APIRouter()

    @api.get("/v1/events")
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

    return api
