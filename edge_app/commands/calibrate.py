"""`rlivs calibrate collect|layers|quantize|report`: calibration sets, probe-layer choice, quantized bundles, fidelity.

The commands only parse flags and print; the work is in `rlivs.calibration` (imported inside the commands, so
importing this module stays light and torch-free). See docs/calibration.md.
"""

from __future__ import annotations

import json
import shlex
from pathlib import Path
from typing import Optional

import typer
from rich.console import Console
from rich.table import Table

from rlivs.edge_app import options as o
from rlivs.edge_app.options import console, engine_config, fail as _fail, parse_layers
from rlivs.runtime.errors import UserError

out = Console()

calibrate_app = typer.Typer(no_args_is_help=True, help="Calibrate from your own footage: collect a calibration set, "
                            "choose the probe layers, quantize a bundle, report fidelity. See docs/calibration.md.")


def _command(ctx: typer.Context) -> str:
    """The command line being run, rebuilt from the options given on it (also right under a test runner)."""
    parts = ["rlivs", *ctx.command_path.split()[1:]]
    for p in ctx.command.params:
        source = ctx.get_parameter_source(p.name)
        if source is None or source.name != "COMMANDLINE":
            continue
        value = ctx.params[p.name]
        if p.param_type_name == "argument":
            parts.append(str(value))
        elif getattr(p, "is_flag", False):
            parts.append(p.opts[0] if value else (p.secondary_opts or p.opts)[0])
        else:
            for v in value if isinstance(value, (list, tuple)) else [value]:
                parts += [p.opts[0], str(v)]
    return " ".join(shlex.quote(a) for a in parts)


def _progress(label: str):
    from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn

    bar = Progress(TextColumn(f"[bold]{label}[/] {{task.description}}"), BarColumn(), MofNCompleteColumn(),
                   TimeElapsedColumn(), console=console)
    tasks: dict[str, int] = {}

    def update(phase: str, done: int, total: int) -> None:
        if phase not in tasks:
            tasks[phase] = bar.add_task(phase, total=total)
        bar.update(tasks[phase], completed=done, total=total)

    return bar, update


@calibrate_app.command("collect")
def collect_cmd(
    video: list[Path] = typer.Option(..., "--video", help="Footage to sample (repeat for several files)."),
    out_dir: Path = typer.Option(..., "--out", "-o", help="Calibration set directory to write."),
    model: str = o.Model,
    bundle: Optional[Path] = typer.Option(None, "--bundle", help="Collect with an exported float32 bundle instead (ONNX Runtime)."),
    backend: str = typer.Option("auto", "--backend", help="auto | torch | onnxruntime"),
    device: str = o.Device, dtype: str = o.Dtype, threads: Optional[int] = o.Threads,
    clips: int = typer.Option(16, "--clips", help="Calibration clips (one per equal stretch of the footage)."),
    heldout: int = typer.Option(4, "--heldout", help="Clips held back for the fidelity report."),
    dedup: float = typer.Option(0.005, "--dedup", help="Thumbnail distance (mean |diff|, 0..1) below which clips are duplicates."),
    warmup: int = typer.Option(16, "--warmup", help="Clips run before each sampled clip to build its FIFO."),
    from_start: bool = typer.Option(False, "--from-start", help="Build every FIFO from the video's start (exact, slower)."),
    seed: int = typer.Option(0, "--seed", help="Order in which clips inside a stratum are tried."),
    fps: float = o.Fps, frames_per_clip: int = o.FramesPerClip, keep: Optional[int] = o.Keep,
    keep_ratio: float = o.KeepRatio, fifo_clips: Optional[int] = o.FifoClips, fifo_tokens: Optional[int] = o.FifoTokens,
    probe_layers: Optional[str] = o.ProbeLayers, num_probe_layers: int = o.NumProbeLayers,
    max_caption_tokens: int = o.MaxCaptionTokens, fifo_positions: str = o.FifoPositions,
):
    """Sample calibration clips from your footage and store what the decoder sees for each (FIFO included)."""
    from rlivs.runtime.config import (
        CaptionConfig, ClipConfig, FifoConfig, PipelineConfig, ProbeConfig, SelectionConfig,
    )

    try:
        from rlivs.calibration.config import CollectConfig
        from rlivs.calibration.dataset import collect
        from rlivs.runtime.engine import load_engine

        cfg = CollectConfig(n_calib=clips, n_heldout=heldout, dedup_threshold=dedup,
                            warmup_clips=None if from_start else warmup, seed=seed)
        pc = PipelineConfig(
            clip=ClipConfig(fps=fps, frames_per_clip=frames_per_clip),
            selection=SelectionConfig(keep=keep, keep_ratio=keep_ratio),
            fifo=FifoConfig(capacity_clips=fifo_clips, capacity_tokens=fifo_tokens, positions=fifo_positions),
            caption=CaptionConfig(max_new_tokens=max_caption_tokens),
            probe=ProbeConfig(num_layers=num_probe_layers, layers=parse_layers(probe_layers)))
        ec = o.check_engine(engine_config(model, bundle, backend, device, dtype, threads))
        o.check_backbone(ec, pc)  # frames per clip the model family cannot group: before the model loads
        with console.status(f"loading {bundle or model} ..."):
            engine = load_engine(ec, pc)
        bar, update = _progress("collect")
        with bar:
            m = collect(video, out_dir, engine, cfg, on_clip=update)
    except UserError as e:
        _fail(str(e))
    split = {s: sum(it["split"] == s for it in m["items"]) for s in ("calib", "heldout")}
    console.print(f"{len(m['items'])} clips ({split['calib']} calib, {split['heldout']} held out) of "
                  f"{m['candidates']} full clips; {m['duplicates_rejected']} duplicates skipped; {m['clips_run']} clips "
                  f"captioned in {m['seconds']:.1f} s -> {out_dir} (set {m['set_sha256'][:12]})")


@calibrate_app.command("layers")
def layers_cmd(
    calib: Path = typer.Option(..., "--calib", help="Calibration set (rlivs calibrate collect)."),
    model: str = typer.Option("tiny", "--model", "-m", help="The HF-format model the set was collected with (torch reference)."),
    device: str = o.Device, threads: Optional[int] = o.Threads,
    num_layers: int = typer.Option(4, "--num-layers", help="K: probe layers to choose."),
    max_exhaustive: int = typer.Option(50_000, help="Search all K-subsets when there are at most this many."),
    cache: bool = typer.Option(True, help="Reuse per-layer scores cached in the calibration set."),
    export_to: Optional[Path] = typer.Option(None, "--export-to", help="Then export a bundle probing the chosen layers."),
    embed_dtype: Optional[str] = o.EmbedDtype,
    target: str = typer.Option("onnxruntime", "--target", help="Export target: onnxruntime | tensorrt (as rlivs export)."),
    opset: Optional[int] = o.Opset,
    check: bool = typer.Option(True, help="Compare the exported graphs with the torch reference."),
    json_out: bool = typer.Option(False, "--json", help="Print layers.json."),
):
    """Choose the probe layers whose attention best reproduces the all-layer token selection."""
    try:
        from rlivs.calibration.config import LayerSearchConfig
        from rlivs.calibration.dataset import CalibrationSet
        from rlivs.calibration.layers import calibrate_layers, export_with_layers
        from rlivs.runtime.engine import load_engine

        cs = CalibrationSet(calib)
        with console.status(f"loading {model} ..."):
            engine = load_engine(engine_config(model, backend="torch", device=device, threads=threads),
                                 cs.pipeline_config())
        bar, update = _progress("per-layer scores")
        with bar:
            res = calibrate_layers(engine, cs, LayerSearchConfig(num_layers=num_layers, max_exhaustive=max_exhaustive),
                                   use_cache=cache, on_item=lambda d, n: update("clips", d, n))
        if export_to:
            from rlivs.export.bundle import ExportConfig

            with console.status(f"exporting {model} with probe layers {res['chosen']['layers']} to {export_to} ..."):
                export_with_layers(model, export_to, res, ExportConfig(target=target, opset=opset, embed_dtype=embed_dtype,
                                                                       check=check))
    except (UserError, ImportError) as e:
        _fail(str(e))
    if json_out:
        typer.echo(json.dumps(res, indent=2))
        return
    t = Table("layers", "which", "overlap@N calib", "Spearman calib", "overlap@N held out", "Spearman held out",
              title=f"probe layers for {res['model_id']} ({res['search']['method']}, {res['search']['subsets_evaluated']} subsets)")
    for key in ("chosen", "evenly_spaced"):
        r = res[key]
        f = lambda v: "–" if v is None else f"{v:.3f}"  # noqa: E731
        t.add_row(",".join(map(str, r["layers"])), key.replace("_", " "), f(r["calib"]["overlap"]), f(r["calib"]["spearman"]),
                  f(r["heldout"]["overlap"]), f(r["heldout"]["spearman"]))
    out.print(t)
    out.print("single layers, overlap@N calib: " + ", ".join(f"{p['layer']}: {p['calib_overlap']:.2f}" for p in res["per_layer"]))
    out.print(f"written: {calib / 'layers.json'}" + (f"; bundle {export_to} probes {res['chosen']['layers']}" if export_to else
              f"; export with: rlivs export --probe-layers {','.join(map(str, res['chosen']['layers']))}"))


@calibrate_app.command("quantize")
def quantize_cmd(
    bundle: Path = typer.Option(..., "--bundle", help="The float32 bundle (rlivs export)."),
    calib: Path = typer.Option(..., "--calib", help="Calibration set (rlivs calibrate collect)."),
    out_dir: Path = typer.Option(..., "--out", "-o", help="Quantized bundle directory to write."),
    precision: str = typer.Option("int8", "--precision", help="int8 (static QDQ) | int4 (weight-only)"),
    tool: str = typer.Option("ort", "--tool", help="ort (onnxruntime.quantization) | modelopt (NVIDIA ModelOpt, the TensorRT path)"),
    fmt: str = typer.Option("qdq", "--format", help="int8 (ort): qdq | qoperator (QLinearMatMul: ORT's fast CPU kernels)."),
    per_channel: bool = typer.Option(True, help="int8: one weight scale per output channel."),
    method: str = typer.Option("minmax", "--method", help="int8 activation ranges: minmax | entropy | percentile"),
    decode_steps: int = typer.Option(3, help="Decode steps per calibration clip fed to the calibrator."),
    quantize_probe_qk: bool = typer.Option(False, help="Also quantize the probe layers' q/k projections."),
    lm_head: bool = typer.Option(True, help="Quantize the LM head."),
    block_size: int = typer.Option(32, help="int4: weights per block."),
    mha_int8: bool = typer.Option(True, help="modelopt int8: quantize the non-probe layers' attention BMMs too."),
    threads: Optional[int] = typer.Option(None, "--threads", help="CPU threads for ONNX Runtime."),
):
    """Quantize a bundle's decoder with the calibration set (probe attention stays float32)."""
    try:
        from rlivs.calibration.config import QuantizeConfig
        from rlivs.calibration.dataset import CalibrationSet
        from rlivs.calibration.quantize import quantize_bundle

        cfg = QuantizeConfig(precision=precision, tool=tool, format=fmt, per_channel=per_channel, calibrate_method=method,
                             decode_steps=decode_steps, keep_probe_qk=not quantize_probe_qk, quantize_lm_head=lm_head,
                             block_size=block_size, mha_int8=mha_int8)
        with console.status(f"quantizing {bundle} to {precision} ..."):
            m = quantize_bundle(bundle, CalibrationSet(calib), out_dir, cfg, threads=threads)
    except (UserError, ImportError) as e:
        _fail(str(e))
    p = m.precision
    c = p["check"]
    out.print(f"{out_dir}: decoder {p['decoder']} ({p['format']}; {p['tool']}), {p['decoder_bytes'] / 1e6:.1f} MB "
              f"(float32 {p['source_decoder_bytes'] / 1e6:.1f} MB), {len(p['float_nodes']['names'])} nodes kept float32, "
              f"{p['seconds']:.1f} s" + (" (calibration cache reused)" if p.get("calibration_cache_reused") else ""))
    out.print(f"vs float32 on {c['feeds']} calibration feeds: max |logits diff| {c['logits']:.3g} (scale {c['logit_scale']:.3g}), "
              f"max |probe diff| {c['probe_attn']:.3g}, same argmax {c['argmax_agree']}/{c['feeds']}")


@calibrate_app.command("report")
def report_cmd(
    ctx: typer.Context,
    calib: Path = typer.Option(..., "--calib", help="Calibration set (its held-out clips are used)."),
    reference: Path = typer.Option(..., "--reference", help="The float32 bundle."),
    candidate: list[str] = typer.Option([], "--candidate", help="NAME=BUNDLE to compare (repeat)."),
    out_json: Path = typer.Option(..., "--out", "-o", help="JSON report to write."),
    markdown: Optional[Path] = typer.Option(None, "--markdown", help="Also write the Markdown table here."),
    doc: Optional[Path] = typer.Option(None, "--doc", help="Put the table into this Markdown doc (between markers)."),
    section: str = typer.Option("report", "--section", help="Marker name of the table's place in --doc."),
    title: Optional[str] = typer.Option(None, "--title", help="Heading line above the table."),
    threads: Optional[int] = typer.Option(2, "--threads", help="ONNX Runtime threads while timing."),
    retrieval_k: int = typer.Option(3, help="Captions retrieved per query when comparing retrieval."),
    isolate: bool = typer.Option(True, help="Run each bundle in its own process (its own peak memory)."),
):
    """Fidelity and speed of each precision against the float32 bundle on the held-out clips."""
    cands = {}
    for spec in candidate:
        name, sep, path = spec.partition("=")
        if not sep or not name or not path:
            _fail(f"--candidate {spec!r} is not NAME=BUNDLE, e.g. --candidate int8=bundles/tiny-int8")
        cands[name] = Path(path)
    try:
        from rlivs.calibration.config import ReportConfig
        from rlivs.calibration.dataset import CalibrationSet
        from rlivs.calibration.report import fidelity_report, update_doc, write_report

        with console.status("running the held-out clips ..."):
            rep = fidelity_report(CalibrationSet(calib), reference, cands,
                                  ReportConfig(threads=threads, retrieval_k=retrieval_k, isolate=isolate), command=_command(ctx))
        md = write_report(rep, out_json, markdown, title)
        if doc:
            update_doc(doc, section, md)
    except (UserError, RuntimeError) as e:
        _fail(str(e))
    out.print(md)


def register(app: typer.Typer) -> None:
    """Add `rlivs calibrate ...` to the CLI."""
    app.add_typer(calibrate_app, name="calibrate")
