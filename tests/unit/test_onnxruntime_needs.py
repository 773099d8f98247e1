"""Which ONNX Runtime a bundle needs: the measured opset table, version parsing, and the message (pure, no ORT)."""

import pytest

from rlivs.runtime.backends.bundle import (ORT_DEVICE_OPSET, ORT_FOR_OPSET, Manifest, _release, onnxruntime_for_opset,
                                           onnxruntime_gap)


@pytest.mark.parametrize("opset, version", [(17, "1.20"), (20, "1.20"), (21, "1.20"), (22, "1.21"), (23, "1.23")])
def test_the_measured_table(opset, version):
    assert onnxruntime_for_opset(opset) == version


def test_the_default_export_opset_loads_on_the_oldest_runtime():
    from rlivs.export.bundle import DEFAULT_OPSET, ExportConfig

    assert ExportConfig().opset == ExportConfig(target="tensorrt").opset == DEFAULT_OPSET
    assert onnxruntime_for_opset(DEFAULT_OPSET) == onnxruntime_for_opset(ORT_DEVICE_OPSET) == ORT_FOR_OPSET[0][1]


@pytest.mark.parametrize("text, release", [("1.20.1", (1, 20, 1)), ("1.23.0rc1", (1, 23, 0)),
                                           ("1.22.0+cu126", (1, 22, 0)), ("1.20", (1, 20)), ("2.0.0.dev2026", (2, 0, 0))])
def test_versions_read_as_their_release(text, release):
    assert _release(text) == release


def _manifest(opset, requires=None):
    return Manifest(opset=opset, requires=requires, graphs={"vision": {"opset": opset}, "decoder": {"opset": opset}})


@pytest.mark.parametrize("have, refused", [("1.20.0", True), ("1.22.1", True), ("1.23.0", False), ("1.32.0", False)])
def test_the_gap_says_what_to_do(have, refused):
    gap = onnxruntime_gap("B", _manifest(23), ("onnxruntime-gpu", have))
    if not refused:
        assert gap is None
        return
    assert gap.startswith(f"B needs onnxruntime >= 1.23 (its graphs are ONNX opset 23); you have onnxruntime-gpu {have}")
    assert "re-export it with rlivs export --opset 21" in gap and "onnxruntime-gpu>=1.23" in gap


def test_what_export_recorded_wins_over_the_opset():
    assert _manifest(20, {"onnxruntime": "1.22"}).onnxruntime_needed() == "1.22"
    assert onnxruntime_gap("B", _manifest(20, {"onnxruntime": "1.22"}), ("onnxruntime", "1.21.1")) is not None
    assert onnxruntime_gap("B", _manifest(20), ("onnxruntime", "1.20.0")) is None


def test_the_mmap_threshold_is_fixed_unless_the_environment_chose(monkeypatch):
    """The ORT backend fixes glibc's mmap threshold (freed prefill intermediates go back to the system); a
    MALLOC_MMAP_THRESHOLD_ in the environment is the user's choice and is left alone."""
    import platform

    pytest.importorskip("onnxruntime")
    from rlivs.runtime.backends.onnxruntime.backend import fix_mmap_threshold

    monkeypatch.setenv("MALLOC_MMAP_THRESHOLD_", "131072")
    assert fix_mmap_threshold() is False
    monkeypatch.delenv("MALLOC_MMAP_THRESHOLD_")
    assert fix_mmap_threshold() is (platform.libc_ver()[0] == "glibc")
