"""Every cut of a small MCAP recording through `rlivs ingest` with the tiny model (the default tier runs a handful:
tests/app/test_recordings_cli.py; every cut through the reader: tests/unit/test_recording_cuts.py): each ends with
exit 0, 2 or 3, never an internal error, and commits every frame before the cut."""

import pytest

pytest.importorskip("mcap_protobuf")

from tests.helpers.recordings import check_cut_ingest, cut_points, write_foxglove_mcap  # noqa: E402

INGEST = ["--model", "tiny", "--fps", "2", "--frames-per-clip", "4", "--max-caption-tokens", "6"]


def test_every_cut_through_rlivs_ingest(tmp_path, tiny_dir):
    data = write_foxglove_mcap(tmp_path / "rec.mcap", n=10, rate=2.0, chunk_size=900).read_bytes()
    for c in cut_points(data):
        check_cut_ingest(data, c, tmp_path, INGEST)
