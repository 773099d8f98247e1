"""One question gate for every entry (issue 23, item 3), against a real `rlivs serve` on loopback with the tiny model.

`/v1/ask` and `/v1/ask/stream` are admitted at the same gate (one question on the model, `question_queue` waiting,
beyond that 429 with Retry-After), on the service's own thread pool. A question whose client hangs up while it waits is
dropped (the model never sees it); one whose client hangs up while its answer is generated is stopped at the next
token. Each test bounds the work (counts of questions, steps, tokens), never the clock: the waits below are limits
on how long to wait for something that must happen, not assertions about time.
"""

from __future__ import annotations

import json
import re
import socket
import threading
from dataclasses import replace

import httpx
import pytest

from rlivs.edge_app.service import core
from rlivs.edge_app.service.app import Server
from rlivs.edge_app.service.core import EdgeService, ServiceConfig
from rlivs.runtime.memory import ClipRecord, Memory
from tests.helpers.serve_helpers import tiny_engine, wait_for

QUEUE = 2  # questions waiting at most: the gate admits 1 + QUEUE


def _plant(engine, db):
    with Memory(db, model_fingerprint=engine.model_fingerprint) as mem:
        mem.open_stream("door", "planted", engine.backend.info.model_id, "planted")
        for i, text in enumerate(["a parcel is left at the door", "a cat walks past", "the door opens"]):
            ids = engine.text.encode(text)
            mem.commit_clip(ClipRecord("door", i, 16.0 * i, 16.0 * i + 16, text, len(ids), engine.vector(ids)), None)


@pytest.fixture
def served(tmp_path, tiny_dir):
    made = []

    def serve(engine=None, **config):
        engine = engine or tiny_engine()
        db = tmp_path / f"memory{len(made)}.db"
        _plant(engine, db)
        service = EdgeService(engine, db, config=ServiceConfig(question_queue=QUEUE, **config))
        server = Server(service, port=0).start()
        made.append((server, service))
        return service, server

    yield serve
    for server, service in made:
        server.stop()
        service.stop()


def _metric(service, outcome: str) -> float:
    m = re.search(r'^rlivs_questions_total\{outcome="%s"\} (\S+)$' % outcome, service.render_metrics(), re.M)
    return float(m.group(1)) if m else 0.0


def _open(server, path: str, question: str) -> socket.socket:
    """Send a question on a raw connection (the test decides when to hang up) and return the socket."""
    body = json.dumps({"question": question}).encode()
    s = socket.create_connection(("127.0.0.1", server.port), timeout=30)
    s.sendall(f"POST {path} HTTP/1.1\r\nHost: 127.0.0.1:{server.port}\r\nContent-Type: application/json\r\n"
              f"Content-Length: {len(body)}\r\n\r\n".encode() + body)
    return s


def _read_until(s: socket.socket, marker: bytes) -> bytes:
    got = b""
    while marker not in got:
        chunk = s.recv(65536)
        if not chunk:
            break
        got += chunk
    return got


def _answers(service):
    """Spy on the answers the model generates: the questions `answer()` was called with."""
    asked = []
    real = core.answer

    def spy(engine, index, question, *a, **kw):
        asked.append(question)
        return real(engine, index, question, *a, **kw)

    return asked, spy


def test_both_endpoints_share_one_gate_and_a_stream_flood_gets_429(served, monkeypatch):
    service, server = served()
    asked, spy = _answers(service)
    monkeypatch.setattr(core, "answer", spy)
    service.model_lock.acquire(0)  # the model busy (QUESTION priority): the first question waits on it in its turn
    held, results = [], []
    try:
        # the gate filled by one /v1/ask and two /v1/ask/stream questions: one on its turn, two waiting
        held.append(_open(server, "/v1/ask", "q0 what was left at the door?"))
        wait_for(lambda: len(service.questions.places()) == 1, 20, "the first question to be admitted")
        for i in (1, 2):
            held.append(_open(server, "/v1/ask/stream", f"q{i} what was left at the door?"))
            wait_for(lambda n=i + 1: len(service.questions.places()) == n, 20, f"question {i} to be admitted")
        wait_for(lambda: service.questions.waiting == QUEUE, 20, "two questions waiting")

        # a flood on the stream endpoint, and questions on /v1/ask: every one refused, none waits
        def flood(path):
            with httpx.Client(base_url=server.url, timeout=30) as c:
                r = c.post(path, json={"question": "flood: what moved?"})
                results.append((path, r.status_code, r.headers.get("retry-after"), r.text))

        threads = [threading.Thread(target=flood, args=("/v1/ask/stream" if i % 4 else "/v1/ask",))
                   for i in range(16)]
        for t in threads:
            t.start()
        for t in threads:
            t.join(60)
        assert len(results) == 16
        assert all(code == 429 and int(ra) >= 1 for _, code, ra, _ in results), results
        assert {p for p, *_ in results} == {"/v1/ask", "/v1/ask/stream"}
        assert all("already waiting for the model" in text for *_, text in results)
        assert len(service.questions.places()) == 1 + QUEUE  # the flood took no place and no thread
        assert _metric(service, "rejected") == 16
    finally:
        service.model_lock.release()
    # the three admitted questions are answered, in arrival order, each by the model once
    replies = [_read_until(s, b"event: answer" if i else b"}") for i, s in enumerate(held)]
    for s in held:
        s.close()
    assert replies[0].startswith(b"HTTP/1.1 200") and b'"answer"' in replies[0], replies[0][:300]
    for r in replies[1:]:
        assert r.startswith(b"HTTP/1.1 200") and b"event: answer" in r, r[:300]
    assert asked == [f"q{i} what was left at the door?" for i in range(3)]
    assert not any(q.startswith("flood") for q in asked)
    assert _metric(service, "answered") == 3


def test_a_question_whose_client_hung_up_while_waiting_is_never_answered(served, monkeypatch):
    service, server = served()
    asked, spy = _answers(service)
    monkeypatch.setattr(core, "answer", spy)
    service.model_lock.acquire(0)
    try:
        first = _open(server, "/v1/ask", "kept: what was left at the door?")
        wait_for(lambda: len(service.questions.places()) == 1, 20, "the first question on its turn")
        gone = [_open(server, "/v1/ask/stream", "gone stream: what moved?"),
                _open(server, "/v1/ask", "gone plain: what moved?")]
        wait_for(lambda: service.questions.waiting == 2, 20, "two questions waiting")
        for s in gone:
            s.close()  # the clients hang up while their questions wait
        wait_for(lambda: _metric(service, "dropped") == 2, 20, "both abandoned questions to be dropped")
        wait_for(lambda: len(service.questions.places()) == 1, 20, "their places to be given back")
        assert service.questions.waiting == 0
        # a new question takes a freed place (admitted, not 429)
        again = _open(server, "/v1/ask/stream", "later: what was left at the door?")
        wait_for(lambda: service.questions.waiting == 1, 20, "the new question waiting")
    finally:
        service.model_lock.release()
    assert _read_until(first, b"}").startswith(b"HTTP/1.1 200")
    assert b"event: answer" in _read_until(again, b"event: answer")
    first.close()
    again.close()
    assert asked == ["kept: what was left at the door?", "later: what was left at the door?"]  # never the gone two
    assert _metric(service, "answered") == 2 and _metric(service, "stopped") == 0


def test_a_stream_whose_client_hung_up_mid_answer_is_stopped_before_its_max_tokens(served):
    max_tokens = 64
    engine = tiny_engine()
    engine = replace(engine, config=replace(engine.config, answer=replace(engine.config.answer,
                                                                          max_new_tokens=max_tokens)))
    service, server = served(engine)
    steps = []
    real_step = service.question_backend.step

    def step(*a, **kw):  # after two tokens, wait until the service has seen the client go (bounded by the wait)
        steps.append(1)
        if len(steps) == 3:
            wait_for(lambda: any(t.cancelled for t in service.questions.places()), 20, "the question's cancellation")
        return real_step(*a, **kw)

    service.question_backend.step = step
    s = _open(server, "/v1/ask/stream", "what was left at the door?")
    got = _read_until(s, b"event: token")
    assert got.startswith(b"HTTP/1.1 200") and b"event: token" in got, got[:300]
    s.close()  # the client hangs up after the first token
    wait_for(lambda: _metric(service, "stopped") == 1, 30, "the question to be stopped")
    assert len(steps) < 1 + max_tokens  # stopped at the next token, far from its bound
    assert _metric(service, "answered") == 0 and _metric(service, "failed") == 0
    wait_for(lambda: service.questions.places() == [], 20, "its place to be given back")
    # the model is free for the next question
    with httpx.Client(base_url=server.url, timeout=60) as c:
        service.question_backend.step = real_step
        r = c.post("/v1/ask", json={"question": "what was left at the door?"})
        assert r.status_code == 200 and r.json()["answer"] is not None
