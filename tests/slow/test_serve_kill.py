"""kill -9 of a real `rlivs serve` while it ingests and matches a watch that fires on every caption: after a restart on
the same memory, every committed clip is matched exactly once and every match's webhook is delivered (at least
once: a delivery POSTed just before the kill is sent again). Slow: three processes load the tiny model."""

import os
import signal
import sqlite3
import subprocess
import sys

import httpx

from rlivs.edge_app.sample_video import make_sample_video
from rlivs.runtime.memory import Memory
from tests.helpers.serve_helpers import WebhookSink, free_port, wait_for

FLAGS = ["--model", "tiny", "--fps", "2", "--frames-per-clip", "4", "--max-caption-tokens", "8",
         "--max-answer-tokens", "8", "--webhook-allow", "127.0.0.1"]


def _serve(db, port, *args):
    cmd = [sys.executable, "-m", "rlivs.edge_app.cli", "serve", "--db", str(db), "--port", str(port), *FLAGS, *args]
    return subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, text=True,
                            env={k: v for k, v in os.environ.items() if k != "RLIVS_TOKEN"})


def _up(url):
    try:
        return httpx.get(url + "/healthz", timeout=2).status_code == 200
    except httpx.HTTPError:
        return False


def _clips(db) -> int:
    try:
        with Memory(db, readonly=True) as mem:
            return len(mem.clips("cam"))
    except Exception:  # noqa: BLE001 - not created yet
        return 0


def test_kill_9_mid_stream_loses_no_match_and_repeats_none(tmp_path, tiny_dir):
    video = make_sample_video(tmp_path / "cam.mp4", seconds=120.0)  # 60 clips of 4 frames at 2 fps
    db, port = tmp_path / "memory.db", free_port()
    url = f"http://127.0.0.1:{port}"
    sink = WebhookSink()
    procs = []
    try:
        # 1. a service without sources: the watch exists before the stream does, so it wants every clip
        p = _serve(db, port)
        procs.append(p)
        wait_for(lambda: p.poll() is not None or _up(url), 90, "rlivs serve to listen")
        r = httpx.post(url + "/v1/watches", json={"query": "anything", "threshold": -1.0, "webhook": sink.url})
        assert r.status_code == 201, r.text
        p.send_signal(signal.SIGINT)
        assert p.wait(30) == 0

        # 2. ingest at full speed, killed with SIGKILL mid-stream
        p = _serve(db, port, "--source", f"cam={video}", "--no-replay")
        procs.append(p)
        wait_for(lambda: p.poll() is not None or _clips(db) >= 12, 120, "a dozen committed clips")
        p.send_signal(signal.SIGKILL)
        p.wait(10)
        killed_at = _clips(db)
        assert 12 <= killed_at < 60, killed_at

        # 3. restart on the same memory: ingest resumes, the watch catches up, due deliveries go out
        p = _serve(db, port, "--source", f"cam={video}", "--no-replay")
        procs.append(p)
        wait_for(lambda: p.poll() is not None or _up(url), 90, "rlivs serve to listen again")
        wait_for(lambda: next(s for s in httpx.get(url + "/v1/streams").json()["streams"]
                              if s["name"] == "cam")["state"] == "finished", 180, "the file to be ingested")
        n = _clips(db)
        assert n == 60
        wait_for(lambda: {x["body"]["clip"] for x in sink.received} == set(range(n)), 60, "every clip's webhook")
        p.send_signal(signal.SIGINT)
        assert p.wait(30) == 0
    finally:
        for q in procs:
            if q.poll() is None:
                q.kill()
                q.wait(10)
        sink.close()
    with sqlite3.connect(tmp_path / "memory.edge.db") as edge:
        matched = [c for (c,) in edge.execute("SELECT clip FROM matches WHERE watch_id = 1 ORDER BY clip")]
        left = edge.execute("SELECT COUNT(*) FROM deliveries").fetchone()[0]
    assert matched == list(range(n))  # every clip, once
    assert left == 0
    posts = [x["body"]["clip"] for x in sink.received]
    assert len(posts) - len(set(posts)) <= 4  # at most the deliveries in flight at the kill are sent twice
