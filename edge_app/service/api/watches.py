"""Watches (standing queries) and their matches: POST/GET/DELETE /v1/watches, GET /v1/watches/{id}/matches and
GET /v1/matches (newest first, `before=` pages back)."""

from __future__ import annotations

from typing import Optional

from fastapi import APIRouter, Path, Query
from fastapi.responses import Response
from pydantic import BaseModel, ConfigDict, Field, field_validator

from .common import MAX_ID, MAX_NAME, MAX_QUERY, MAX_URL, check_text, check_webhook


class WatchRequest(BaseModel):
    model_config = ConfigDict(extra="forbid", str_strip_whitespace=True)
    query: str = Field(..., min_length=1, max_length=MAX_QUERY, description="What to watch for.")
    threshold: Optional[float] = Field(
        None, ge=-1.0, le=1.0, allow_inf_nan=False, strict=True,
        description="Match when the caption's relevance is >= this (default: half the query's self-relevance).")
    stream: Optional[str] = Field(None, min_length=1, max_length=MAX_NAME, description="Only this stream.")
    webhook: Optional[str] = Field(None, max_length=MAX_URL, description="POST each match here.")

    _webhook = field_validator("webhook")(check_webhook)
    _query = field_validator("query", "stream")(check_text)


def routes(service) -> APIRouter:
    api = APIRouter()

    @api.post("/v1/watches", status_code=201)
    def add_watch(body: WatchRequest):
        return service.add_watch(body.query, body.threshold, body.stream, body.webhook)

    @api.get("/v1/watches")
    def list_watches():
        return {"watches": service.watches()}

    @api.get("/v1/watches/{watch_id}")
    def get_watch(watch_id: int = Path(..., ge=1, le=MAX_ID)):
        return service.watch(watch_id)

    @api.delete("/v1/watches/{watch_id}", status_code=204)
    def delete_watch(watch_id: int = Path(..., ge=1, le=MAX_ID)):
        service.delete_watch(watch_id)
        return Response(status_code=204)

    @api.get("/v1/watches/{watch_id}/matches")
    def watch_matches(watch_id: int = Path(..., ge=1, le=MAX_ID), limit: int = Query(50, ge=1, le=500),
                      before: Optional[int] = Query(None, ge=1, le=MAX_ID)):
        return {"matches": service.matches(watch_id, limit, before)}

    @api.get("/v1/matches")
    def all_matches(limit: int = Query(50, ge=1, le=500), before: Optional[int] = Query(None, ge=1, le=MAX_ID)):
        return {"matches": service.matches(None, limit, before)}

    return api
