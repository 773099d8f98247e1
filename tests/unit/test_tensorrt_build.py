"""The TensorRT engine builder's CPU-checkable parts: optimization profiles from a manifest, the engines' manifest
entry and its refusal rules, the fusion report, the CLI's errors without TensorRT.

TensorRT cannot be installed on our CI machines and none of these tests builds an engine: the fusion report is
checked against engine-inspector JSON written here from the documented field names ("Layers", "Name",
"LayerType", "Metadata", the "[profile N]" suffix), not against a real engine. The one real build is
`test_build_engines_on_a_gpu`, which skips without TensorRT and a CUDA GPU.
"""

import hashlib
import json
import shutil
import sys

import pytest

from rlivs.export.tensorrt_build import (
    TENSORRT_MISSING, EngineBuildConfig, attention_nodes, context_budget, fusion_report, profile_specs,
)
from rlivs.runtime.backends.bundle import REQUIRED, Manifest
from rlivs.runtime.backends.tensorrt.engine_entry import (
    ENTRY, bundle_digest, check_engine_entry, write_engine_entry,
)
from rlivs.runtime.config import FifoConfig, PipelineConfig

TINY = dict(tokens_per_frame=25, hidden=64, layers=8, kv_heads=2, head_dim=16, image=126, vocab=512)
OV05B = dict(tokens_per_frame=196, hidden=896, layers=24, kv_heads=2, head_dim=64, image=384, vocab=152000)
ENV = {"tensorrt_version": "10.3.0", "gpu_name": "Orin", "compute_capability": "8.7"}


def manifest_for(tokens_per_frame, hidden, layers, kv_heads, head_dim, image, vocab, max_context=8192,
                 target="tensorrt", layout="arena"):
    """The fields of a TensorRT-target manifest the builder reads, as rlivs export writes them."""
    kv = ["past", layers, 2, kv_heads, head_dim]
    return Manifest.from_dict({
        "format": "rlivs-bundle", "version": 1, "created": "2025-01-01T00:00:00Z", "model_id": "test",
        "hidden_size": hidden, "vocab_size": vocab, "num_layers": layers, "probe_layers": [1, 3],
        "tokens_per_frame": tokens_per_frame, "image_size": [image, image], "video_token_id": 4, "target": target,
        "opset": 20, "kv_cache": {"layers": layers, "kv_heads": kv_heads, "head_dim": head_dim, "layout": layout,
                                  "dtype": "float16", "max_context": max_context},
        "graphs": {
            "vision": {"file": "vision.onnx", "inputs": [{"name": "pixel_values", "shape": ["frames", 3, image, image],
                                                          "dtype": "float32"}]},
            "decoder": {"file": "decoder.onnx", "inputs": [
                {"name": "inputs_embeds", "shape": [1, "seq", hidden], "dtype": "float32"},
                {"name": "position_ids", "shape": [1, "seq"], "dtype": "int64"},
                {"name": "past_kv", "shape": kv, "dtype": "float16"}]},
        },
    })


# ---------------------------------------------------------------------------------------------------------------------
# Profiles
# ---------------------------------------------------------------------------------------------------------------------


def test_context_budget_from_the_pipeline_defaults():
    """0.5B: 16 frames x 196 tokens a clip, 196 kept per clip, FIFO of 16 clips; + 64 prompt + 1 newline."""
    b = context_budget(196, PipelineConfig())
    assert (b["clip_tokens"], b["kept_per_clip"], b["fifo_tokens"]) == (3136, 196, 3136)
    assert b["prefill_tokens"] == 64 + 3136 + 3136 + 1 == 6337
    assert b["caption_context"] == 6337 + 128 and b["answer_context"] == 2048 + 64 + 256 and b["needed"] == 6465
    t = context_budget(25, PipelineConfig())  # tiny: 16 x 25 a clip, 25 kept per clip
    assert (t["clip_tokens"], t["fifo_tokens"], t["prefill_tokens"], t["caption_context"]) == (400, 400, 865, 993)
    assert t["needed"] == t["answer_context"] == 2368  # the answer path is the longer one for tiny
    assert context_budget(196, PipelineConfig(fifo=FifoConfig(capacity_clips=16, capacity_tokens=1000)))[
        "fifo_tokens"] == 1000
    with pytest.raises(ValueError, match="FIFO is unbounded"):
        context_budget(196, PipelineConfig(fifo=FifoConfig(capacity_clips=None)))


def test_profiles_for_the_05b_shapes():
    s = profile_specs(manifest_for(**OV05B))
    assert s["max_context"] == 8192 and s["max_frames"] == 16 and s["budget"]["fits"]
    prefill, decode = s["decoder"]
    assert (prefill["name"], prefill["index"], decode["name"], decode["index"]) == ("prefill", 0, "decode", 1)
    assert prefill["dims"] == {"seq": [1, 6337, 8192], "past": [0, 0, 8191]}
    assert prefill["shapes"]["inputs_embeds"] == {"min": [1, 1, 896], "opt": [1, 6337, 896], "max": [1, 8192, 896]}
    assert prefill["shapes"]["position_ids"] == {"min": [1, 1], "opt": [1, 6337], "max": [1, 8192]}
    assert prefill["shapes"]["past_kv"] == {"min": [0, 24, 2, 2, 64], "opt": [0, 24, 2, 2, 64],
                                            "max": [8191, 24, 2, 2, 64]}
    assert decode["dims"] == {"seq": [1, 1, 1], "past": [0, 6337 + 64, 8191]}  # opt: halfway through a caption
    assert decode["shapes"]["inputs_embeds"] == {"min": [1, 1, 896], "opt": [1, 1, 896], "max": [1, 1, 896]}
    (vision,) = s["vision"]
    assert vision["shapes"] == {"pixel_values": {"min": [1, 3, 384, 384], "opt": [16, 3, 384, 384],
                                                 "max": [16, 3, 384, 384]}}


def test_profiles_for_the_tiny_shapes_and_overrides():
    s = profile_specs(manifest_for(**TINY, max_context=4096), EngineBuildConfig(max_context=2048, max_frames=32))
    assert s["max_context"] == 2048 and not s["budget"]["fits"]  # the answer path wants 2368
    prefill, decode = s["decoder"]
    assert prefill["dims"] == {"seq": [1, 865, 2048], "past": [0, 0, 2047]}
    assert decode["shapes"]["past_kv"] == {"min": [0, 8, 2, 2, 16], "opt": [929, 8, 2, 2, 16],
                                           "max": [2047, 8, 2, 2, 16]}
    assert s["vision"][0]["shapes"]["pixel_values"]["opt"] == [16, 3, 126, 126]
    assert s["vision"][0]["shapes"]["pixel_values"]["max"] == [32, 3, 126, 126]
    small = profile_specs(manifest_for(**OV05B), EngineBuildConfig(max_context=4096))["decoder"]
    assert small[0]["dims"]["seq"] == [1, 4096, 4096] and small[1]["dims"]["past"] == [0, 4095, 4095]  # capped


def test_profiles_refuse_other_bundles():
    with pytest.raises(ValueError, match="re-export with rlivs export --target tensorrt"):
        profile_specs(manifest_for(**TINY, target="onnxruntime"))
    with pytest.raises(ValueError, match="arena"):
        profile_specs(manifest_for(**TINY, layout="stacked"))
    with pytest.raises(ValueError, match="--max-context 9000"):
        profile_specs(manifest_for(**TINY), EngineBuildConfig(max_context=9000))
    m = manifest_for(**TINY)
    m.graphs["decoder"]["inputs"][2]["shape"][0] = "past_len"
    with pytest.raises(ValueError, match="'past_len'"):
        profile_specs(m)
    for bad in (dict(precision="int8"), dict(max_frames=0), dict(builder_optimization_level=6)):
        with pytest.raises(ValueError):
            EngineBuildConfig(**bad)


# ---------------------------------------------------------------------------------------------------------------------
# The manifest entry: digest, refusal rules, atomic write
# ---------------------------------------------------------------------------------------------------------------------


def fake_bundle(path, **kw):
    """A directory with the files a bundle must have (contents are placeholders) and a TensorRT-target manifest."""
    path.mkdir(parents=True)
    for name in REQUIRED:
        (path / name).write_bytes(f"placeholder {name}".encode())
    (path / "decoder.onnx.data").write_bytes(b"\x01" * 3_000_000)  # external weights: sampled, not read whole
    m = manifest_for(**TINY, **kw).with_(config_sha256=hashlib.sha256((path / "config.json").read_bytes()).hexdigest())
    (path / "manifest.json").write_text(json.dumps(m.to_dict()))
    return m


def with_engines(bundle, manifest, env=ENV):
    """Engines "built" into the bundle: placeholder files and the entry the builder writes."""
    engines = {}
    for key in ("vision", "decoder"):
        (bundle / f"{key}.engine").write_bytes(b"plan" * 10)
        engines[key] = {"file": f"{key}.engine", "bytes": 40, "profiles": [], "io": []}
    entry = {"schema": 1, **env, "precision": "fp16", "bundle_digest": bundle_digest(bundle, manifest),
             "max_context": 8192, "max_frames": 16, "engines": engines}
    return write_engine_entry(bundle, entry)


def test_a_matching_entry_passes_and_survives_a_copy(tmp_path):
    m = fake_bundle(tmp_path / "b")
    m = with_engines(tmp_path / "b", m)
    assert check_engine_entry(tmp_path / "b", m, ENV)["gpu_name"] == "Orin"
    shutil.copytree(tmp_path / "b", tmp_path / "copy")  # a copied bundle keeps its digest (no paths, no mtimes)
    assert check_engine_entry(tmp_path / "copy", Manifest.from_dict(json.loads((tmp_path / "copy/manifest.json").read_text())), ENV)


@pytest.mark.parametrize("key, value, says", [
    ("gpu_name", "NVIDIA A100-SXM4-40GB", "built on GPU 'Orin', this GPU is 'NVIDIA A100-SXM4-40GB'"),
    ("compute_capability", "8.0", "compute capability 8.7, this GPU has 8.0"),
    ("tensorrt_version", "10.7.0", "TensorRT 10.3.0 built them, this device runs TensorRT 10.7.0"),
])
def test_another_gpu_or_tensorrt_is_refused_with_the_rebuild_command(tmp_path, key, value, says):
    bundle = tmp_path / "b"
    m = with_engines(bundle, fake_bundle(bundle))
    with pytest.raises(ValueError) as e:
        check_engine_entry(bundle, m, {**ENV, key: value})
    assert says in str(e.value) and f"rlivs build-engines --bundle {bundle}" in str(e.value)


def test_every_difference_is_named_at_once(tmp_path):
    bundle = tmp_path / "b"
    m = with_engines(bundle, fake_bundle(bundle))
    with pytest.raises(ValueError) as e:
        check_engine_entry(bundle, m, {"tensorrt_version": "10.4.0", "gpu_name": "H100", "compute_capability": "9.0"})
    assert all(s in str(e.value) for s in ("TensorRT 10.4.0", "H100", "9.0"))


def test_a_reexported_or_changed_bundle_is_refused(tmp_path):
    bundle = tmp_path / "b"
    m = with_engines(bundle, fake_bundle(bundle))
    again = m.with_(created="2025-02-02T00:00:00Z")  # what a re-export rewrites even for the same model
    with pytest.raises(ValueError, match="re-exported .*rlivs build-engines --bundle"):
        check_engine_entry(bundle, again, ENV)
    (bundle / "decoder.onnx").write_bytes(b"another graph")
    with pytest.raises(ValueError, match="re-exported"):
        check_engine_entry(bundle, m, ENV)


def test_changed_external_weights_change_the_digest(tmp_path):
    bundle = tmp_path / "b"
    m = fake_bundle(bundle)
    d0 = bundle_digest(bundle, m)
    data = bytearray((bundle / "decoder.onnx.data").read_bytes())
    data[-1] ^= 1  # the tail is sampled
    (bundle / "decoder.onnx.data").write_bytes(bytes(data))
    d1 = bundle_digest(bundle, m)
    (bundle / "decoder.onnx.data").write_bytes(bytes(data) + b"\0")  # and the size is hashed
    assert len({d0, d1, bundle_digest(bundle, m)}) == 3
    (bundle / "decoder.engine").write_bytes(b"x")  # engines and layer lists are not part of the digest
    (bundle / "decoder.layers.json").write_text("{}")
    assert bundle_digest(bundle, m.with_(**{ENTRY: {"anything": 1}})) == bundle_digest(bundle, m)


def test_missing_or_truncated_engine_files_and_missing_entries_are_refused(tmp_path):
    bundle = tmp_path / "b"
    m = fake_bundle(bundle)
    with pytest.raises(ValueError, match="has no TensorRT engines .*rlivs build-engines --bundle"):
        check_engine_entry(bundle, m, ENV)
    with pytest.raises(ValueError, match="damaged"):
        check_engine_entry(bundle, m.with_(**{ENTRY: {"gpu_name": "Orin"}}), ENV)
    m = with_engines(bundle, m)
    (bundle / "decoder.engine").write_bytes(b"plan")
    with pytest.raises(ValueError, match="truncated or from another build"):
        check_engine_entry(bundle, m, ENV)
    (bundle / "decoder.engine").unlink()
    with pytest.raises(ValueError, match="decoder engine .* is missing .*rlivs build-engines"):
        check_engine_entry(bundle, m, ENV)


def test_write_engine_entry_keeps_the_other_keys_atomically(tmp_path):
    bundle = tmp_path / "b"
    before = fake_bundle(bundle)
    write_engine_entry(bundle, {"first": 1})
    after = write_engine_entry(bundle, {"second": 2})  # replaces the entry, keeps everything else
    on_disk = json.loads((bundle / "manifest.json").read_text())
    assert on_disk == after.to_dict() == {**before.to_dict(), ENTRY: {"second": 2}}
    assert not [p for p in bundle.iterdir() if p.name.startswith(".manifest")]  # no temp file left
    assert write_engine_entry(bundle, None).to_dict() == before.to_dict()  # a rebuild first removes the old entry
    with pytest.raises(ValueError, match="not an rlivs bundle"):
        write_engine_entry(tmp_path, {})


# ---------------------------------------------------------------------------------------------------------------------
# The fusion report (inspector-format JSON written here, not a real engine)
# ---------------------------------------------------------------------------------------------------------------------

# decoder layers 0..3, probe layer 1 (which also has its probe row)
ATTENTION = [{"layer": i, "probe": i == 1, "role": "attention", "softmax": f"node_softmax_{i}",
              "value_matmul": f"node_matmul_pv_{i}"} for i in range(4)] + [
    {"layer": 1, "probe": True, "role": "probe_row", "softmax": "node_softmax_row_1", "value_matmul": None}]


def meta(*nodes):
    return "\x1e".join(f"[ONNX Layer: {n}]" for n in nodes)  # fused layers join their nodes' metadata with \x1E


def attention_layers(i, suffix="", kernel="_gemm_mha_v2"):
    if i == 1:  # the probe layer: scores pinned to fp32, the probabilities materialized
        return [{"Name": f"node_matmul_qk_1{suffix}", "LayerType": "gemm", "Metadata": meta("node_matmul_qk_1")},
                {"Name": f"node_softmax_1{suffix}", "LayerType": "SoftMax", "Metadata": meta("node_softmax_1")},
                {"Name": f"node_matmul_pv_1{suffix}", "LayerType": "gemm", "Metadata": meta("node_matmul_pv_1")},
                {"Name": f"node_softmax_row_1{suffix}", "LayerType": "SoftMax", "Metadata": meta("node_softmax_row_1")}]
    return [{"Name": f"{kernel}_myl0_{i}{suffix}", "LayerType": "gemm", "Inputs": [], "Outputs": [],
             "Metadata": meta(f"node_matmul_qk_{i}", f"node_add_{i}", f"node_softmax_{i}", f"node_matmul_pv_{i}")}]


def inspector(*profiles):
    return {"Layers": [x for p in profiles for x in p], "Bindings": ["inputs_embeds", "position_ids", "past_kv"]}


def prefill():
    return [x for i in range(4) for x in attention_layers(i)]


def decode(bad_layer=None):
    out = []
    for i in range(4):
        if i == bad_layer:  # Myelin left this Softmax in its own kernel, between two GEMMs
            out += [{"Name": f"node_matmul_qk_{i}_myl1_2 [profile 1]", "LayerType": "gemm",
                     "Metadata": meta(f"node_matmul_qk_{i}")},
                    {"Name": f"__myl_MulAddMaxSubExpSum_myl1_3 [profile 1]", "LayerType": "kgen",
                     "Metadata": meta(f"node_add_{i}", f"node_softmax_{i}")},
                    {"Name": f"node_matmul_pv_{i}_myl1_4 [profile 1]", "LayerType": "gemm",
                     "Metadata": meta(f"node_matmul_pv_{i}")}]
        else:
            out += attention_layers(i, " [profile 1]", "_gemv_mha_v1")
    return out


def test_fusion_report_all_fused_probe_layer_not_counted():
    r = fusion_report(json.dumps(inspector(prefill(), decode())), ATTENTION)
    assert r["all_fused"] and r["profiles"] == ["prefill", "decode"] and not r["not_fused"] and not r["unknown"]
    assert r["mha_layers"] == {"prefill": 3, "decode": 3}
    by_layer = {row["layer"]: row for row in r["layers"]}
    assert set(by_layer) == {0, 1, 2, 3}  # the probe row is not an attention to fuse
    assert by_layer[0]["status"] == {"prefill": "fused", "decode": "fused"}
    assert by_layer[0]["engine_layer"]["decode"] == "_gemv_mha_v1_myl0_0 [profile 1]"
    assert by_layer[1]["probe"] and by_layer[1]["status"] == {"prefill": "standalone", "decode": "standalone"}


def test_fusion_report_names_a_standalone_softmax():
    r = fusion_report(inspector(prefill(), decode(bad_layer=2)), ATTENTION)
    assert not r["all_fused"]
    (msg,) = r["not_fused"]
    assert msg.startswith("layer 2 (decode): Softmax node_softmax_2") and "__myl_MulAddMaxSubExpSum_myl1_3" in msg
    assert {row["layer"]: row["status"]["prefill"] for row in r["layers"]}[2] == "fused"


def test_fusion_report_from_names_regions_and_missing_softmaxes():
    """Without Metadata the layer names are read ("a + b", Myelin "<node>_myl..."); a Myelin region listed as one
    layer counts as absorbed; a Softmax no layer names is unknown, which is not all_fused."""
    names_only = {"Layers": [
        {"Name": "node_matmul_qk_0 + node_add_0 + node_softmax_0 + node_matmul_pv_0", "LayerType": "gemm"},
        {"Name": "node_softmax_1", "LayerType": "SoftMax"},
        {"Name": "{ForeignNode[node_matmul_qk_2...node_matmul_pv_3]}", "LayerType": "Myelin",
         "Metadata": meta("node_matmul_qk_2", "node_softmax_2", "node_matmul_pv_2", "node_softmax_3",
                          "node_matmul_pv_3")}]}
    r = fusion_report(names_only, ATTENTION)
    assert [row["status"]["prefill"] for row in r["layers"]] == ["fused", "standalone", "absorbed", "absorbed"]
    assert r["all_fused"] and r["profiles"] == ["prefill"]
    layer_names_only = {"Layers": ["node_matmul_qk_0 + node_softmax_0 + node_matmul_pv_0", "node_softmax_2"]}
    r = fusion_report(layer_names_only, ATTENTION)  # ProfilingVerbosity.LAYER_NAMES_ONLY: a list of names
    assert [row["status"]["prefill"] for row in r["layers"]] == ["fused", "unknown", "standalone", "unknown"]
    assert not r["all_fused"] and len(r["unknown"]) == 1 and "node_softmax_3" in r["unknown"][0]
    with pytest.raises(ValueError, match="Layers"):
        fusion_report({"Bindings": []}, ATTENTION)


def test_attention_nodes_by_role_and_layer():
    """A two-layer graph in the exported form: a fusable attention in each layer, a probe row in layer 1."""
    onnx = pytest.importorskip("onnx")
    from onnx import TensorProto, helper

    def node(op, inputs, output, layer, **kw):
        n = helper.make_node(op, inputs, [output], name=f"node_{output}", **kw)
        n.metadata_props.add(key="pkg.torch.onnx.name_scopes", value=repr(["", "lm", f"lm.layers.{layer}",
                                                                          f"lm.layers.{layer}.self_attn"]))
        return n

    nodes = []
    for i in range(2):
        q = "q" if i == 0 else "out_0"
        nodes += [node("MatMul", [q, "kt"], f"s{i}", i), node("Add", [f"s{i}", "mask"], f"m{i}", i),
                  node("Softmax", [f"m{i}"], f"p{i}", i, axis=-1), node("MatMul", [f"p{i}", "v"], f"out_{i}", i)]
    nodes += [node("MatMul", ["q", "kt"], "r", 1), node("Add", ["r", "mask"], "rm", 1),
              node("Softmax", ["rm"], "rp", 1, axis=-1), node("ReduceMean", ["rp"], "row", 1, keepdims=0)]
    f = TensorProto.FLOAT
    graph = helper.make_graph(nodes, "g", [helper.make_tensor_value_info(n, f, None) for n in ("q", "kt", "mask", "v")],
                              [helper.make_tensor_value_info(n, f, None) for n in ("out_1", "row")])
    got = attention_nodes(helper.make_model(graph), probe_layers=[1])
    assert got == [
        {"layer": 0, "probe": False, "role": "attention", "softmax": "node_p0", "value_matmul": "node_out_0"},
        {"layer": 1, "probe": True, "role": "attention", "softmax": "node_p1", "value_matmul": "node_out_1"},
        {"layer": 1, "probe": True, "role": "probe_row", "softmax": "node_rp", "value_matmul": None}]
    del graph.node[2].metadata_props[:]  # a Softmax without its module scope
    with pytest.raises(ValueError, match="re-export"):
        attention_nodes(onnx.helper.make_model(graph), probe_layers=[1])


# ---------------------------------------------------------------------------------------------------------------------
# The CLI without TensorRT
# ---------------------------------------------------------------------------------------------------------------------


def cli(*args):
    from tests.helpers.cli import run_cli

    r = run_cli(*args, catch_exceptions=True)
    return r.exit_code, " ".join(r.output.split())


def test_cli_without_tensorrt_exits_2_and_says_how_to_get_it(tmp_path, monkeypatch):
    monkeypatch.setitem(sys.modules, "tensorrt", None)  # import tensorrt -> ImportError, even where it exists
    fake_bundle(tmp_path / "trt")
    code, out = cli("build-engines", "--bundle", tmp_path / "trt")
    assert code == 2 and " ".join(TENSORRT_MISSING.split()) in out


def test_cli_refuses_bundles_that_are_not_tensorrt_target(tmp_path, monkeypatch):
    monkeypatch.setitem(sys.modules, "tensorrt", None)
    fake_bundle(tmp_path / "ort", target="onnxruntime")
    code, out = cli("build-engines", "--bundle", tmp_path / "ort")
    assert code == 2 and "re-export with rlivs export --target tensorrt" in out
    code, out = cli("build-engines", "--bundle", tmp_path)
    assert code == 2 and "not an rlivs bundle" in out
    code, out = cli("build-engines", "--bundle", tmp_path / "ort", "--precision", "int8")
    assert code == 2 and "fp16 or fp32" in out


def test_builder_cli_and_entry_import_without_torch_or_tensorrt(tmp_path):
    from tests.helpers.no_torch import run_without_torch

    out = run_without_torch("""
        import rlivs.edge_app.commands.export, rlivs.export.tensorrt_build, rlivs.runtime.backends.tensorrt.engine_entry
        assert TORCH_FREE() and 'tensorrt' not in sys.modules and 'onnx' not in sys.modules
        print('OK')
    """, tmp_path)
    assert out.returncode == 0 and "OK" in out.stdout, out.stderr


# ---------------------------------------------------------------------------------------------------------------------
# The real graphs (CPU) and the real build (GPU + TensorRT only)
# ---------------------------------------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def trt_tiny(tmp_path_factory, tiny_dir):
    pytest.importorskip("onnxscript")
    from rlivs.export.bundle import ExportConfig, export_bundle

    out = tmp_path_factory.mktemp("trt-build") / "tiny"
    export_bundle("tiny", out, ExportConfig(target="tensorrt", embed_dtype="float32", check=False))
    return out


def test_the_exported_graphs_fit_the_builder(trt_tiny):
    """The manifest's symbolic dims are the ones the profiles set, and every layer's attention is found by scope."""
    import onnx

    from rlivs.export.tensorrt_ops import attention_patterns
    from rlivs.runtime.backends.bundle import load_manifest

    manifest = load_manifest(trt_tiny)
    s, m = profile_specs(manifest), manifest.to_dict()
    assert set(s["decoder"][0]["shapes"]) == {i["name"] for i in m["graphs"]["decoder"]["inputs"]}
    assert s["decoder"][1]["shapes"]["inputs_embeds"]["max"] == [1, 1, m["hidden_size"]]
    found = attention_nodes(onnx.load(str(trt_tiny / "decoder.onnx"), load_external_data=False), m["probe_layers"])
    roles = [a["role"] for a in found]
    counts = attention_patterns(trt_tiny / "decoder.onnx")
    assert roles.count("attention") == counts["fusable"] == m["num_layers"]
    assert roles.count("probe_row") == counts["probe"] == len(m["probe_layers"]) and "other" not in roles
    assert sorted(a["layer"] for a in found if a["role"] == "attention") == list(range(m["num_layers"]))
    assert {a["layer"] for a in found if a["role"] == "probe_row"} == set(m["probe_layers"])


@pytest.mark.gpu
def test_build_engines_on_a_gpu(trt_tiny):
    """The real build: engines, manifest entry, layer lists, fused attention in every non-probe layer."""
    trt = pytest.importorskip("tensorrt")
    from rlivs.export.tensorrt_build import build_engines
    from rlivs.runtime.backends.bundle import load_manifest
    from rlivs.runtime.backends.tensorrt.engine_entry import current_env

    entry = build_engines(trt_tiny, EngineBuildConfig(max_context=1024))
    manifest = load_manifest(trt_tiny)
    m = manifest.to_dict()
    assert m[ENTRY] == json.loads(json.dumps(entry)) and entry["tensorrt_version"] == trt.__version__
    assert check_engine_entry(trt_tiny, manifest, current_env(trt.__version__)) is not None
    for key in ("vision", "decoder"):
        assert (trt_tiny / entry["engines"][key]["file"]).stat().st_size == entry["engines"][key]["bytes"]
        assert isinstance(json.loads((trt_tiny / entry["layers"][key]).read_text())["Layers"], list)
    assert [p["name"] for p in entry["engines"]["decoder"]["profiles"]] == ["prefill", "decode"]
    assert entry["engines"]["decoder"]["fp32_pinned"]["layers_pinned"] > 0
    assert entry["fusion"]["all_fused"], entry["fusion"]["not_fused"] + entry["fusion"]["unknown"]
    assert (trt_tiny / "timing.cache").stat().st_size > 0
    again = build_engines(trt_tiny, EngineBuildConfig(max_context=1024))
    assert again["timing_cache_reused"]


def test_only_the_probe_rows_score_path_is_pinned_to_fp32(trt_tiny):
    """Per probe layer: score MatMul -> scale -> mask Add -> Softmax -> head mean; nothing of the main attention."""
    import onnx

    from rlivs.export.tensorrt_build import probe_row_nodes
    from rlivs.runtime.backends.bundle import load_manifest

    g = onnx.load(str(trt_tiny / "decoder.onnx"), load_external_data=False)
    m = load_manifest(trt_tiny).to_dict()
    pinned = probe_row_nodes(g, m["probe_layers"])
    ops = {n.name: n.op_type for n in g.graph.node}
    assert sorted(ops[n] for n in pinned) == sorted(["MatMul", "Mul", "Add", "Softmax", "ReduceMean"] * len(m["probe_layers"]))
    main = {a["softmax"] for a in attention_nodes(g, m["probe_layers"]) if a["role"] == "attention"}
    main |= {a["value_matmul"] for a in attention_nodes(g, m["probe_layers"]) if a["role"] == "attention"}
    assert not main & set(pinned)
