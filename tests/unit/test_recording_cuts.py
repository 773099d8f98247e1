"""MCAP recordings cut off anywhere (runtime/sources/bag.py): the cut point is fuzzed over every record boundary and
several offsets inside every record (the magic, the opcode and length, the body, the last byte). Each cut either is
refused with a UserError (exactly when no message is complete before the cut) or yields every message before the
cut, frame by frame, and then says it ended early (`truncated`); nothing else is ever raised. The known answer comes
from the file's own records (`tests.helpers.recordings.messages_before`), not from the reader under test.

The same cuts through `rlivs ingest` are in tests/app/test_recordings_cli.py (a handful) and tests/slow (all)."""

import pytest

pytest.importorskip("mcap")
pytest.importorskip("mcap_protobuf")

from rlivs.runtime.errors import UserError  # noqa: E402
from rlivs.runtime.sources.bag import BagSource, list_image_topics  # noqa: E402
from tests.helpers.recordings import (  # noqa: E402
    cut_points, mcap_records, messages_before, value, write_foxglove_mcap,
)

RATE = 4.0
N = 8


@pytest.fixture(scope="module", params=[
    dict(encoding="protobuf", chunked=True, summary="full"),  # small chunks, each with its message index
    dict(encoding="json", chunked=False, summary="none"),  # messages as records, no summary: read as written
])
def recording(request, tmp_path_factory):
    path = write_foxglove_mcap(tmp_path_factory.mktemp("cuts") / "rec.mcap", n=N, rate=RATE, chunk_size=900,
                               **request.param)
    return path, path.read_bytes()


def test_every_cut_reads_what_is_before_it_and_says_where_it_ends(recording, tmp_path):
    path, data = recording
    cuts = cut_points(data)
    assert len(cuts) > 40 and messages_before(data, len(data)) == N  # the fuzz covers the file; the answer is whole
    seen = set()
    for c in cuts:
        cut = tmp_path / f"cut-{c}.mcap"
        cut.write_bytes(data[:c])
        m = messages_before(data, c)
        try:
            src = BagSource(cut, fps=RATE)  # its only image topic; every message is a sample target
        except UserError as e:
            assert m == 0, f"cut at {c}: refused although {m} messages are complete before it: {e}"
            assert "cut" in str(e) or "truncated" in str(e) or "MCAP" in str(e), f"cut at {c}: {e}"
            with pytest.raises(UserError):
                BagSource(cut, "/cam/compressed", fps=RATE)
            seen.add("refused")
            continue
        frames = list(src)
        assert [round(f.t * RATE) for f in frames] == list(range(m)), f"cut at {c}"
        assert [round(float(f.image.mean())) for f in frames[-1:]] == pytest.approx([value(m - 1)], abs=3)
        if c == len(data):
            assert src.truncated is None
        else:
            assert src.truncated and "truncated" in src.truncated, f"cut at {c}: {src.truncated}"
            assert f"past {(m - 1) / RATE:.1f} s" in src.truncated, src.truncated
        [t] = list_image_topics(cut)
        assert t.count == m, f"cut at {c}"
        seen.add("partial" if 0 < m < N else "whole")
    assert seen == {"refused", "partial", "whole"}  # the cuts reach every outcome


def test_a_damaged_chunk_in_a_complete_file_ends_the_pass_there(tmp_path):
    """A complete file (its summary intact) with garbage inside its third chunk: the two chunks before are read
    through the index, then the pass ends saying why."""
    path = write_foxglove_mcap(tmp_path / "rec.mcap", n=N, rate=RATE, chunk_size=900)
    data = bytearray(path.read_bytes())
    chunks = [(s, e, n) for s, e, op, n in mcap_records(bytes(data)) if op == 0x06]
    assert len(chunks) >= 3
    s, e, _ = chunks[2]
    data[s + 9 + 8 * 4:e] = b"\xff" * (e - s - 9 - 8 * 4)  # past the chunk's times and sizes: its records
    path.write_bytes(bytes(data))
    before = sum(n for _, _, n in chunks[:2])
    src = BagSource(path, fps=RATE)
    frames = list(src)
    assert [round(f.t * RATE) for f in frames] == list(range(before))
    assert src.truncated and "damaged" in src.truncated


@pytest.mark.parametrize("summary,chunked", [("full", True), ("no-statistics", True), ("none", False)])
def test_damaged_bytes_anywhere_are_never_an_internal_error(summary, chunked, tmp_path):
    """Garbage written over a few spots of a recording (seeded): listing and reading either work (skipping or
    stopping at what is damaged, as the pass says) or are refused with a UserError; no exception of the reader
    libraries gets through (struct.error, a huge length read as a MemoryError, Pillow's decompression bomb ...)."""
    import numpy as np

    data = write_foxglove_mcap(tmp_path / "rec.mcap", n=N, rate=RATE, chunk_size=900, summary=summary,
                               chunked=chunked).read_bytes()
    rng = np.random.default_rng(7)
    outcomes = set()
    for i in range(40):
        damaged = bytearray(data)
        for _ in range(2):
            at = int(rng.integers(8, len(data)))
            damaged[at:at + 4] = rng.integers(0, 256, 4, dtype=np.uint8).tobytes()
        path = tmp_path / f"bad-{i}.mcap"
        path.write_bytes(bytes(damaged))
        try:
            list_image_topics(path)
            src = BagSource(path, fps=RATE)
            frames = list(src)
        except UserError:
            outcomes.add("refused")
            continue
        assert all(f.image.ndim == 3 and f.image.shape[2] == 3 for f in frames)
        assert [f.t for f in frames] == sorted(f.t for f in frames)  # a damaged stamp never runs time backwards
        outcomes.add("read")
    assert outcomes == {"refused", "read"}
