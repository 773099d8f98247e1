"""Fuzzing every endpoint of the `rlivs serve` API from its own OpenAPI schema (hypothesis, seeded, bounded).

A real uvicorn server on 127.0.0.1 with the tiny model's bundle, a token, a stored stream and a file replayed as a live
camera (ingest runs while the fuzzer hits the API). Requests are drawn from /openapi.json (tests/helpers/openapi_fuzz.py):
schema-valid ones and hostile ones (wrong types, out-of-range numbers, odd text, raw bodies that are not UTF-8 or
not JSON, ...), with a right, wrong or missing token. For every response: no 5xx, an answer within the client
timeout (no hang), a JSON `detail` on every error, 401 exactly when the token is wrong. Afterwards the service still
answers, ingest did not fail, no question failed, and what was stored is unchanged.

    RLIVS_FUZZ_EXAMPLES=2000 python -m pytest -q -s tests/app/test_api_fuzz.py     # a longer run; prints the figures
"""

from __future__ import annotations

import json
import os
import time
from collections import Counter
from urllib.parse import urlsplit

import httpx
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from rlivs.edge_app.sample_video import make_sample_video
from tests.helpers.openapi_fuzz import Request, operations, requests
from tests.helpers.serve_helpers import WebhookSink, wait_for

TOKEN = "fuzz-token-0123456789abcdef"
EXAMPLES = int(os.environ.get("RLIVS_FUZZ_EXAMPLES", "400"))
TIMEOUT_S = 15.0  # a response slower than this is a hang
# what each operation may answer besides 2xx when the request is schema-valid (documented in docs/edge_app.md)
ALLOWED_4XX = {400, 401, 404, 409, 411, 413, 422}


@pytest.fixture(scope="module")
def server(tmp_path_factory, bundle):
    from rlivs.edge_app.options import pipeline_config
    from rlivs.edge_app.service.app import Server
    from rlivs.edge_app.service.core import EdgeService, ServiceConfig
    from rlivs.runtime.memory import ClipRecord, Memory
    from rlivs.runtime.engine import load_engine
    from rlivs.runtime.config import EngineConfig
    from rlivs.edge_app.source_specs import parse_sources
    from rlivs.runtime.sources.live import SourceConfig

    work = tmp_path_factory.mktemp("fuzz")
    cfg = pipeline_config(fps=2.0, frames_per_clip=4, max_caption_tokens=6, max_answer_tokens=6)
    engine = load_engine(EngineConfig(model=str(bundle), threads=1), cfg)
    db = work / "memory.db"
    with Memory(db, model_fingerprint=engine.model_fingerprint) as mem:  # a stored stream: answers work at once
        mem.open_stream("stored", "earlier.mp4", engine.backend.info.model_id, "planted")
        for i, text in enumerate(["a red box on the table", "someone opens the door", "the cat sleeps"]):
            ids = engine.text.encode(text)
            mem.commit_clip(ClipRecord("stored", i, 10.0 * i, 10.0 * i + 8, text, len(ids), engine.vector(ids)), None)
        stored = [(r.index, r.caption, r.vector.tobytes(), r.committed_at) for r in mem.clips("stored")]
    video = make_sample_video(work / "cam.mp4", seconds=30.0, size=(160, 120))
    service = EdgeService(engine, db, parse_sources([f"cam={video}"]),
                          ServiceConfig(source=SourceConfig(fps=2.0, replay_speed=1.0), webhook_allow=("127.0.0.1",)))
    sink = WebhookSink()
    calls = {"outside": []}
    real_deliver = service.webhooks.deliver

    def loopback_only(url, payload):  # a guard: fuzzing must never make the service call out
        if urlsplit(url).hostname != "127.0.0.1":
            calls["outside"].append(url)
            return
        real_deliver(url, payload)

    service.webhooks.deliver = loopback_only
    srv = Server(service, port=0, token=TOKEN).start()
    service.start()
    yield {"url": srv.url, "service": service, "db": db, "stored": stored, "sink": sink, "calls": calls}
    srv.stop()
    service.stop()
    sink.close()


def _send(client: httpx.Client, req, auth: str) -> httpx.Response:
    client.cookies.clear()  # the auth is what `auth` says: nothing kept between requests
    headers, params = dict(req.headers), dict(req.params)
    if auth == "bearer":
        headers["Authorization"] = f"Bearer {TOKEN}"
    elif auth == "ticket":  # the page's way for EventSource: a single-use ticket for /v1/events (401 anywhere else)
        r = client.post("/v1/tickets", headers={"Authorization": f"Bearer {TOKEN}"}, json={"path": "/v1/events"})
        assert r.status_code == 201 and "set-cookie" not in r.headers, r.text
        params["ticket"] = r.json()["ticket"]
    elif auth == "wrong":
        headers["Authorization"] = "Bearer not-the-token"
    elif auth == "cookie":  # no cookie is a credential
        headers["Cookie"] = f"rlivs_session={TOKEN}; rlivs_token={TOKEN}"
    elif auth == "junk-cookie":
        headers["Cookie"] = 'rlivs_session="unterminated; ;;=; x'
    kw = {"params": params, "headers": headers}
    if req.raw_body is not None:
        kw["content"] = req.raw_body
        headers["Content-Type"] = "application/json"
    elif req.json_body is not None or req.method in ("POST", "PUT", "PATCH"):
        kw["content"] = json.dumps(req.json_body).encode()
        headers["Content-Type"] = "application/json"
    if req.path == "/v1/events":  # a stream that never ends by itself: read the first chunk and hang up
        with client.stream(req.method, req.path, **kw) as r:
            if r.status_code == 200:
                assert r.headers["content-type"].startswith("text/event-stream")
                first = next(r.iter_raw(), b"")
                assert first.startswith(b"retry:") or first.startswith(b"id:") or first.startswith(b":"), first[:80]
            else:
                r.read()
            return r
    return client.request(req.method, req.path, **kw)


def test_fuzz_every_endpoint_no_5xx_no_hang_and_the_service_still_answers(server):
    spec = httpx.get(server["url"] + "/openapi.json", headers={"Authorization": f"Bearer {TOKEN}"}).json()
    ops = operations(spec)
    names = {o.name for o in ops}
    assert {"POST /v1/ask", "GET /v1/captions", "GET /v1/events", "POST /v1/watches", "DELETE /v1/watches/{watch_id}",
            "GET /v1/thumbnails/{stream}/{clip}.jpg", "GET /metrics", "GET /healthz"} <= names
    extra = [("GET", "/"), ("GET", "/openapi.json"), ("GET", "/no/such/endpoint"), ("PATCH", "/v1/ask")]
    sink_url = server["sink"].url
    webhook = st.one_of(st.none(), st.just(sink_url),  # only the loopback sink, or values the server must refuse
                        st.sampled_from(["ftp://127.0.0.1/x", "http://", "http:///no-host", "127.0.0.1:9/hook",
                                         "javascript:alert(1)", "file:///etc/passwd", ""]))
    override = {"webhook": webhook}
    seen: Counter = Counter()
    statuses: Counter = Counter()
    slowest = [0.0, ""]
    client = httpx.Client(base_url=server["url"], timeout=TIMEOUT_S)

    @settings(max_examples=EXAMPLES, derandomize=True, database=None, deadline=None,
              suppress_health_check=list(HealthCheck))
    @given(st.data())
    def one_request(data):
        pick = data.draw(st.integers(0, len(ops) + len(extra) - 1), label="operation")
        auth = data.draw(st.sampled_from(["bearer"] * 8 + ["ticket", "cookie", "none", "wrong", "junk-cookie"]), label="auth")
        if pick < len(ops):
            req = data.draw(requests(ops[pick], spec, override), label="request")
        else:
            method, path = extra[pick - len(ops)]
            req = Request(method, path, {}, {}, operation=f"{method} {path}")
        t0 = time.monotonic()
        try:
            r = _send(client, req, auth)
        except httpx.TimeoutException:
            raise AssertionError(f"{req.operation}: no answer within {TIMEOUT_S} s (a hang): {req}") from None
        took = time.monotonic() - t0
        if took > slowest[0]:
            slowest[:] = [took, req.operation]
        seen[req.operation] += 1
        statuses[r.status_code] += 1
        assert r.status_code < 500, f"{req.operation} -> {r.status_code} {r.text[:300]} for {req}"
        granted = auth == "bearer" or (auth == "ticket" and req.method == "GET" and req.path == "/v1/events")
        if req.path not in ("/healthz", "/"):
            assert (r.status_code == 401) == (not granted), f"{req.operation} auth={auth} -> {r.status_code}"
        if r.status_code >= 400:
            detail = r.json().get("detail")
            assert isinstance(detail, str) and detail, f"{req.operation} -> {r.status_code} without a detail"
            assert r.status_code in ALLOWED_4XX | {404, 405}, f"{req.operation} -> {r.status_code}: {detail}"

    t0 = time.monotonic()
    one_request()
    wall = time.monotonic() - t0
    client.close()

    # every operation was exercised
    for op in ops:
        assert seen[op.name] >= 5, (op.name, seen)
    figures = {"requests": sum(seen.values()), "seconds": round(wall, 1), "slowest_s": round(slowest[0], 3),
               "slowest": slowest[1], "statuses": dict(sorted(statuses.items())), "per_operation": dict(seen)}
    print(json.dumps(figures))
    assert statuses[200] + statuses[201] + statuses[204] > 0 and statuses[401] > 0 and statuses[422] > 0
    assert not server["calls"]["outside"], "the service was made to call a non-loopback address"

    # the service still answers, ingest did not fail, nothing stored changed
    auth = {"Authorization": f"Bearer {TOKEN}"}
    base = server["url"]
    assert httpx.get(base + "/healthz", timeout=10).status_code == 200
    r = httpx.post(base + "/v1/ask", json={"question": "where is the red box?", "stream": "stored"}, headers=auth,
                   timeout=30)
    assert r.status_code == 200 and r.json()["captions"], r.text
    svc = server["service"]
    wait_for(lambda: svc.workers[0].state in ("running", "finished"), 10, "the ingest worker")
    assert svc.workers[0].state != "failed" and svc.workers[0].error is None
    metrics = httpx.get(base + "/metrics", headers=auth, timeout=10).text
    assert 'rlivs_questions_total{outcome="failed"}' not in metrics
    from rlivs.runtime.memory import Memory

    with Memory(server["db"], readonly=True) as mem:
        now = [(r.index, r.caption, r.vector.tobytes(), r.committed_at) for r in mem.clips("stored")]
        cam = [r.index for r in mem.clips("cam")]
    assert now == server["stored"]
    assert cam == list(range(len(cam)))
