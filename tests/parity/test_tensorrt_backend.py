"""The TensorRT backend. On CPU: how it is chosen and refused, the in-place KV arena arithmetic, and the CUDA
wrapper's errors without a driver. Where TensorRT and a GPU exist (marked gpu; skipped in CI): parity with the
torch reference through real engines. The engines' own build is tested in tests/unit/test_tensorrt_build.py."""

import logging
import shutil

import numpy as np
import pytest

from rlivs.runtime.backends import choose_backend, load_backend
from rlivs.runtime.backends.kv_arena import ALIGN, Arena, ArenaPool, KVLayout
from rlivs.runtime.backends.tensorrt.engine_entry import write_engine_entry
from tests.helpers.configs import small_config
from tests.helpers.parity import step_parity, stream_parity

HALF_B = KVLayout(layers=24, kv_heads=2, head_dim=64, layout="arena", dtype="float16", max_context=8192)  # 0.5B


def test_the_arena_layout_of_the_real_model():
    """One row = every layer's key and value at one position; the 0.5B row keeps TensorRT's 256-byte alignment,
    so new_kv is written straight into the arena at any length."""
    assert HALF_B.row_shape == (24, 2, 2, 64) and HALF_B.row_bytes == 24 * 2 * 2 * 64 * 2 == 12288
    assert HALF_B.row_bytes % ALIGN == 0 and HALF_B.arena_bytes == 8192 * 12288  # 100.7 MB per sequence
    assert HALF_B.offsets(0) == (0, 0) and HALF_B.offsets(3136) == (0, 3136 * 12288)
    HALF_B.check_room(8000, 192)
    with pytest.raises(ValueError, match="needs 8193 cache positions.*holds 8192.*--max-context"):
        HALF_B.check_room(8000, 193)
    KVLayout(24, 2, 64, layout="stacked").check_room(10**6, 1)  # the stacked cache grows; nothing to check


def test_the_arena_pool_reuses_released_buffers_and_checks_alignment():
    made = []

    def alloc(n):
        made.append(bytearray(n))
        return made[-1], 4096 * len(made)

    class Owner:
        pass

    pool = ArenaPool(lambda: Arena.allocate(alloc, 1024, ALIGN), free=lambda a: made.remove(a.handle))
    a, b = Owner(), Owner()
    arena_a, arena_b = pool.acquire(a), pool.acquire(b)
    assert arena_a.ptr != arena_b.ptr and pool.allocated == 2  # two live sequences never share a cache
    ptr = arena_a.ptr
    del a
    c = Owner()
    assert pool.acquire(c).ptr == ptr and pool.allocated == 2  # the released arena went to the next sequence
    del b
    pool.close()  # idle arenas are freed, live ones kept
    assert len(made) == 1 and pool.idle == []
    bad = ArenaPool(lambda: Arena.allocate(lambda n: (None, 4096 + 8), 1024, ALIGN))
    with pytest.raises(ValueError, match="not aligned to 256 bytes"):
        bad.acquire(Owner())


@pytest.fixture()
def bundle_with_engines(bundle, tmp_path):
    """A copy of the tiny bundle whose manifest lists engines (the files are not engines: this only exercises
    the choice of backend, which reads the manifest and what is importable)."""
    out = tmp_path / "b"
    shutil.copytree(bundle, out)
    (out / "vision.engine").write_bytes(b"x")
    (out / "decoder.engine").write_bytes(b"x")
    write_engine_entry(out, {"tensorrt_version": "10.3.0", "gpu_name": "Orin", "compute_capability": "8.7",
                             "precision": "fp16", "bundle_digest": "0", "max_context": 8192, "max_frames": 16,
                             "engines": {"vision": {"file": "vision.engine"}, "decoder": {"file": "decoder.engine"}}})
    return out


def test_auto_runs_a_bundle_with_engines_on_onnxruntime_where_tensorrt_is_missing(bundle_with_engines, caplog):
    pytest.importorskip("onnxruntime")
    if choose_backend("auto", bundle_with_engines)[0] == "tensorrt":
        pytest.skip("tensorrt is importable here")
    name, why = choose_backend("auto", bundle_with_engines)
    assert name == "onnxruntime" and "TensorRT engines but tensorrt is not importable" in why
    with caplog.at_level(logging.INFO, logger="rlivs.backend"):
        be = load_backend(bundle_with_engines)
    assert be.name == "onnxruntime" and "tensorrt is not importable" in caplog.text


def test_tensorrt_is_refused_with_what_to_do(bundle, bundle_with_engines):
    with pytest.raises(ValueError, match="has no TensorRT engines.*--target tensorrt.*rlivs build-engines"):
        choose_backend("tensorrt", bundle)
    try:
        import tensorrt  # noqa: F401
    except ImportError:
        with pytest.raises(ValueError, match="needs TensorRT's Python package.*JetPack"):
            choose_backend("tensorrt", bundle_with_engines)
        from rlivs.runtime.backends.tensorrt import TrtBackend

        with pytest.raises(ValueError, match="needs TensorRT's Python package"):
            TrtBackend(bundle_with_engines)


def test_the_cuda_wrapper_says_there_is_no_gpu():
    pytest.importorskip("cuda.bindings")
    from rlivs.runtime.backends.tensorrt.device import DeviceBuffer, device_count

    try:
        n = device_count()
    except ValueError as e:  # this machine: cuda-python is installed, the driver is not
        assert "no usable NVIDIA driver/GPU" in str(e) and "--backend onnxruntime" in str(e)
        with pytest.raises(ValueError, match=r"cudaMalloc\(1024 bytes\) failed"):
            DeviceBuffer(1024)
    else:
        assert n >= 1
        buf = DeviceBuffer(1 << 20)
        assert buf.ptr % ALIGN == 0
        buf.free()


# --------------------------------------------------------------------------------------------------------------------
# The backend's own code on CPU, TensorRT's runtime API emulated by ONNX Runtime (tests/helpers/trt_emulator.py): proves
# rlivs' side of the boundary (bindings, arena addresses, profiles, copies), not TensorRT.
# --------------------------------------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def trt_fp32_bundle(tmp_path_factory, tiny_dir):
    pytest.importorskip("onnxruntime")
    pytest.importorskip("onnxscript")
    from rlivs.export.bundle import ExportConfig, export_bundle

    out = tmp_path_factory.mktemp("trt-emu") / "tiny"
    export_bundle("tiny", out, ExportConfig(target="tensorrt", embed_dtype="float32", kv_dtype="float32", check=False))
    return out


@pytest.fixture()
def emulated(monkeypatch, trt_fp32_bundle):
    from tests.helpers import trt_emulator

    trt_emulator.install(monkeypatch, trt_fp32_bundle)
    return trt_fp32_bundle


@pytest.mark.parametrize("in_place", [True, False], ids=["new_kv-into-arena", "via-scratch"])
def test_backend_steps_equal_the_reference_with_the_api_emulated(emulated, tiny_dir, monkeypatch, in_place):
    from rlivs.runtime.backends.tensorrt import TrtBackend
    from rlivs.runtime.backends.tensorrt import backend as trt_backend
    from rlivs.runtime.backends.torch import TorchBackend
    from tests.helpers.trt_emulator import HostBuffer, HostStream

    if not in_place:  # tiny's 2048-byte rows miss a 3072-byte alignment: new_kv goes via the scratch buffer
        monkeypatch.setattr(trt_backend, "ALIGN", 3 * 1024)
        monkeypatch.setattr(HostBuffer, "align", 3 * 1024)
    ref, be = TorchBackend(tiny_dir), TrtBackend(emulated)
    assert be.in_place is in_place
    rng = np.random.default_rng(0)
    pixels = rng.uniform(-1, 1, (3, 3, *ref.info.image_size)).astype(np.float32)
    np.testing.assert_allclose(be.encode_frames(pixels), ref.encode_frames(pixels), atol=1e-4, rtol=0)
    x = np.concatenate([ref.embed_tokens(np.arange(3, 9)), rng.standard_normal((50, 64)).astype(np.float32)])
    context = be.decoder.context
    copies = [HostStream.copies]  # before each step

    def profile_and_copies(i, a, b, x, st, s):
        profile, shapes = context.log[-1]
        assert profile == (0 if i == 0 else 1)  # prefill, then the decode profile
        assert shapes["past_kv"] == (s.length - len(x), 8, 2, 2, 16)
        if i:  # a decode step moves the token's embedding and position up, logits and the probe row down: no cache
            assert HostStream.copies - copies[-1] == 64 * 4 + 8 + ref.info.vocab_size * 4 + s.length * 4
        copies.append(HostStream.copies)

    run = step_parity(ref, be, x, steps=4, logits_atol=1e-4, probe_atol=1e-5, on_step=profile_and_copies)
    st, s, x = run.ref_state, run.state, run.next_input
    rows = be.arena_rows(s)  # (K, N, 2, H_kv, Dh): written in place by the steps
    for layer in range(8):
        keys = st.cache.layers[layer].keys[0].numpy().transpose(1, 0, 2)  # (K, H_kv, Dh)
        values = st.cache.layers[layer].values[0].numpy().transpose(1, 0, 2)
        np.testing.assert_allclose(rows[:, layer, 0], keys, atol=5e-5, rtol=0)
        np.testing.assert_allclose(rows[:, layer, 1], values, atol=5e-5, rtol=0)
    with pytest.raises(ValueError, match="only"):
        be.step(x, s, probe_rows=2)


def test_a_stream_through_the_emulated_backend_equals_the_reference(emulated, tiny_dir, sample_video, tmp_path, caplog):
    from rlivs.runtime.engine import load_engine

    with caplog.at_level(logging.INFO, logger="rlivs.backend"):
        # auto: the bundle has engines and "tensorrt" imports
        engines = [load_engine(where, config=small_config()) for where in (tiny_dir, emulated)]
        run = stream_parity(*engines, tmp_path, sample_video)
    assert [e.backend.name for e in engines] == ["torch", "tensorrt"]
    assert "the bundle has TensorRT engines and tensorrt is importable" in caplog.text
    assert run.captions_equal
    assert run.kept_equal


def test_the_emulated_backend_refuses_engines_from_another_gpu(emulated, monkeypatch):
    from rlivs.runtime.backends.tensorrt import TrtBackend
    from rlivs.runtime.backends.tensorrt import backend as trt_backend

    monkeypatch.setattr(trt_backend, "current_env", lambda version, device=0: {
        "tensorrt_version": version, "gpu_name": "NVIDIA H100 80GB HBM3", "compute_capability": "9.0"})
    with pytest.raises(ValueError, match="built on GPU 'Emulated Orin'.*rlivs build-engines --bundle"):
        TrtBackend(emulated)


# --------------------------------------------------------------------------------------------------------------------
# With TensorRT and a GPU (never in CI; not yet run anywhere: no session has had TensorRT)
# --------------------------------------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def engines(tmp_path_factory, tiny_dir):
    pytest.importorskip("tensorrt")
    pytest.importorskip("cuda.bindings")
    from rlivs.export.bundle import ExportConfig, export_bundle
    from rlivs.export.tensorrt_build import EngineBuildConfig, build_engines

    built = {}
    for precision, kv in (("fp32", "float32"), ("fp16", "float16")):
        out = tmp_path_factory.mktemp(f"trt-{precision}") / "tiny"
        export_bundle("tiny", out, ExportConfig(target="tensorrt", embed_dtype="float32", kv_dtype=kv))
        build_engines(out, EngineBuildConfig(precision=precision))
        built[precision] = out
    return built


@pytest.mark.gpu
def test_fp32_engines_match_the_reference_step_by_step(engines, tiny_dir):
    from rlivs.runtime.backends.tensorrt import TrtBackend
    from rlivs.runtime.backends.torch import TorchBackend

    ref, be = TorchBackend(tiny_dir), TrtBackend(engines["fp32"])
    rng = np.random.default_rng(0)
    pixels = rng.uniform(-1, 1, (3, 3, *ref.info.image_size)).astype(np.float32)
    np.testing.assert_allclose(be.encode_frames(pixels), ref.encode_frames(pixels), atol=1e-3, rtol=0)
    x = np.concatenate([ref.embed_tokens(np.arange(3, 9)), rng.standard_normal((50, 64)).astype(np.float32)])
    run = step_parity(ref, be, x, steps=4, logits_atol=1e-3, probe_atol=1e-4, argmax=True)
    st, s = run.ref_state, run.state
    rows = be.arena_rows(s)  # the cache, appended in place on the device, equals the reference's
    for layer in range(ref.info.num_layers):
        keys = st.cache.layers[layer].keys[0].numpy().transpose(1, 0, 2)  # (K, H_kv, Dh)
        np.testing.assert_allclose(rows[:, layer, 0], keys, atol=1e-3, rtol=0)


@pytest.mark.gpu
@pytest.mark.parametrize("precision", ["fp32", "fp16"])
def test_engines_keep_captions_and_selection_over_a_stream(engines, precision, tiny_dir, sample_video, tmp_path):
    """fp32: identical captions and selections. fp16: selection overlap >= 0.95 per clip, captions counted."""
    from rlivs.runtime.engine import load_engine
    from rlivs.runtime.config import EngineConfig

    pair = []
    for where, backend in ((tiny_dir, "torch"), (engines[precision], "tensorrt")):
        engine = load_engine(EngineConfig(model=str(where), backend=backend), small_config())
        assert engine.backend.name == backend
        pair.append(engine)
    run = stream_parity(*pair, tmp_path, sample_video)
    ref, same, overlap = run.ref, run.same_captions, run.overlap
    print(f"TensorRT {precision}: {same}/{len(ref)} captions identical, selection overlap {overlap}")
    if precision == "fp32":
        assert same == len(ref) and min(overlap) == 1.0
    else:
        assert min(overlap) >= 0.95 and same >= len(ref) / 2


@pytest.mark.gpu
def test_engines_from_another_build_are_refused(engines):
    import json

    from rlivs.runtime.backends.tensorrt import TrtBackend

    path = engines["fp16"] / "manifest.json"
    saved = path.read_text()
    m = json.loads(saved)
    m["tensorrt_engines"]["compute_capability"] = "5.0"
    try:
        path.write_text(json.dumps(m))
        with pytest.raises(ValueError, match="compute capability 5.0.*rlivs build-engines"):
            TrtBackend(engines["fp16"])
    finally:
        path.write_text(saved)


def test_rlivs_check_runs_the_emulated_tensorrt_backend(emulated):
    """`rlivs check` on a bundle with (emulated) engines: auto picks TensorRT, the check compares it with the same
    bundle's ONNX graphs on ONNX Runtime CPU and passes (engines of 'emulated' precision: the float32 tolerance)."""
    import json

    from tests.helpers.cli import run_cli

    r = run_cli("check", "--bundle", emulated, "--json")
    assert r.exit_code == 0, r.output
    out = json.loads(r.output)
    assert (out["backend"], out["why"]) == ("tensorrt", "the bundle has TensorRT engines and tensorrt is importable")
    assert out["precision"] == "float32" and out["passed"] is True
    c = out["comparison"]
    assert c["captions_identical"] == c["clips"] == 2 and c["selections_identical"]
    assert c["max_score_diff_per_row"] <= 1e-4


def test_fp16_engines_are_checked_against_the_half_precision_tolerance():
    from rlivs.edge_app.commands.check import precision_under_test
    from rlivs.runtime.backends.bundle import Manifest

    assert precision_under_test(Manifest(tensorrt_engines={"precision": "fp16"}), "tensorrt") == "float16"
    assert precision_under_test(Manifest(tensorrt_engines={"precision": "fp32"}), "tensorrt") == "float32"
    assert precision_under_test(Manifest(tensorrt_engines={"precision": "fp16"}), "onnxruntime") == "float32"
