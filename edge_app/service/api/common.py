"""What the API modules share: size limits of what a request may carry, and checks of its text fields."""

from __future__ import annotations

from typing import Optional

from rlivs.runtime.errors import UserError

from ..webhooks import check_syntax

MAX_QUESTION = 2000  # characters
MAX_QUERY = 500  # characters of a watch query
MAX_NAME = 128  # characters of a stream name
MAX_URL = 2000  # characters of a webhook URL
MAX_ID = 2**63 - 1  # ids, clip indices and offsets are SQLite INTEGERs: anything larger is refused with 422


def check_webhook(v: Optional[str]) -> Optional[str]:
    if v is not None:
        check_syntax(v)  # the address policy is applied by the service (400) and again at every connection
    return v


def check_text(v: Optional[str]) -> Optional[str]:
    if v is not None and any(ord(c) < 32 for c in v):
        raise UserError("holds control characters (NUL, escape, newline ...): send plain text")
    return v
