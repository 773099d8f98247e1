"""The web page end to end in headless Chromium (Debian's /usr/bin/chromium through Playwright): it asks for the
token, loads the timeline, answers a question with links to the captions used, adds a watch whose match shows up
live, and shows a caption that is ingested while the page is open. A page from another site whose name resolves to
127.0.0.1 (DNS rebinding) reads nothing and changes nothing.

Set RLIVS_DOCS_SCREENSHOT=docs/edge_app.png to also save the screenshot used in docs/edge_app.md.
"""

import os
import shutil
import time
from pathlib import Path

import pytest

from rlivs.edge_app.sample_video import make_sample_video
from rlivs.edge_app.service.app import Server
from rlivs.edge_app.service.core import EdgeService, ServiceConfig
from rlivs.runtime.memory import ClipRecord, Memory
from rlivs.edge_app.source_specs import parse_sources
from rlivs.runtime.sources.live import SourceConfig
from tests.helpers.serve_helpers import tiny_engine, wait_for

CHROMIUM = os.environ.get("RLIVS_CHROMIUM") or shutil.which("chromium") or "/usr/bin/chromium"
ARGS = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-background-networking",
        "--disable-component-update", "--disable-sync", "--no-first-run",
        "--host-resolver-rules=MAP evil.example 127.0.0.1",  # a rebinding attacker's name, already flipped
        # the server must not rely on the browser's Private Network Access checks (older and other browsers have none)
        "--disable-features=BlockInsecurePrivateNetworkRequests,PrivateNetworkAccessSendPreflights,"
        "PrivateNetworkAccessRespectPreflightResults,LocalNetworkAccessChecks"]
TOKEN = "browser-test-token-0123456789"


@pytest.fixture(scope="module")
def browser():
    if not Path(CHROMIUM).exists():
        pytest.skip(f"no Chromium at {CHROMIUM}: install Debian's (apt-get install chromium; .ci/run does) "
                    f"or set RLIVS_CHROMIUM")
    sync_api = pytest.importorskip("playwright.sync_api", reason="the browser test needs playwright (pip)")
    with sync_api.sync_playwright() as p:
        b = p.chromium.launch(executable_path=CHROMIUM, args=ARGS)
        yield b
        b.close()


def test_page_loads_answers_and_updates_live(browser, tmp_path, tiny_dir):
    video = make_sample_video(tmp_path / "cam.mp4", seconds=40.0)
    engine = tiny_engine()
    service = EdgeService(engine, tmp_path / "memory.db", parse_sources([f"cam={video}"]),
                          ServiceConfig(source=SourceConfig(fps=2.0, replay_speed=1.0)))  # a clip every 2 s
    server = Server(service, port=0, token=TOKEN).start()
    service.start()
    page = browser.new_page(viewport={"width": 1280, "height": 860})
    errors = []
    page.on("pageerror", lambda e: errors.append(str(e)))
    try:
        wait_for(lambda: service.workers[0].clips >= 1, 30, "the first caption")
        page.goto(server.url + "/")
        # the service has a token: the page asks for it, then loads everything with it
        page.wait_for_selector("#token-box", state="visible", timeout=10_000)
        page.fill("#token-input", TOKEN)
        page.click("#token-form button")
        page.wait_for_selector('.caption-card[data-stream="cam"]', timeout=15_000)
        page.wait_for_selector('.caption-card img[src^="/v1/thumbnails/cam/"]', timeout=5_000)
        page.wait_for_function("() => document.getElementById('conn').textContent === 'live'", timeout=10_000)
        seen = max(int(x) for x in page.eval_on_selector_all(".caption-card", "els => els.map(e => e.dataset.clip)"))

        # a question gets an answer, with links to the captions it used
        page.fill("#ask-input", "What moved across the scene?")
        page.click("#ask-button")
        page.wait_for_selector("#answer-sources li a.source-link", timeout=30_000)
        assert page.locator("#answer-text").inner_text().strip() != ""
        page.locator("#answer-sources a.source-link").first.click()
        page.wait_for_selector(".caption-card.hl", timeout=5_000)

        # a watch added on the page; a caption that matches it shows up in the matches, live
        page.fill("#watch-query", "the red box is picked up")
        page.click("#watch-button")
        page.wait_for_selector("#watches .watch", timeout=5_000)
        with Memory(tmp_path / "memory.db", model_fingerprint=engine.model_fingerprint) as mem:
            mem.open_stream("door", "planted", engine.backend.info.model_id, "planted")
            ids = engine.text.encode("someone picks up the red box")
            rec = ClipRecord("door", 0, 4.0, 6.0, "someone picks up the red box", len(ids), engine.vector(ids))
            mem.commit_clip(rec, None)
        assert service.publish_clip(rec)  # the path every ingested caption takes
        page.wait_for_selector("#matches .match >> text=someone picks up the red box", timeout=10_000)
        page.wait_for_selector('.caption-card[data-stream="door"]', timeout=5_000)

        # a caption ingested while the page is open appears without a reload (EventSource)
        page.wait_for_function(
            "n => [...document.querySelectorAll('.caption-card[data-stream=\"cam\"]')]"
            ".some(e => Number(e.dataset.clip) > n)", arg=seen, timeout=20_000)
        assert page.locator("#conn").inner_text() == "live"
        page.wait_for_selector("#health-rows tr >> text=cam", timeout=10_000)
        shot = os.environ.get("RLIVS_DOCS_SCREENSHOT")
        if shot:
            time.sleep(2.5)  # let the highlight animation settle and the health row refresh
            page.evaluate("() => document.querySelectorAll('.caption-card.hl').forEach(e => e.classList.remove('hl'))")
            page.screenshot(path=shot, type="png", full_page=False)
        assert not errors, errors
    finally:
        page.close()
        server.stop()
        service.stop()


def test_dns_rebinding_page_reads_nothing_and_creates_no_watch(browser, tmp_path, tiny_dir):
    """The attacker's page is first served by the attacker (here: Playwright answers the navigation), then its name
    resolves to 127.0.0.1 (Chromium's resolver rule): its same-origin requests reach rlivs with Host evil.example."""
    engine = tiny_engine()
    with Memory(tmp_path / "memory.db", model_fingerprint=engine.model_fingerprint) as mem:
        mem.open_stream("cam", "secret/path/cam.mp4", engine.backend.info.model_id, "planted")
        ids = engine.text.encode("a private caption")
        mem.commit_clip(ClipRecord("cam", 0, 0.0, 2.0, "a private caption", len(ids), engine.vector(ids)), None)
    service = EdgeService(engine, tmp_path / "memory.db")
    server = Server(service, port=0).start()  # the default: loopback, no token
    page = browser.new_page()
    try:
        origin = f"http://evil.example:{server.port}"
        page.route(origin + "/", lambda route: route.fulfill(status=200, content_type="text/html",
                                                               body="<html><body>innocent</body></html>"))
        page.goto(origin + "/")
        got = page.evaluate("""async () => {
            const out = {};
            for (const p of ['/v1/captions', '/v1/streams', '/v1/thumbnails/cam/0.jpg', '/healthz']) {
                const r = await fetch(p); out[p] = [r.status, await r.text()];
            }
            const w = await fetch('/v1/watches', {method: 'POST', headers: {'Content-Type': 'application/json'},
                                  body: JSON.stringify({query: 'x', webhook: 'https://exfil.example/h'})});
            out.watch = [w.status, await w.text()];
            return out;
        }""")
        for path, (status, body) in got.items():
            assert status == 421, (path, status)
            assert "private caption" not in body and "secret/path" not in body
        assert service.watches() == []
        # the same browser at the real address is served
        assert page.goto(server.url + "/healthz").status == 200
    finally:
        page.close()
        server.stop()
        service.stop()


def test_session_cookie_is_http_only_and_unreadable_from_another_port(browser, tmp_path, tiny_dir):
    """The bearer token is exchanged for an HttpOnly, SameSite=Strict session cookie: EventSource and <img> requests
    carry it, no script reads it, neither on the page's origin nor on a page served from another port of the host."""
    from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
    import threading

    class Other(BaseHTTPRequestHandler):
        def log_message(self, *args):
            pass

        def do_GET(self):
            self.send_response(200)
            self.send_header("Content-Type", "text/html")
            self.end_headers()
            self.wfile.write(b"<html><body>another app on this host</body></html>")

    other = ThreadingHTTPServer(("127.0.0.1", 0), Other)
    threading.Thread(target=other.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True).start()
    service = EdgeService(tiny_engine(), tmp_path / "memory.db")
    server = Server(service, port=0, token=TOKEN).start()
    page = browser.new_page()
    try:
        page.goto(server.url + "/healthz")
        got = page.evaluate("""async (token) => {
            const s = await fetch('/v1/session', {method: 'POST', headers: {Authorization: 'Bearer ' + token}});
            const streams = await fetch('/v1/streams');  // no header: the cookie alone
            const post = await fetch('/v1/watches', {method: 'POST', headers: {'Content-Type': 'application/json'},
                                     body: JSON.stringify({query: 'x'})});
            return {session: s.status, streams: streams.status, post: post.status, cookie: document.cookie};
        }""", TOKEN)
        assert got == {"session": 204, "streams": 200, "post": 401, "cookie": ""}, got
        cookies = {c["name"]: c for c in page.context.cookies()}
        assert cookies["rlivs_session"]["httpOnly"] and cookies["rlivs_session"]["sameSite"] == "Strict"
        assert TOKEN not in cookies["rlivs_session"]["value"]
        page.goto(f"http://127.0.0.1:{other.server_address[1]}/")
        assert "rlivs_session" not in page.evaluate("document.cookie")  # cookies ignore ports; HttpOnly does not
    finally:
        page.close()
        server.stop()
        service.stop()
        other.shutdown()
        other.server_close()
