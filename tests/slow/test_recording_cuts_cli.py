"""Cuts of a small MCAP recording through `rlivs ingest` with the tiny model (the default tier runs a handful:
tests/app/test_recordings_cli.py; every cut through the reader: tests/unit/test_recording_cuts.py): each ends with
exit 0, 2 or 3, never an internal error, and commits every frame before the cut.

The CLI sees what the reader sees, so one cut per class is run: (messages complete before the cut, the record the
cut falls in or ends, inside it or at its end) — 42 classes of the 185 cuts, every record type and every message
count. RLIVS_ALL_CUTS=1 runs all 185 (about 10 minutes on 2 cores)."""

import os

import pytest

pytest.importorskip("mcap_protobuf")

from tests.helpers.recordings import (  # noqa: E402
    check_cut_ingest, cut_points, mcap_records, messages_before, write_foxglove_mcap,
)

INGEST = ["--model", "tiny", "--fps", "2", "--frames-per-clip", "4", "--max-caption-tokens", "6"]


def cut_class(data: bytes, records: list, c: int) -> tuple:
    """(messages before the cut, opcode of the record the cut is inside or ends, 'inside' | 'end' | 'edge')."""
    for start, end, op, _ in records:
        if start < c < end:
            return messages_before(data, c), op, "inside"
        if c == end:
            return messages_before(data, c), op, "end"
    return messages_before(data, c), None, "edge"


def test_every_class_of_cut_through_rlivs_ingest(tmp_path, tiny_dir):
    data = write_foxglove_mcap(tmp_path / "rec.mcap", n=10, rate=2.0, chunk_size=900).read_bytes()
    records = list(mcap_records(data))
    cuts = cut_points(data)
    if os.environ.get("RLIVS_ALL_CUTS") != "1":
        chosen: dict[tuple, int] = {}
        for c in cuts:
            chosen.setdefault(cut_class(data, records, c), c)
        cuts = sorted({*chosen.values(), len(data)})  # and the whole file
        assert len(cuts) >= 30  # every record type and message count
    for c in cuts:
        check_cut_ingest(data, c, tmp_path, INGEST)
