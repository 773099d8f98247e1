"""The TensorRT versions the builder and the backend accept (runtime/backends/tensorrt/compat.py).

Every TensorRT API rlivs calls exists in TensorRT 10.3 (JetPack 6.1/6.2; the table is in docs/jetson.md). These
tests run rlivs' own code against the emulated `tensorrt` module (tests/helpers/trt_emulator.py) given another
version or stripped of an API: TensorRT 8.x is refused with the version needed, TensorRT 11's missing weak typing
refuses an fp16 build, TensorRT 10.0's missing device_memory_size_v2 falls back. No real TensorRT runs here.
"""

import json
import sys
from types import SimpleNamespace

import pytest

from rlivs.runtime.backends.tensorrt import compat
from rlivs.runtime.errors import UserError
from tests.helpers import trt_emulator
from tests.unit.test_tensorrt_build import cli, fake_bundle, with_engines


def fake_tensorrt(monkeypatch, version: str, **attrs):
    """The emulated tensorrt module as `import tensorrt` sees it, claiming `version`, with `attrs` set on it."""
    m = trt_emulator._module()
    m.__version__ = version
    for k, v in attrs.items():
        setattr(m, k, v)
    monkeypatch.setitem(sys.modules, "tensorrt", m)
    return m


def weak_typing_10x():
    """BuilderFlag and ILayer as TensorRT 10.x binds them (the members compat checks for)."""
    flags = trt_emulator._Enum(FP16="FP16", TF32="TF32", OBEY_PRECISION_CONSTRAINTS="OBEY_PRECISION_CONSTRAINTS")
    return dict(BuilderFlag=flags, ILayer=type("ILayer", (), {"precision": None, "set_output_type": lambda *a: None}))


def test_versions_read_from_tensorrt_version_strings():
    v = lambda s: compat.tensorrt_version(SimpleNamespace(__version__=s))  # noqa: E731
    assert v("10.3.0") == v("10.3.0.30") == (10, 3) and v("8.6.2.3") == (8, 6)
    assert v(trt_emulator.VERSION) == (10, 3)  # "emulated-10.3"
    assert v("") is None and compat.tensorrt_version(SimpleNamespace()) is None


@pytest.mark.parametrize("version", ["10.3.0", "10.0.1", "11.1.0", trt_emulator.VERSION, "unknown"])
def test_the_backend_imports_tensorrt_10_and_later(monkeypatch, version):
    from rlivs.runtime.backends.tensorrt import import_tensorrt

    trt = fake_tensorrt(monkeypatch, version)
    assert import_tensorrt() is trt


@pytest.mark.parametrize("version", ["8.6.2", "8.5.2.2"])
def test_the_backend_refuses_tensorrt_8_naming_the_version_needed(monkeypatch, tmp_path, version):
    from rlivs.runtime.backends.tensorrt import TrtBackend

    fake_tensorrt(monkeypatch, version)
    with pytest.raises(UserError) as e:
        TrtBackend(tmp_path)  # refused on import, before the bundle is read
    msg = str(e.value)
    assert f"this is TensorRT {version}" in msg and "needs TensorRT 10.0 or newer" in msg
    assert "JetPack 6.1/6.2 ship TensorRT 10.3" in msg and "use --backend onnxruntime" in msg


def test_build_engines_refuses_tensorrt_8_and_leaves_the_bundle_alone(monkeypatch, tmp_path):
    manifest = fake_bundle(tmp_path / "trt")
    with_engines(tmp_path / "trt", manifest)
    before = (tmp_path / "trt" / "manifest.json").read_text()
    fake_tensorrt(monkeypatch, "8.6.2", **weak_typing_10x())
    code, out = cli("build-engines", "--bundle", tmp_path / "trt")
    assert code == 2, out
    assert "rlivs build-engines needs TensorRT 10.0 or newer" in out and "this is TensorRT 8.6.2" in out
    assert "Upgrade to JetPack 6" in out and "--backend onnxruntime" in out
    assert (tmp_path / "trt" / "manifest.json").read_text() == before  # the old engine entry is kept


def test_an_fp16_build_is_refused_where_tensorrt_has_no_weak_typing(monkeypatch, tmp_path):
    """TensorRT 11 removed BuilderFlag.FP16 / OBEY_PRECISION_CONSTRAINTS and ILayer.precision / set_output_type."""
    manifest = fake_bundle(tmp_path / "trt")
    with_engines(tmp_path / "trt", manifest)
    before = (tmp_path / "trt" / "manifest.json").read_text()
    fake_tensorrt(monkeypatch, "11.1.0", BuilderFlag=trt_emulator._Enum(TF32="TF32"))
    code, out = cli("build-engines", "--bundle", tmp_path / "trt")  # --precision fp16 is the default
    assert code == 2, out
    assert ("TensorRT 11.1.0 has no BuilderFlag.FP16, BuilderFlag.OBEY_PRECISION_CONSTRAINTS, ILayer.precision, "
            "ILayer.set_output_type") in out
    assert "Build with --precision fp32, or with TensorRT 10.x (JetPack 6.1/6.2 ship 10.3)" in out
    assert json.loads((tmp_path / "trt" / "manifest.json").read_text()) == json.loads(before)


def test_tensorrt_10_has_the_weak_typing_the_fp16_build_uses(monkeypatch):
    trt = fake_tensorrt(monkeypatch, "10.3.0", **weak_typing_10x())
    assert compat.missing_weak_typing(trt) == []
    compat.require_fp16_build(trt)  # no refusal
    del trt.ILayer.set_output_type
    assert compat.missing_weak_typing(trt) == ["ILayer.set_output_type"]


def test_device_memory_falls_back_to_the_10_0_property():
    """device_memory_size_v2 came in TensorRT 10.1; 10.0 has only device_memory_size (removed in 11)."""
    assert compat.device_memory_size(SimpleNamespace(device_memory_size_v2=4096, device_memory_size=1)) == 4096
    assert compat.device_memory_size(SimpleNamespace(device_memory_size=2048)) == 2048  # TensorRT 10.0
    assert compat.device_memory_size(SimpleNamespace(device_memory_size_v2=8192)) == 8192  # TensorRT 11


def test_the_fp16_platform_check_is_skipped_where_tensorrt_dropped_it():
    """Builder.platform_has_fast_fp16: deprecated in 10.5, removed in 11; the builder warns only on False."""
    assert compat.platform_has_fast_fp16(SimpleNamespace(platform_has_fast_fp16=False)) is False
    assert compat.platform_has_fast_fp16(SimpleNamespace(platform_has_fast_fp16=True)) is True
    assert compat.platform_has_fast_fp16(SimpleNamespace()) is None
