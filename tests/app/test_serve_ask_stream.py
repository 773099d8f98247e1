"""POST /v1/ask/stream on a real loopback server: the answer as server-sent events, token by token, then the same
JSON /v1/ask gives; refusals before the first token are plain JSON 4xx, as from /v1/ask."""

import json

import httpx

from rlivs.edge_app.service.app import Server
from rlivs.edge_app.service.core import EdgeService
from rlivs.runtime.memory import ClipRecord, Memory
from tests.helpers.serve_helpers import tiny_engine


def _events(text: str) -> list[tuple[str, dict]]:
    out = []
    for block in text.strip().split("\n\n"):
        lines = dict(line.split(": ", 1) for line in block.splitlines())
        out.append((lines["event"], json.loads(lines["data"])))
    return out


def test_answer_streams_as_events_and_ends_with_the_ask_json(tmp_path, tiny_dir):
    engine = tiny_engine()
    service = EdgeService(engine, tmp_path / "memory.db")
    with Memory(service.db, model_fingerprint=engine.model_fingerprint) as mem:
        mem.open_stream("door", "planted", engine.backend.info.model_id, "planted")
        for i, text in enumerate(["a parcel is left at the door", "a cat walks past"]):
            ids = engine.text.encode(text)
            mem.commit_clip(ClipRecord("door", i, 16.0 * i, 16.0 * i + 16, text, len(ids), engine.vector(ids)), None)
    server = Server(service, port=0).start()
    try:
        with httpx.Client(base_url=server.url, timeout=30) as c:
            with c.stream("POST", "/v1/ask/stream", json={"question": "what was left at the door?"}) as r:
                assert r.status_code == 200 and r.headers["content-type"].startswith("text/event-stream")
                body = r.read().decode()
            events = _events(body)
            kinds = [k for k, _ in events]
            assert kinds[-1] == "answer" and set(kinds[:-1]) == {"token"} and len(kinds) >= 3, kinds
            final = events[-1][1]
            assert "".join(d["text"] for k, d in events[:-1]) == final["answer"]
            plain = c.post("/v1/ask", json={"question": "what was left at the door?"}).json()
            assert {k: v for k, v in final.items() if k != "latency_s"} == \
                   {k: v for k, v in plain.items() if k != "latency_s"}
            r = c.post("/v1/ask/stream", json={"question": "what?", "stream": "nope"})
            assert r.status_code == 404 and "no stream 'nope'" in r.json()["detail"]
            r = c.post("/v1/ask/stream", json={"question": "   "})
            assert r.status_code == 422
    finally:
        server.stop()
        service.stop()
