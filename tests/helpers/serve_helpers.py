"""Helpers for the service tests: a cached tiny engine, loopback HTTP servers (a live video stream, a webhook sink).

Everything binds 127.0.0.1 and is torn down by the tests; nothing reaches the network.
"""

from __future__ import annotations

import functools
import json
import socket
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import pytest

FPS = 2.0  # sampling rate the service tests use
FRAMES_PER_CLIP = 4
CAPTION_TOKENS = 8
ANSWER_TOKENS = 8


@functools.lru_cache(maxsize=None)
def tiny_engine():
    """One tiny-model engine per test session (loading it costs seconds). Small clips, short captions."""
    from rlivs.runtime.config import AnswerConfig
    from rlivs.runtime.engine import load_engine
    from tests.helpers.configs import DEFAULT_FIFO_CLIPS, small_config

    cfg = small_config(FRAMES_PER_CLIP, CAPTION_TOKENS, fps=FPS, fifo_clips=DEFAULT_FIFO_CLIPS,
                       answer=AnswerConfig(max_new_tokens=ANSWER_TOKENS))
    return load_engine("tiny", config=cfg)


def wait_for(predicate, timeout: float, what: str, interval: float = 0.05):
    """Poll `predicate` until it returns something truthy; fail with `what` after `timeout` seconds."""
    deadline = time.monotonic() + timeout
    while True:
        value = predicate()
        if value:
            return value
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout} s waiting for {what}")
        time.sleep(interval)


def healthy(url: str) -> bool:
    """True when `url`/healthz answers 200 (False while the server is not up yet)."""
    import httpx

    try:
        return httpx.get(url + "/healthz", timeout=2).status_code == 200
    except httpx.HTTPError:
        return False


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class LiveStreamServer:
    """Streams a video file over HTTP at real speed (times `speed`), like an IP camera: one pass per connection.

    `stop()` closes the listening socket and every open connection (the camera goes away); `start()` again on the
    same port brings it back.
    """

    def __init__(self, path: Path, seconds: float, port: int | None = None, speed: float = 1.0):
        self.data = Path(path).read_bytes()
        self.seconds, self.speed = seconds, speed
        self.port = port or free_port()
        self.connections = 0
        self._httpd: ThreadingHTTPServer | None = None
        self._down = threading.Event()

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}/live.ts"

    def start(self) -> LiveStreamServer:
        owner = self
        self._down.clear()

        class Handler(BaseHTTPRequestHandler):
            def log_message(self, *args):
                pass

            def do_GET(self):
                owner.connections += 1
                self.send_response(200)
                self.send_header("Content-Type", "video/mp2t")
                self.send_header("Connection", "close")
                self.end_headers()
                chunk = 188 * 40
                per_byte = owner.seconds / owner.speed / len(owner.data)
                t0 = time.monotonic()
                for i in range(0, len(owner.data), chunk):
                    if owner._down.is_set():
                        return
                    due = t0 + i * per_byte
                    if owner._down.wait(max(0.0, due - time.monotonic())):
                        return
                    try:
                        self.wfile.write(owner.data[i:i + chunk])
                        self.wfile.flush()
                    except OSError:
                        return

        self._httpd = ThreadingHTTPServer(("127.0.0.1", self.port), Handler)
        self._httpd.daemon_threads = True
        threading.Thread(target=self._httpd.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True).start()
        return self

    def stop(self) -> None:
        self._down.set()
        if self._httpd is not None:
            self._httpd.shutdown()
            self._httpd.server_close()
            self._httpd = None


class WebhookSink:
    """Collects JSON POST bodies on loopback: `received` rows {path, body, content_type, at} (`at`: monotonic time of
    arrival)."""

    def __init__(self):
        self.received: list[dict] = []
        sink = self

        class Handler(BaseHTTPRequestHandler):
            def log_message(self, *args):
                pass

            def do_POST(self):
                n = int(self.headers.get("Content-Length", 0))
                sink.received.append({"path": self.path, "body": json.loads(self.rfile.read(n)),
                                      "content_type": self.headers.get("Content-Type"), "at": time.monotonic()})
                self.send_response(204)
                self.end_headers()

        self._httpd = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.port = self._httpd.server_address[1]
        self.url = f"http://127.0.0.1:{self.port}/hook"
        threading.Thread(target=self._httpd.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True).start()

    def close(self) -> None:
        self._httpd.shutdown()
        self._httpd.server_close()


def commit_captions(engine, db, stream: str, captions: list[str], first: int = 0, t0: float = 0.0) -> list:
    """Commit captions to the memory as ingest does (no service involved: what a crash leaves behind); clip i spans
    stream time [t0 + 2i, t0 + 2i + 2). -> the ClipRecords."""
    from rlivs.runtime.memory import ClipRecord, Memory

    out = []
    with Memory(db, model_fingerprint=engine.model_fingerprint) as mem:
        mem.open_stream(stream, "test", engine.backend.info.model_id, "planted")
        for i, text in enumerate(captions, start=first):
            ids = engine.text.encode(text)
            rec = ClipRecord(stream, i, t0 + 2.0 * i, t0 + 2.0 * i + 2, text, len(ids), engine.vector(ids))
            mem.commit_clip(rec, None)
            out.append(rec)
    return out


@pytest.fixture
def stored(tmp_path, tiny_dir):
    """A memory with one stored stream ("door", two captions) and `serve(config=None, **server_kw)` to start a service
    on it (no sources) on loopback; every started service is stopped afterwards. Import it into a test module to use."""
    from rlivs.edge_app.service.app import Server
    from rlivs.edge_app.service.core import EdgeService, ServiceConfig

    engine = tiny_engine()
    db = tmp_path / "memory.db"
    commit_captions(engine, db, "door", ["a person opens the door", "the cat sleeps"])
    made = []

    def serve(config: ServiceConfig | None = None, **server_kw):
        service = EdgeService(engine, db, config=config or ServiceConfig())
        server = Server(service, port=0, **server_kw).start()
        service.start()
        made.append((server, service))
        return service, server

    yield {"engine": engine, "db": db, "serve": serve}
    for server, service in made:
        server.stop()
        service.stop()
