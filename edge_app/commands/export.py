"""`rlivs export` (a model to a self-contained ONNX bundle) and `rlivs build-engines` (TensorRT engines for a
TensorRT-target bundle, built on the device that will run them).

The commands only parse flags and print; the work is in rlivs.export.bundle and rlivs.export.tensorrt_build (imported
inside the commands, so importing this module stays light and needs neither TensorRT nor torch). See docs/export.md.
"""

from __future__ import annotations

from pathlib import Path
from typing import Optional

import typer
from rich.console import Console
from rich.markup import escape
from rich.table import Table

from rlivs.edge_app import options as o
from rlivs.edge_app.options import console, fail as _fail
from rlivs.runtime.errors import UserError

out = Console()


def export(
    model: str = o.Model,
    out: Path = typer.Option(..., "--out", "-o", help="Bundle directory to write."),
    target: str = typer.Option("onnxruntime", help="onnxruntime | tensorrt (opset <= 20, attention TensorRT fuses)."),
    opset: Optional[int] = o.Opset,
    embed_dtype: Optional[str] = o.EmbedDtype,
    probe_layers: Optional[str] = o.ProbeLayers, num_probe_layers: int = o.NumProbeLayers,
    check: bool = typer.Option(True, help="Compare the exported graphs with the torch reference."),
    kv_dtype: Optional[str] = typer.Option(None, help="KV cache dtype of a tensorrt bundle: float16 (default) | "
                                                      "float32 (exact parity with the reference)."),
    max_context: int = typer.Option(8192, help="Cache positions preallocated per sequence (tensorrt bundles): "
                                               "FIFO + clip + prompt + caption must fit."),
    batch: bool = o.ExportBatch,
):
    """Export a model to a self-contained ONNX bundle for the torch-free runtime."""
    try:
        from rlivs.export.bundle import ExportConfig, export_bundle
        from rlivs.runtime.config import ProbeConfig

        probe = ProbeConfig(num_layers=num_probe_layers, layers=o.parse_layers(probe_layers))
        cfg = ExportConfig(target=target, opset=opset, embed_dtype=embed_dtype, check=check, kv_dtype=kv_dtype,
                           max_context=max_context, probe=probe, batch=batch)
        o.check_engine(o.engine_config(model))  # a missing --model path is refused before torch loads
        with console.status(f"exporting {model} to {out} (one line per stage; -v shows the exporters' logs) ..."):
            manifest = export_bundle(model, out, cfg)
    except (UserError, ImportError) as e:
        _fail(str(e))
    table = Table("graph", "io", "name", "shape", "dtype", title=f"bundle {out}")
    for g in manifest.graphs.values():
        for io in ("inputs", "outputs"):
            for v in g[io]:
                table.add_row(g["file"], io[:-1], v["name"], str(v["shape"]), v["dtype"])
    out_console = Console()
    out_console.print(table)
    from rlivs.runtime.backbones import get_backbone

    name = manifest.backbone_name(out)
    out_console.print(f"backbone: {get_backbone(name).label} ({name})")
    if "tensorrt_check" in manifest.extra:
        trt_check = manifest.extra["tensorrt_check"]
        out_console.print(f"TensorRT check: all ops in {trt_check['operator_table']}; "
                          f"decoder attention {trt_check['decoder_attention']}")
    if "export_check" in manifest.extra:
        from rlivs.export.bundle import parity_summary

        out_console.print("ONNX Runtime vs torch: " + parity_summary(manifest.extra["export_check"]))
    out_console.print(EMBED_NOTE[manifest.embeddings["dtype"]])
    out_console.print("decoder: batched (a dynamic batch axis): rlivs serve --batch N captions N cameras' clips per call"
                      + (", up to the engines' rlivs build-engines --max-batch" if manifest.target == "tensorrt" else "")
                      if manifest.batched else
                      "decoder: one sequence per step (rlivs serve --batch needs a bundle exported with --batch)")


EMBED_NOTE = {  # what the bundle's embedding table means for parity (docs/export.md, "Precision and parity")
    "float32": "embeddings: float32: greedy captions and selections as the torch reference's",
    "float16": "embeddings: float16: half the table, but not the reference's captions where the greedy margin is "
               "small; re-export with --embed-dtype float32 for exact parity on ONNX Runtime",
}


def build_engines_cmd(
    bundle: Path = typer.Option(..., "--bundle", help="A TensorRT-target bundle (rlivs export --target tensorrt)."),
    precision: str = typer.Option("fp16", "--precision", help="fp16 | fp32 (the probe layers' scores stay fp32)."),
    max_context: Optional[int] = typer.Option(None, "--max-context",
                                              help="Decoder cache positions the engines accept (default: the bundle's)."),
    max_frames: Optional[int] = typer.Option(None, "--max-frames", help="Most frames per vision call (default: 16)."),
    timing_cache: Optional[Path] = typer.Option(None, "--timing-cache",
                                                help="Timing cache, reused and updated (default: BUNDLE/timing.cache)."),
    workspace: int = typer.Option(2048, "--workspace", help="TensorRT workspace limit, MiB."),
    opt_level: int = typer.Option(3, "--opt-level", help="Builder optimization level 0..5."),
    max_batch: Optional[int] = o.MaxBatch,
):
    """Build FP16 TensorRT engines into a bundle and record them in its manifest (needs TensorRT and the GPU)."""
    try:
        from rlivs.export.tensorrt_build import EngineBuildConfig, build_engines

        cfg = EngineBuildConfig(precision=precision, max_context=max_context, max_frames=max_frames,
                                timing_cache=timing_cache, workspace_mib=workspace, builder_optimization_level=opt_level,
                                max_batch=max_batch)
        with console.status(f"building TensorRT engines for {bundle} (minutes) ..."):
            entry = build_engines(bundle, cfg)
    except UserError as e:
        _fail(str(e))
    t = Table("engine", "tensor", "mode", "shape", "dtype", "profiles (min / opt / max)",
              title=f"TensorRT {entry['tensorrt_version']} engines on {entry['gpu_name']} "
                    f"(sm {entry['compute_capability']}), {entry['precision']}")
    for key, e in entry["engines"].items():
        for i, io in enumerate(e["io"]):
            shapes = "; ".join(" / ".join(str(tuple(s)) for s in p) for p in io.get("profiles", []))
            t.add_row(f"{key} ({e['bytes'] / 1e6:.1f} MB)" if i == 0 else "", io["name"], io["mode"],
                      str(tuple(io["shape"])), io["dtype"], shapes)
    out.print(t)
    f = entry["fusion"]
    ft = Table("decoder layer", *f["profiles"], "engine layer", title="attention fusion (probe layers not counted)")
    for r in f["layers"]:
        ft.add_row(f"{r['layer']}{' (probe)' if r['probe'] else ''}", *(r["status"].get(p, "-") for p in f["profiles"]),
                   escape("; ".join(str(n) for n in r["engine_layer"].values())))  # names may hold [brackets]
    out.print(ft)
    verdict = "fused in every non-probe layer" if f["all_fused"] else "NOT fused everywhere: " + "; ".join(
        f["not_fused"] + f["unknown"])
    out.print(escape(f"attention {verdict}; layer lists: {', '.join(entry['layers'].values())}; "
                     f"K_max {entry['max_context']}, frames <= {entry['max_frames']}, batch <= "
                     f"{entry.get('max_batch', 1)}; timing cache {entry['timing_cache']}"
                     + (" (reused)" if entry.get("timing_cache_reused") else "")))


def register(app: typer.Typer) -> None:
    """Add `rlivs export` and `rlivs build-engines` to the CLI."""
    app.command("export")(export)
    app.command("build-engines")(build_engines_cmd)
