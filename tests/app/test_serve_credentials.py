"""Credentials that stay on their port (issue 23, item 4), against a real `rlivs serve` on loopback: the bearer header,
and single-use tickets bound to one path for what cannot send it (EventSource, <img>). No cookie is handed out or
accepted. The browser side (Chromium with a second server on another port) is in test_serve_browser.py."""

from __future__ import annotations

import numpy as np
import httpx
import pytest

from rlivs.edge_app.service.app import Server
from rlivs.edge_app.service.core import EdgeService
from rlivs.runtime.memory import ClipRecord, Memory
from tests.helpers.serve_helpers import tiny_engine

TOKEN = "ticket-test-token-0123456789"
AUTH = {"Authorization": f"Bearer {TOKEN}"}


@pytest.fixture
def served(tmp_path, tiny_dir):
    engine = tiny_engine()
    service = EdgeService(engine, tmp_path / "memory.db")
    with Memory(service.db, model_fingerprint=engine.model_fingerprint) as mem:
        mem.open_stream("door-1", "planted", engine.backend.info.model_id, "planted")
        ids = engine.text.encode("a parcel is left at the door")
        rec = ClipRecord("door-1", 0, 0.0, 2.0, "a parcel is left at the door", len(ids), engine.vector(ids))
        mem.commit_clip(rec, None)
    service.publish_clip(rec, middle_frame=np.full((120, 160, 3), 90, np.uint8))  # stores its thumbnail
    server = Server(service, port=0, token=TOKEN).start()
    with httpx.Client(base_url=server.url, timeout=30) as client:
        yield service, server, client
    server.stop()
    service.stop()


def _ticket(client, path: str) -> str:
    r = client.post("/v1/tickets", headers=AUTH, json={"path": path})
    assert r.status_code == 201, r.text
    assert "set-cookie" not in r.headers and r.json()["path"] and r.json()["expires_in_s"] == 60
    return r.json()["ticket"]


def _events(client, params) -> int:
    with client.stream("GET", "/v1/events", params=params) as r:
        if r.status_code == 200:
            assert next(r.iter_raw()).startswith(b"retry:")
        else:
            r.read()
        return r.status_code


def test_a_ticket_is_valid_once_for_its_path(served):
    service, server, c = served
    t = _ticket(c, "/v1/events")
    assert _events(c, {"ticket": t}) == 200
    assert _events(c, {"ticket": t}) == 401  # used twice
    r = c.get("/v1/events", params={"ticket": t})
    assert "valid once, for the path it was issued for" in r.json()["detail"]
    assert r.headers["www-authenticate"].startswith("Bearer")

    # a thumbnail's ticket: the path as the API gives it, for that image only
    thumb = c.get("/v1/captions", headers=AUTH).json()["captions"][0]["thumbnail"]
    assert thumb == "/v1/thumbnails/door-1/0.jpg"
    t = _ticket(c, thumb)
    assert c.get(thumb, params={"ticket": t}).status_code == 200
    assert c.get(thumb, params={"ticket": t}).status_code == 401

    # for another path: refused, and spent (it does not work on its own path afterwards either)
    t = _ticket(c, "/v1/events")
    for path in ("/v1/streams", "/v1/captions", "/v1/thumbnails/door-1/0.jpg", "/metrics"):
        assert c.get(path, params={"ticket": t}).status_code == 401, path
    assert _events(c, {"ticket": t}) == 401
    t = _ticket(c, "/v1/thumbnails/door-1/0.jpg")
    assert c.get("/v1/thumbnails/door-1/1.jpg", params={"ticket": t}).status_code == 401

    # never for anything but a GET: a ticket does not post a question, add a watch or issue tickets
    t = _ticket(c, "/v1/events")
    assert c.post("/v1/watches", params={"ticket": t}, json={"query": "x"}).status_code == 401
    assert c.post("/v1/tickets", params={"ticket": _ticket(c, "/v1/events")},
                  json={"path": "/v1/events"}).status_code == 401
    assert service.watches() == []

    # unknown, empty, repeated
    assert _events(c, {"ticket": "x" * 43}) == 401
    assert _events(c, {"ticket": ""}) == 401
    t1, t2 = _ticket(c, "/v1/events"), _ticket(c, "/v1/events")
    assert _events(c, [("ticket", t1), ("ticket", t2)]) == 401


def test_an_expired_ticket_is_refused(served):
    service, server, c = served
    server.app.state.tickets.ttl_s = 0.0  # issued already expired: no clock to wait for
    t = _ticket_any(c, "/v1/events")
    assert _events(c, {"ticket": t}) == 401


def _ticket_any(client, path: str) -> str:
    r = client.post("/v1/tickets", headers=AUTH, json={"path": path})
    assert r.status_code == 201, r.text
    return r.json()["ticket"]


def test_tickets_are_issued_only_with_the_header_and_only_for_what_cannot_send_it(served):
    service, server, c = served
    assert c.post("/v1/tickets", json={"path": "/v1/events"}).status_code == 401
    assert c.post("/v1/tickets", json={"path": "/v1/events"}, headers={"Cookie": f"rlivs_session={TOKEN}"}
                  ).status_code == 401
    for path in ("/v1/streams", "/v1/captions", "/v1/ask", "/v1/tickets", "/metrics", "v1/events",
                 "/v1/events?x=1", "/v1/events#x", "/v1/thumbnails/door/0.png", "/v1/events\n", "/"):
        r = c.post("/v1/tickets", headers=AUTH, json={"path": path})
        assert r.status_code == 422, (path, r.status_code, r.text)
    # a ticket with a Host this server does not answer to: 421, and the ticket is not spent
    t = _ticket(c, "/v1/events")
    assert c.get("/v1/events", params={"ticket": t}, headers={"Host": "evil.example"}).status_code == 421
    assert _events(c, {"ticket": t}) == 200
    # the cookie session endpoint is gone and no cookie is a credential
    assert c.post("/v1/session", headers=AUTH).status_code == 404
    assert c.get("/v1/streams", headers={"Cookie": f"rlivs_session={TOKEN}; rlivs_token={TOKEN}"}).status_code == 401


def test_the_page_is_served_with_its_content_security_policy(served):
    service, server, c = served
    r = c.get("/")
    assert r.status_code == 200
    csp = {d.split(" ", 1)[0]: d.split(" ", 1)[1] if " " in d else "" for d in r.headers["content-security-policy"]
           .split("; ")}
    assert csp["default-src"] == "'self'" and csp["frame-ancestors"] == "'none'" and csp["connect-src"] == "'self'"
    assert csp["script-src"].startswith("'sha256-") and "unsafe" not in r.headers["content-security-policy"]
    assert r.headers["x-frame-options"] == "DENY" and r.headers["referrer-policy"] == "no-referrer"
    assert "set-cookie" not in r.headers
