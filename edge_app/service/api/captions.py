"""Captions: GET /v1/captions, paged in time order, or one clip of a stream by its index (`clip=`)."""

from __future__ import annotations

from typing import Optional

from fastapi import APIRouter, Query

from rlivs.runtime.errors import UserError

from .common import MAX_ID, MAX_NAME


def routes(service) -> APIRouter:
    api = APIRouter()

    @api.get("/v1/captions")
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

    return api
