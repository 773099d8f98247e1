"""The device tier: run inside the device venv that deploy/jetson/install.sh made (Python 3.10, numpy 1.26, onnxruntime
1.20 or the newest, no torch), on files the main venv made (.ci/device-tier writes them into RLIVS_DEVICE_DIR):

  bundle/        rlivs export --model tiny (the defaults)
  bundle23/      rlivs export --model tiny --opset 23 (needs onnxruntime >= 1.23)
  sample.mp4     the sample video
  reference.db   the main venv's `rlivs ingest sample.mp4 --bundle bundle/` (INGEST_ARGS)
  reference.jsonl  its `rlivs memory export`

Run:  RLIVS_DEVICE_DIR=DIR RLIVS_DEVICE_ORT=1.20.1 python -m pytest -q -m device tests/device
"""

from __future__ import annotations

import os
from pathlib import Path

import pytest

STREAM = "cam"
START = "2026-12-01T15:00:00+00:00"  # the sample video's clock: 15:00-15:00:48 UTC
INGEST_ARGS = ("--stream", STREAM, "--start-time", START)  # the main venv's reference ingest used the same


@pytest.fixture(scope="session")
def device_dir() -> Path:
    d = os.environ.get("RLIVS_DEVICE_DIR")
    if not d or not (Path(d) / "bundle" / "manifest.json").is_file():
        pytest.fail("the device tier needs RLIVS_DEVICE_DIR with the main venv's bundle, video and reference run: "
                    "run it through .ci/device-tier, which makes them")
    return Path(d)
