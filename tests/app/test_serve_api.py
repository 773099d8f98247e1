"""The `rlivs serve` API against the tiny model, on a real uvicorn server on 127.0.0.1: a file replayed as a live
camera, captions arriving live over SSE, paged captions, questions, watches (a planted caption fires, others do
not; the webhook is POSTed on loopback), thumbnails, metrics, auth and validation."""

import json
import threading
import time

import httpx
import pytest

from rlivs.edge_app.service.store import edge_db_path
from rlivs.edge_app.sample_video import make_sample_video
from rlivs.edge_app.service.app import Server
from rlivs.edge_app.service.core import EdgeService, ServiceConfig
from rlivs.runtime.memory import ClipRecord, Memory
from rlivs.edge_app.source_specs import parse_sources
from rlivs.runtime.sources.live import SourceConfig
from tests.helpers.serve_helpers import WebhookSink, tiny_engine, wait_for

TOKEN = "test-token-0123456789abcdef"
AUTH = {"Authorization": f"Bearer {TOKEN}"}
VIDEO_SECONDS = 8.0  # 4 clips of 4 frames at 2 fps


@pytest.fixture(scope="module")
def live(tmp_path_factory, tiny_dir):
    work = tmp_path_factory.mktemp("serve")
    video = make_sample_video(work / "cam.mp4", seconds=VIDEO_SECONDS)
    engine = tiny_engine()
    cfg = ServiceConfig(source=SourceConfig(fps=2.0, replay_speed=2.0),  # replayed at 2x real speed, as a camera
                        webhook_allow=("127.0.0.1",))  # the test's webhook sink is on loopback
    service = EdgeService(engine, work / "memory.db", parse_sources([f"cam={video}"]), cfg)
    server = Server(service, host="127.0.0.1", port=0, token=TOKEN).start()
    service.start()
    client = httpx.Client(base_url=server.url, headers=AUTH, timeout=30)
    yield {"service": service, "server": server, "client": client, "url": server.url, "db": work / "memory.db",
           "engine": engine}
    client.close()
    stopper = threading.Thread(target=lambda: (server.stop(), service.stop()), daemon=True)
    stopper.start()
    stopper.join(120)  # a liveness bound: a hang fails here rather than holding the run up
    assert not stopper.is_alive(), "the server or the service did not stop"


def sse_events(response, kinds=("caption", "watch")):
    """Parse a text/event-stream response into (kind, data, id) tuples."""
    kind, data, eid = None, [], None
    for line in response.iter_lines():
        if line == "":
            if kind in kinds and data:
                yield kind, json.loads("\n".join(data)), eid
            kind, data, eid = None, [], None
        elif line.startswith("event:"):
            kind = line[6:].strip()
        elif line.startswith("data:"):
            data.append(line[5:].strip())
        elif line.startswith("id:"):
            eid = int(line[3:].strip())


def n_clips(live) -> int:
    streams = live["client"].get("/v1/streams").json()["streams"]
    return next(s["clips"] for s in streams if s["name"] == "cam")


def test_auth_token_on_every_endpoint_but_healthz(live):
    url = live["url"]
    r = httpx.get(url + "/healthz")
    assert r.status_code == 200 and r.json()["status"] in ("ok", "degraded") and "cam" not in r.text
    page = httpx.get(url + "/")  # the static page shell: it holds no data and asks for the token itself
    assert page.status_code == 200 and "text/html" in page.headers["content-type"] and "EventSource" in page.text
    icon = httpx.get(url + "/favicon.ico")  # what every browser asks for: "no icon", not a 404 (nor a 401)
    assert icon.status_code == 204 and icon.content == b""
    for method, path in [("GET", "/v1/streams"), ("GET", "/v1/captions"), ("GET", "/metrics"), ("GET", "/v1/events"),
                         ("GET", "/v1/watches"), ("POST", "/v1/ask"), ("POST", "/v1/watches"),
                         ("DELETE", "/v1/watches/1"), ("GET", "/v1/thumbnails/cam/0.jpg"), ("GET", "/openapi.json"),
                         ("GET", "/no/such/path")]:
        r = httpx.request(method, url + path, json={} if method == "POST" else None)
        assert r.status_code == 401, (method, path, r.status_code)
        assert "Authorization: Bearer" in r.json()["detail"] and r.headers["www-authenticate"].startswith("Bearer")
        r = httpx.request(method, url + path, headers={"Authorization": "Bearer wrong"})
        assert r.status_code == 401
    assert httpx.get(url + "/v1/streams", headers={"Authorization": TOKEN}).status_code == 401  # scheme required
    # no cookie is a credential (a cookie reaches every port of the host), and none is handed out: the cookie session
    # endpoint is gone; EventSource and <img> use single-use tickets instead (tests/app/test_serve_credentials.py)
    assert httpx.post(url + "/v1/session", headers=AUTH).status_code == 404
    for cookie in (f"rlivs_token={TOKEN}", f"rlivs_session={TOKEN}", "rlivs_session=x"):
        assert httpx.get(url + "/v1/streams", headers={"Cookie": cookie}).status_code == 401
    t = httpx.post(url + "/v1/tickets", headers=AUTH, json={"path": "/v1/events"})
    assert t.status_code == 201 and "set-cookie" not in t.headers, t.text


def test_non_loopback_bind_without_token_is_refused(live):
    with pytest.raises(ValueError, match="refusing to bind 0.0.0.0.*--token"):
        Server(live["service"], host="0.0.0.0", port=0)
    with pytest.raises(ValueError, match="refusing to bind 192.168.1.20"):
        Server(live["service"], host="192.168.1.20", port=0, token=None)
    Server(live["service"], host="0.0.0.0", port=0, token="a-long-enough-token")  # with a token it is allowed


def test_captions_arrive_live_over_sse_and_page_through_the_api(live):
    c = live["client"]
    got = []
    with c.stream("GET", "/v1/events", headers={"Last-Event-ID": "0"}) as r:  # 0: replay the kept events too
        assert r.status_code == 200 and r.headers["content-type"].startswith("text/event-stream")
        for kind, data, eid in sse_events(r, kinds=("caption",)):
            got.append((eid, data))
            if len(got) >= 2:
                break
    (id0, first), (id1, second) = got
    assert id1 > id0 and first["stream"] == "cam" and second["clip"] == first["clip"] + 1
    assert first["t_end"] > first["t_start"] >= 0 and first["time"].count(":") == 4
    assert first["thumbnail"] == f"/v1/thumbnails/cam/{first['clip']}.jpg" and isinstance(first["caption"], str)

    wait_for(lambda: n_clips(live) >= 3, 30, "three committed clips")
    page = c.get("/v1/captions", params={"stream": "cam", "limit": 2}).json()
    assert [x["clip"] for x in page["captions"]] == [0, 1] and page["next_offset"] == 2
    nxt = c.get("/v1/captions", params={"stream": "cam", "limit": 2, "offset": 2}).json()
    assert nxt["captions"][0]["clip"] == 2
    assert nxt["captions"][0]["t_start"] >= page["captions"][1]["t_end"] - 0.6  # stored stream times, in order
    window = c.get("/v1/captions", params={"stream": "cam", "from": 0, "to": 1.0}).json()["captions"]
    assert [x["clip"] for x in window] == [0]
    assert c.get("/v1/captions", params={"stream": "nope"}).status_code == 404

    img = c.get(first["thumbnail"])
    assert img.status_code == 200 and img.headers["content-type"] == "image/jpeg"
    from io import BytesIO

    from PIL import Image

    thumb = Image.open(BytesIO(img.content))
    assert thumb.format == "JPEG" and thumb.size == (160, 120)
    assert c.get("/v1/thumbnails/cam/999.jpg").status_code == 404


def test_ask_returns_answer_with_the_captions_used(live):
    c = live["client"]
    wait_for(lambda: n_clips(live) >= 1, 30, "a committed clip")
    r = c.post("/v1/ask", json={"question": "  What moved across the scene?  ", "stream": "cam"})
    assert r.status_code == 200, r.text
    a = r.json()
    assert a["question"] == "What moved across the scene?" and isinstance(a["answer"], str)
    assert a["latency_s"] > 0 and a["prompt_tokens"] > 0  # reported (how long it took is a benchmark's business)
    assert a["captions"] and all(x["stream"] == "cam" and x["t_end"] > x["t_start"] for x in a["captions"])
    assert all(set(x) >= {"clip", "time", "caption", "relevance", "thumbnail"} for x in a["captions"])
    assert [x["t_start"] for x in a["captions"]] == sorted(x["t_start"] for x in a["captions"])  # time order
    r = c.post("/v1/ask", json={"question": "anything?", "stream": "garage"})
    assert r.status_code == 404 and "no stream 'garage'" in r.json()["detail"]
    # the kept tokens of a captioned clip: as many as selection keeps, inside the clip's frames x tokens grid
    first = a["captions"][0]
    k = c.get(f"/v1/kept/cam/{first['clip']}").json()
    engine = live["service"].engine
    n_flat = k["frames"] * k["tokens_per_frame"]
    assert k["tokens_per_frame"] == engine.backend.info.tokens_per_frame
    assert len(k["kept"]) == engine.config.selection.n_keep(n_flat) and sorted(set(k["kept"])) == k["kept"]
    assert 0 <= k["kept"][0] and k["kept"][-1] < n_flat
    assert c.get("/v1/kept/cam/99999").status_code == 404


@pytest.mark.parametrize("method, path, body, status, message", [
    ("POST", "/v1/ask", {"question": ""}, 422, "question: String should have at least 1 character"),
    ("POST", "/v1/ask", {"question": "   "}, 422, "question: String should have at least 1 character"),
    ("POST", "/v1/ask", {"question": "x" * 2001}, 422, "question: String should have at most 2000 characters"),
    ("POST", "/v1/ask", {"question": 42}, 422, "question: Input should be a valid string"),
    ("POST", "/v1/ask", {}, 422, "question: required"),
    ("POST", "/v1/ask", {"question": "hi", "top_k": 3}, 422, "top_k: unknown field"),
    ("POST", "/v1/ask", {"question": "hi", "stream": "s" * 129}, 422, "stream: String should have at most 128"),
    ("POST", "/v1/watches", {"query": "door", "threshold": 2}, 422, "threshold: Input should be less than or equal"),
    ("POST", "/v1/watches", {"query": "door", "threshold": "high"}, 422, "threshold: Input should be a valid number"),
    ("POST", "/v1/watches", {"query": "door", "webhook": "ftp://x/y"}, 422, "webhook must be an http:// or https://"),
    ("POST", "/v1/watches", {"query": "q" * 501}, 422, "query: String should have at most 500 characters"),
    ("GET", "/v1/captions?limit=0", None, 422, "limit: Input should be greater than or equal to 1"),
    ("GET", "/v1/captions?limit=501", None, 422, "limit: Input should be less than or equal to 500"),
    ("GET", "/v1/captions?from=abc", None, 422, "from: Input should be a valid number"),
    ("GET", "/v1/captions?from=10&to=5", None, 400, "from=10.0 is after to=5.0"),
    ("DELETE", "/v1/watches/987654", None, 404, "no watch 987654"),
    ("GET", "/v1/watches/0", None, 422, "watch_id: Input should be greater than or equal to 1"),
])
def test_validation_errors_are_clear_4xx(live, method, path, body, status, message):
    r = live["client"].request(method, path, json=body)
    assert r.status_code == status, r.text
    assert message in r.json()["detail"], r.json()["detail"]


def test_malformed_and_oversized_bodies(live):
    c = live["client"]
    r = c.post("/v1/ask", content=b"{not json", headers={"Content-Type": "application/json"})
    assert r.status_code == 422 and "not valid JSON" in r.json()["detail"]
    r = c.post("/v1/ask", json={"question": "x" * 70_000})
    assert r.status_code == 413 and "too large" in r.json()["detail"]


def test_watch_fires_on_a_planted_caption_and_not_on_others(live):
    svc, c, engine = live["service"], live["client"], live["engine"]
    sink = WebhookSink()
    try:
        w = c.post("/v1/watches", json={"query": "the red box is picked up", "webhook": sink.url}).json()
        assert w["threshold"] == pytest.approx(0.5 * w["self_score"], abs=1e-5)  # the documented default
        r = c.post("/v1/watches", json={"query": "the red box is picked up", "stream": "garage"})
        assert r.status_code == 404 and "no stream 'garage'" in r.json()["detail"]  # an unknown stream is refused
        with Memory(live["db"], model_fingerprint=engine.model_fingerprint) as mem:
            mem.open_stream("garage", "test", engine.backend.info.model_id, "planted")
        other = c.post("/v1/watches", json={"query": "the red box is picked up", "stream": "garage",
                                            "threshold": 0.0}).json()  # another stream only: must never fire here
        events, ready = [], threading.Event()

        def listen():
            with httpx.stream("GET", live["url"] + "/v1/events", headers=AUTH, timeout=30) as r:
                ready.set()
                for kind, data, _ in sse_events(r, kinds=("watch",)):
                    events.append(data)
                    return

        threading.Thread(target=listen, daemon=True).start()
        assert ready.wait(10)

        # Plant two captions in their own stream, committed like ingest commits them, then sent down the same path
        # every ingested caption takes (EdgeService.publish_clip: caption event, then watch scoring).
        planted = {"someone picks up the red box": True, "a cat sleeps on the sofa": False}
        with Memory(live["db"], model_fingerprint=engine.model_fingerprint) as mem:
            mem.open_stream("planted", "test", engine.backend.info.model_id, "planted")
            for i, text in enumerate(planted):
                ids = engine.text.encode(text)
                rec = ClipRecord("planted", i, 10.0 * i, 10.0 * i + 2, text, len(ids), engine.vector(ids))
                mem.commit_clip(rec, None)
                made = svc.publish_clip(rec)
                assert bool(made) == planted[text], (text, made)

        wait_for(lambda: events, 10, "the watch event")
        ev = events[0]
        assert ev["watch_id"] == w["id"] and ev["stream"] == "planted" and ev["clip"] == 0
        assert ev["caption"] == "someone picks up the red box" and ev["score"] >= w["threshold"]
        assert ev["query"] == "the red box is picked up" and ev["time"] == "00:00:00-00:00:02"

        wait_for(lambda: sink.received, 10, "the webhook POST")
        hook = sink.received[0]
        assert hook["path"] == "/hook" and hook["content_type"] == "application/json"
        assert hook["body"]["event"] == "watch" and hook["body"]["caption"] == "someone picks up the red box"

        # let the camera's stream finish: every real (noise) caption is scored too, and none of them matches
        wait_for(lambda: next(s for s in c.get("/v1/streams").json()["streams"] if s["name"] == "cam")["state"]
                 == "finished", 30, "the replayed file to finish")
        matches = c.get(f"/v1/watches/{w['id']}/matches").json()["matches"]
        assert [(m["stream"], m["caption"]) for m in matches] == [("planted", "someone picks up the red box")]
        assert c.get(f"/v1/watches/{other['id']}/matches").json()["matches"] == []
        listed = {x["id"]: x for x in c.get("/v1/watches").json()["watches"]}
        assert listed[w["id"]]["matches"] == 1 and listed[w["id"]]["max_score"] >= w["threshold"]
        assert len(sink.received) == 1
        all_matches = c.get("/v1/matches").json()["matches"]
        assert [m["watch_id"] for m in all_matches] == [w["id"]]

        # watches live in their own SQLite file next to the memory and are deleted with their matches
        assert edge_db_path(live["db"]).exists()
        assert c.delete(f"/v1/watches/{w['id']}").status_code == 204
        assert c.get(f"/v1/watches/{w['id']}").status_code == 404
        assert c.delete(f"/v1/watches/{other['id']}").status_code == 204
    finally:
        sink.close()


def test_metrics_and_stream_health(live):
    c = live["client"]
    wait_for(lambda: n_clips(live) >= 2, 30, "two clips")
    c.post("/v1/ask", json={"question": "what is there?"})
    r = c.get("/metrics")
    assert r.status_code == 200 and r.headers["content-type"].startswith("text/plain; version=0.0.4")
    samples = {}
    for line in r.text.splitlines():
        if line and not line.startswith("#"):
            name, value = line.rsplit(" ", 1)
            samples[name] = float(value)
    assert samples['rlivs_clips_total{stream="cam"}'] >= 2
    assert samples['rlivs_clip_stage_seconds_count{stage="decode",stream="cam"}'] >= 2
    for stage in ("encode", "prefill", "decode", "select", "store", "total"):
        assert samples[f'rlivs_clip_stage_seconds_sum{{stage="{stage}",stream="cam"}}'] > 0
    assert 0 <= samples['rlivs_seconds_behind_live{stream="cam"}'] < 30
    assert samples['rlivs_frames_decoded_total{stream="cam"}'] > 0
    assert 'rlivs_frames_dropped_total{stream="cam"}' in samples
    assert samples['rlivs_decode_errors_total{stream="cam"}'] == 0
    assert 'rlivs_source_reconnects_total{stream="cam"}' in samples
    assert samples['rlivs_questions_total{outcome="answered"}'] >= 1
    assert samples['rlivs_model_calls_total{priority="question"}'] >= 1
    assert "# TYPE rlivs_clip_stage_seconds histogram" in r.text

    cam = next(s for s in c.get("/v1/streams").json()["streams"] if s["name"] == "cam")
    running = cam["worker"] in ("starting", "running")  # the replayed file may have ended by now
    assert cam["ingesting"] is running and cam["live"] is running  # a finished file is neither (issue 18)
    assert (cam["seconds_behind_live"] is None) is not running and cam["state"] in ("running", "finished")
    assert cam["kind"] == "file" and cam["model_id"] == "tiny"
    assert cam["source_stats"]["frames_decoded"] > 0 and cam["source_stats"]["decode_errors"] == 0
    assert cam["clips"] >= 2 and cam["error"] is None


def test_empty_memory_says_so_and_shutdown_ends_open_event_streams(tmp_path, tiny_dir):
    service = EdgeService(tiny_engine(), tmp_path / "empty.db")  # no sources: answers from the memory only
    server = Server(service, port=0).start()  # loopback: no token needed
    try:
        r = httpx.post(server.url + "/v1/ask", json={"question": "anything?"})
        assert r.status_code == 409 and "holds no captions yet" in r.json()["detail"]
        assert httpx.get(server.url + "/v1/streams").json() == {"streams": []}
        opened, ended = threading.Event(), threading.Event()

        def listen():
            with httpx.stream("GET", server.url + "/v1/events", timeout=30) as resp:
                opened.set()
                for _ in resp.iter_lines():
                    pass
            ended.set()

        threading.Thread(target=listen, daemon=True).start()
        assert opened.wait(10)
        wait_for(lambda: service.events.subscribers == 1, 5, "the SSE subscriber")
    finally:
        server.stop()
        service.stop()
    # the open event stream was ended by the shutdown (a stream cut at the graceful-shutdown deadline would raise in
    # the listener instead of ending), and the server's thread is gone
    assert ended.wait(30) and not server._thread.is_alive()


def test_file_at_full_speed_and_changed_settings_refused(tmp_path, tiny_dir):
    """--no-replay ingests a file as fast as it can (resumable, like `rlivs ingest`); reopening the stream with other
    ingest settings is refused before anything is served."""
    from dataclasses import replace

    from rlivs.runtime.config import CaptionConfig, ClipConfig, PipelineConfig

    video = make_sample_video(tmp_path / "clip.mp4", seconds=4.0)
    engine = tiny_engine()
    service = EdgeService(engine, tmp_path / "m.db", parse_sources([str(video)]), ServiceConfig(replay_files=False))
    service.start()
    try:
        wait_for(lambda: service.workers[0].state == "finished", 30, "the file to be ingested")
        st = service.streams()[0]  # read as a file (no live source pacing it: no source_stats), not replayed
        assert st["name"] == "clip" and st["clips"] == 2 and not st["live"] and st["source_stats"] is None
        assert service.store.thumbnail("clip", 1)[:2] == b"\xff\xd8"  # a JPEG
        assert 'rlivs_frames_sampled_total{stream="clip"} 8' in service.render_metrics()
    finally:
        service.stop()
    other = replace(engine, config=PipelineConfig(clip=ClipConfig(fps=2.0, frames_per_clip=8),
                                                  caption=CaptionConfig(max_new_tokens=8)))
    with pytest.raises(ValueError, match="ingested with other settings"):
        EdgeService(other, tmp_path / "m.db", parse_sources([str(video)]))


def test_a_backend_failure_is_a_json_500_that_names_it(tmp_path, tiny_dir, monkeypatch):
    """A bug inside the backend (here: transformers rejecting the cache call) is a 500 whose JSON detail says which
    component failed and that it is a bug; the server keeps serving and the memory is untouched."""
    engine = tiny_engine()
    db = tmp_path / "m.db"
    with Memory(db, model_fingerprint=engine.model_fingerprint) as mem:
        mem.open_stream("cam", "x.mp4", engine.backend.info.model_id, engine.config.ingest_fingerprint())
        ids = engine.text.encode("a person opens the door")
        mem.commit_clip(ClipRecord("cam", 0, 0.0, 2.0, "a person opens the door", len(ids), engine.vector(ids)), None)
    service = EdgeService(engine, db)
    server = Server(service, port=0).start()
    try:
        from rlivs.runtime.backends.torch import backend as torch_backend

        def broken(cache):
            raise TypeError("update() got an unexpected keyword argument 'kwargs'")

        monkeypatch.setattr(torch_backend, "cache_kwargs", broken)
        r = httpx.post(server.url + "/v1/ask", json={"question": "who opened the door?"}, timeout=60)
        assert r.status_code == 500
        detail = r.json()["detail"]
        assert "the torch backend failed (TypeError: update() got an unexpected keyword argument" in detail
        assert "bug in rlivs" in detail
        monkeypatch.undo()
        assert httpx.get(server.url + "/healthz").status_code == 200
        r = httpx.post(server.url + "/v1/ask", json={"question": "who opened the door?"}, timeout=60)
        assert r.status_code == 200 and r.json()["captions"][0]["caption"] == "a person opens the door"
    finally:
        server.stop()
        service.stop()
