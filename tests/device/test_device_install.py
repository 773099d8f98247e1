"""The device install does what a Jetson user needs, from a bundle the main venv exported: doctor, check, ingest,
ask with a time expression, serve, memory export; captions and kept tokens identical to the main venv's run; a
bundle this ONNX Runtime cannot load refused before anything loads. Runs only in the device venv (.ci/device-tier)."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
from importlib import metadata
from pathlib import Path

import pytest

from tests.device.conftest import INGEST_ARGS, STREAM
from tests.helpers.serve_helpers import free_port, healthy, wait_for

pytestmark = pytest.mark.device
RLIVS = str(Path(sys.executable).with_name("rlivs"))  # the venv's console script, as a user runs it


def rlivs(*args, cwd: Path, timeout: float = 300, env: dict | None = None) -> subprocess.CompletedProcess:
    """`rlivs ARGS` from the device venv, in `cwd` (not the checkout: the installed package runs, not the source)."""
    return subprocess.run([RLIVS, *map(str, args)], cwd=cwd, capture_output=True, text=True, timeout=timeout,
                          env={**os.environ, "COLUMNS": "240", **(env or {})})


def words(r: subprocess.CompletedProcess) -> str:
    return " ".join((r.stdout + r.stderr).split())


def release(v: str) -> tuple[int, ...]:
    return tuple(int(x) for x in v.split("+")[0].split(".")[:3] if x.isdigit())


ORT = metadata.version("onnxruntime")


def test_the_venv_is_what_a_jetson_has():
    import numpy

    assert sys.version_info[:2] == tuple(int(x) for x in os.environ.get("RLIVS_DEVICE_PYTHON", "3.10").split("."))
    assert numpy.__version__.startswith("1.26."), numpy.__version__  # NVIDIA's Jetson onnxruntime-gpu needs numpy < 2
    assert ORT == os.environ.get("RLIVS_DEVICE_ORT", ORT)
    for module in ("torch", "transformers", "onnxscript", "torchvision"):
        r = subprocess.run([sys.executable, "-c", f"import {module}"], capture_output=True, text=True)
        assert r.returncode != 0 and "No module named" in r.stderr, f"{module} imports in the device venv"


@pytest.fixture(scope="module")
def ingested(device_dir, tmp_path_factory):
    """The device venv's ingest of the sample video, with the main venv's reference settings."""
    work = tmp_path_factory.mktemp("ingest")
    r = rlivs("ingest", device_dir / "sample.mp4", "--db", work / "memory.db", "--bundle", device_dir / "bundle",
              *INGEST_ARGS, cwd=work)
    assert r.returncode == 0, r.stdout + r.stderr
    return work / "memory.db"


def test_doctor_and_check_pass_on_the_default_bundle(device_dir, tmp_path):
    r = rlivs("doctor", "--bundle", device_dir / "bundle", "--json", cwd=tmp_path)
    assert r.returncode == 0, r.stdout + r.stderr
    report = json.loads(r.stdout)
    assert report["backend"]["runs"] and report["backend"]["name"] == "onnxruntime"
    assert report["backend"]["onnxruntime_needed"] == "1.20"  # the default bundle loads on every Jetson build
    assert report["packages"]["torch"] is None and report["packages"]["numpy"].startswith("1.26.")
    r = rlivs("check", "--bundle", device_dir / "bundle", "--json", cwd=tmp_path)
    assert r.returncode == 0, r.stdout + r.stderr
    assert json.loads(r.stdout)["passed"]


def test_a_bundle_this_runtime_cannot_load_is_refused_before_loading(device_dir, tmp_path):
    bundle = device_dir / "bundle23"
    doctor = rlivs("doctor", "--bundle", bundle, "--json", cwd=tmp_path)
    if release(ORT) >= (1, 23):  # the newest Jetson build loads opset 23
        assert doctor.returncode == 0 and json.loads(doctor.stdout)["backend"]["runs"], doctor.stdout + doctor.stderr
        return
    assert doctor.returncode == 1, doctor.stdout + doctor.stderr
    error = json.loads(doctor.stdout)["backend"]["error"]
    assert f"needs onnxruntime >= 1.23 (its graphs are ONNX opset 23); you have onnxruntime {ORT}" in error
    assert "re-export it with rlivs export --opset" in error
    for cmd in (("check", "--bundle", bundle),
                ("ingest", device_dir / "sample.mp4", "--db", tmp_path / "m.db", "--bundle", bundle)):
        r = rlivs(*cmd, cwd=tmp_path)
        assert r.returncode == 2, words(r)  # refused as bad input, not an internal error
        assert "needs onnxruntime >= 1.23" in words(r) and "ONNXRuntimeError" not in words(r)
    assert not (tmp_path / "m.db").exists()  # nothing was written


def test_ingest_matches_the_main_venv(device_dir, ingested):
    from rlivs.runtime.memory import Memory

    with Memory(device_dir / "reference.db", readonly=True) as ref, Memory(ingested, readonly=True) as got:
        want, have = ref.clips(STREAM), got.clips(STREAM)
        assert len(want) >= 2 and [c.index for c in have] == [c.index for c in want]
        for a, b in zip(want, have):
            assert b.caption == a.caption, f"clip {a.index}: the device venv's caption differs"
            ka, kb = ref.clip(STREAM, a.index).kept, got.clip(STREAM, a.index).kept
            assert ka is not None and kb is not None and ka.tolist() == kb.tolist(), f"clip {a.index}: kept tokens"
            assert (b.t_start, b.t_end, b.wall_start, b.wall_end) == (a.t_start, a.t_end, a.wall_start, a.wall_end)


def test_memory_export_is_the_main_venvs(device_dir, ingested, tmp_path):
    out = tmp_path / "captions.jsonl"
    r = rlivs("memory", "export", out, "--db", ingested, cwd=tmp_path)
    assert r.returncode == 0, words(r)
    assert out.read_text().splitlines() == (device_dir / "reference.jsonl").read_text().splitlines()


def test_ask_with_a_time_expression(device_dir, ingested, tmp_path):
    r = rlivs("ask", "what moved after 3:00:20 pm UTC on December 1, 2026?", "--db", ingested,
              "--bundle", device_dir / "bundle", "--from", "2026-12-01T15:00:20+00:00", "--json", cwd=tmp_path)
    assert r.returncode == 0, words(r)
    a = json.loads(r.stdout.strip().splitlines()[-1])
    assert a["answer"] and a["window"], a
    assert a["captions"] and all(c["t_end"] > 20 for c in a["captions"])  # only clips that end inside the window


def test_serve_answers_a_request(device_dir, tmp_path):
    port, token = free_port(), "device-tier-token-0123456789"
    url, headers = f"http://127.0.0.1:{port}", {"Authorization": f"Bearer {token}"}
    proc = subprocess.Popen([RLIVS, "serve", "--source", f"{STREAM}={device_dir / 'sample.mp4'}", "--db",
                             tmp_path / "serve.db", "--bundle", device_dir / "bundle", "--port", str(port),
                             "--replay-speed", "4"], cwd=tmp_path, stdout=subprocess.PIPE,
                            stderr=subprocess.STDOUT, text=True, env={**os.environ, "RLIVS_TOKEN": token})
    try:
        import httpx

        wait_for(lambda: proc.poll() is not None or healthy(url), 120, "rlivs serve to listen")
        assert proc.poll() is None, proc.stdout.read()
        caps = lambda: httpx.get(url + "/v1/captions", params={"stream": STREAM}, headers=headers).json()["captions"]
        wait_for(lambda: len(caps()) >= 1, 120, "a caption from the service")
        r = httpx.post(url + "/v1/ask", json={"question": "what moved?"}, headers=headers, timeout=60)
        assert r.status_code == 200 and r.json()["captions"], r.text
    finally:
        proc.send_signal(signal.SIGINT)
        out, _ = proc.communicate(timeout=60)
    assert proc.returncode == 0, out
