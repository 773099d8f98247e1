"""`rlivs serve` as a user runs it: a subprocess with the tiny model on a loopback port, stopped with Ctrl-C, then
started again on the same memory (the live stream resumes: clip numbers and stream time continue)."""

import os
import signal
import subprocess
import sys

import httpx
import pytest

from tests.helpers.cli import run_cli
from tests.helpers.serve_helpers import free_port, healthy, wait_for

FLAGS = ["--model", "tiny", "--fps", "2", "--frames-per-clip", "4", "--max-caption-tokens", "8",
         "--max-answer-tokens", "8", "--replay-speed", "4"]


@pytest.mark.parametrize("args, message", [
    (["--host", "0.0.0.0"], "refusing to bind 0.0.0.0 without a token"),
    (["--host", "10.1.2.3", "--token", ""], "refusing to bind 10.1.2.3 without a token"),
    (["--token", "  "], "--token is empty"),
    (["--port", "70000"], "--port 70000 is not a TCP port"),
    (["--source", "a/cam.mp4", "--source", "b/cam.mp4"], "would both be stream 'cam'"),
    (["--source", "ftp://host/x.mp4"], "scheme 'ftp'"),
    (["--source", "missing.mp4", "--no-replay"], "missing.mp4 does not exist"),
    (["--source", "cam=/tmp", "--no-replay"], "/tmp is a directory"),
    (["--token", "t\u00f6k\u00e9n-0123456789abcdef"], "--token holds non-ASCII characters"),
    (["--webhook-allow", "not-a-network"], "--webhook-allow 'not-a-network' is not an IP address or network"),
    (["--ingest-share", "1"], "ingest_share must be in [0, 1)"),
    (["--batch", "0"], "--batch must be an integer in 1..256"),
    (["--max-connections", "1"], "max_connections must be >= 2"),
])
def test_serve_refuses_bad_settings_before_loading_anything(args, message, monkeypatch):
    monkeypatch.delenv("RLIVS_TOKEN", raising=False)
    r = run_cli("serve", *args, catch_exceptions=True)
    assert r.exit_code == 2, r.output
    assert message in " ".join(r.output.split())


def _serve(video, db, port, env):
    cmd = [sys.executable, "-m", "rlivs.edge_app.cli", "serve", "--source", f"cam={video}", "--db", str(db),
           "--port", str(port), *FLAGS]
    return subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, env=env)


def _stop(proc) -> str:
    proc.send_signal(signal.SIGINT)
    try:
        out, _ = proc.communicate(timeout=20)
    except subprocess.TimeoutExpired:
        proc.kill()
        out, _ = proc.communicate()
        raise AssertionError("rlivs serve did not stop within 20 s of Ctrl-C:\n" + out)
    return out


def test_rlivs_serve_end_to_end_and_resume(sample_video, tmp_path, tiny_dir):
    env = {**os.environ, "RLIVS_TOKEN": "cli-test-token-0123456789"}  # the token from the environment
    headers = {"Authorization": "Bearer cli-test-token-0123456789"}
    db, port = tmp_path / "memory.db", free_port()
    url = f"http://127.0.0.1:{port}"
    proc = _serve(sample_video, db, port, env)
    try:
        wait_for(lambda: proc.poll() is not None or healthy(url), 90, "rlivs serve to listen")
        assert proc.poll() is None, proc.stdout.read()
        assert httpx.get(url + "/v1/streams").status_code == 401  # RLIVS_TOKEN is in force
        caps = lambda: httpx.get(url + "/v1/captions", params={"stream": "cam"}, headers=headers).json()["captions"]
        wait_for(lambda: len(caps()) >= 2, 60, "two captions")
        r = httpx.post(url + "/v1/ask", json={"question": "what moved?"}, headers=headers, timeout=30)
        assert r.status_code == 200 and r.json()["captions"]
        assert "<title>rlivs</title>" in httpx.get(url + "/").text
    finally:
        out = _stop(proc)
    assert proc.returncode == 0, out
    assert f"open http://127.0.0.1:{port}/" in out and "stopping ingest" in out
    assert (tmp_path / "memory.edge.db").exists()

    from rlivs.runtime.memory import Memory

    with Memory(db, readonly=True) as mem:
        first = mem.clips("cam")
    assert first and [c.index for c in first] == list(range(len(first)))

    proc = _serve(sample_video, db, port, env)  # the same memory again: the stream resumes where it stopped
    try:
        wait_for(lambda: proc.poll() is not None or healthy(url), 90, "rlivs serve to listen again")
        n = len(first)
        wait_for(lambda: len(httpx.get(url + "/v1/captions", params={"stream": "cam", "offset": n},
                                       headers=headers).json()["captions"]) >= 1, 60, "a caption after the restart")
    finally:
        out = _stop(proc)
    assert proc.returncode == 0, out
    with Memory(db, readonly=True) as mem:
        clips = mem.clips("cam")
    assert [c.index for c in clips] == list(range(len(clips))) and len(clips) > n
    assert clips[n].t_start >= first[-1].t_end  # the live timeline continues, it does not restart at 0
