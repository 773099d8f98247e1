"""Questions: POST /v1/ask (the answer JSON) and POST /v1/ask/stream (the answer as server-sent events as it is
generated). Both admit at the one question gate on the event loop (429 at once when full) and answer on the
service's question pool; a client that hangs up has its question dropped or stopped."""

from __future__ import annotations

import asyncio
import logging
from typing import Optional

from fastapi import APIRouter, Request
from fastapi.responses import Response, StreamingResponse
from pydantic import BaseModel, ConfigDict, Field

from rlivs.runtime.errors import UserError

from ..core import NotFound, NotReady, Question, QuestionCancelled
from ..events import Event
from .common import MAX_NAME, MAX_QUESTION

log = logging.getLogger("rlivs.serve")


class AskRequest(BaseModel):
    model_config = ConfigDict(extra="forbid", str_strip_whitespace=True)
    question: str = Field(..., min_length=1, max_length=MAX_QUESTION, description="The question.")
    stream: Optional[str] = Field(None, min_length=1, max_length=MAX_NAME, description="Only this stream.")
    from_: Optional[str] = Field(None, alias="from", min_length=1, max_length=64,
                                 description="Only captions from this wall-clock time: ISO 8601, -2h, yesterday, ...")
    to: Optional[str] = Field(None, min_length=1, max_length=64, description="... and up to this time.")



def routes(service) -> APIRouter:
    api = APIRouter()

    @api.post("/v1/ask")
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

    @api.post("/v1/ask/stream")
    async def ask_stream(request: Request, body: AskRequest):
        return await _streamed_answer(service, request, body)

    return api


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


async def _streamed_answer(service, request: Request, body: AskRequest):
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
