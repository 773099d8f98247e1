"""Streams: GET /v1/streams (each stream's clips, state, lag, source statistics), a clip's thumbnail and the visual
tokens selection kept of it."""

from __future__ import annotations

from fastapi import APIRouter, Path
from fastapi.responses import Response

from .common import MAX_ID, MAX_NAME


def routes(service) -> APIRouter:
    api = APIRouter()

    @api.get("/v1/streams")
    def streams():
        return {"streams": service.streams()}

    @api.get("/v1/thumbnails/{stream:path}/{clip}.jpg")
    def thumbnail(stream: str = Path(..., max_length=MAX_NAME), clip: int = Path(..., ge=0, le=MAX_ID)):
        return Response(service.thumbnail(stream, clip), media_type="image/jpeg",
                        headers={"Cache-Control": "private, max-age=86400, immutable"})

    @api.get("/v1/kept/{stream:path}/{clip}")
    def kept(stream: str = Path(..., max_length=MAX_NAME), clip: int = Path(..., ge=0, le=MAX_ID)):
        return service.kept(stream, clip)

    return api
