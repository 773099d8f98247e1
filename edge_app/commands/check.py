"""`rlivs check --bundle B`: the self-test on the device. Runs the bundle on the backend `auto` (or --backend) picks
here, on a short synthetic stream, and compares captions, clip scores and selections with the same bundle's ONNX
graphs on ONNX Runtime's CPU provider (rlivs.runtime.selftest). Prints PASS or FAIL with the numbers and the
tolerance; exit 0 on pass, 1 on fail, 2 when the bundle cannot be checked (it says why).
"""

from __future__ import annotations

import json
from dataclasses import asdict
from pathlib import Path
from typing import Optional

import typer
from rich.console import Console
from rich.markup import escape
from rich.table import Table

from rlivs.edge_app import options as o
from rlivs.edge_app.options import fail as _fail
from rlivs.runtime.errors import UserError


def precision_under_test(manifest, backend_name: str) -> str:
    """float16 when the backend under test runs TensorRT engines built in fp16 (the reference, the same bundle's
    ONNX graphs on ONNX Runtime, shares the bundle's KV dtype); float32 otherwise."""
    engines = manifest.tensorrt_engines or {}
    return "float16" if backend_name == "tensorrt" and engines.get("precision") == "fp16" else "float32"


def self_test(engine, cfg=None) -> dict:
    """The check of `engine` (an EngineConfig with a bundle) as a dict (what --json prints): backend and why,
    precision, tolerance, per-clip numbers, verdict."""
    from rlivs.runtime.backends import choose_backend
    from rlivs.runtime.backends.bundle import is_bundle, load_manifest
    from rlivs.runtime.config import CaptionConfig, ClipConfig, FifoConfig, PipelineConfig
    from rlivs.runtime.engine import Engine, load_engine
    from rlivs.runtime.frames import FramePreprocessor
    from rlivs.runtime.selftest import TOLERANCES, SelfTestConfig, caption_clips, compare_runs, synthetic_clips, \
        verdict
    from rlivs.runtime.text import TextCodec

    cfg = cfg or SelfTestConfig()
    bundle = Path(engine.bundle)
    if not is_bundle(bundle):
        raise UserError(f"{bundle} is not an rlivs bundle (no manifest.json): pass a folder made by rlivs export")
    try:
        from rlivs.runtime.backends.onnxruntime import OrtBackend
    except ImportError as e:
        raise UserError(f"the reference of rlivs check is the bundle's ONNX graphs on ONNX Runtime, which does not "
                        f"import here ({e}); pip install onnxruntime (onnxruntime-gpu on a Jetson)") from None
    manifest = load_manifest(bundle)
    name, why = choose_backend(engine.backend, bundle, bundle_given=True)
    pipeline = lambda: PipelineConfig(clip=ClipConfig(frames_per_clip=cfg.frames),  # noqa: E731
                                      fifo=FifoConfig(capacity_clips=max(1, cfg.clips - 1)),
                                      caption=CaptionConfig(max_new_tokens=cfg.caption_tokens))
    clips = synthetic_clips(cfg)
    got = caption_clips(load_engine(engine, pipeline()), clips)
    ref_be = OrtBackend(bundle, providers=["CPUExecutionProvider"], threads=engine.threads, manifest=manifest)
    ref = caption_clips(Engine(ref_be, TextCodec(bundle), FramePreprocessor.from_model_dir(bundle), pipeline()), clips)
    precision = precision_under_test(manifest, name)
    tol = TOLERANCES[precision]
    cmp = compare_runs(ref, got)
    passed, failed = verdict(cmp, tol)
    return {"bundle": str(bundle), "backend": name, "why": why, "reference": "onnxruntime CPUExecutionProvider",
            "precision": precision, "tolerance": asdict(tol), "config": asdict(cfg), "comparison": cmp,
            "captions": [{"reference": r["caption"], "backend": g["caption"]} for r, g in zip(ref, got)],
            "passed": passed, "failed": failed}


def check(
    bundle: Path = typer.Option(..., "--bundle", help="The bundle to check (rlivs export; with engines after "
                                                      "rlivs build-engines)."),
    backend: str = o.Backend, device: str = o.Device, threads: Optional[int] = o.Threads,
    clips: int = typer.Option(2, help="Synthetic clips (the FIFO carried between them)."),
    frames: int = typer.Option(4, help="Frames per clip."),
    caption_tokens: int = typer.Option(16, help="Greedy caption bound."),
    json_out: bool = typer.Option(False, "--json", help="Print the result as JSON."),
):
    """Self-test a bundle on this device: its chosen backend against the same bundle's ONNX graphs on ONNX Runtime
    CPU, on a short synthetic stream. Exit 0 = pass, 1 = fail (numbers and tolerance printed), 2 = cannot check."""
    from rlivs.runtime.selftest import SelfTestConfig

    try:
        if min(clips, frames, caption_tokens) < 1:
            raise UserError("--clips, --frames and --caption-tokens must be >= 1")
        r = self_test(o.engine_config("tiny", bundle, backend, device, threads=threads),
                      SelfTestConfig(clips=clips, frames=frames, caption_tokens=caption_tokens))
    except UserError as e:
        _fail(str(e))
    if json_out:
        typer.echo(json.dumps(r))
    else:
        _print(r)
    if not r["passed"]:
        raise typer.Exit(1)


def _print(r: dict) -> None:
    out = Console()
    c, tol = r["comparison"], r["tolerance"]
    out.print(f"rlivs check {escape(r['bundle'])}: backend [bold]{r['backend']}[/] ({escape(r['why'])}) against "
              f"{r['reference']}; {c['clips']} synthetic clips")
    t = Table("clip", "caption identical", "first differing token", "selection overlap")
    for i in range(c["clips"]):
        first = c["first_diff_token"][i]
        t.add_row(str(i), "yes" if first is None else "no", "–" if first is None else str(first),
                  f"{c['selection_overlap'][i]:.2f}")
    out.print(t)
    score = "–" if c["max_score_diff_per_row"] is None else f"{c['max_score_diff_per_row']:.2e}"
    atol = "reported only" if tol["score_atol_per_row"] is None else f"<= {tol['score_atol_per_row']:g}"
    out.print(f"captions identical {c['captions_identical']}/{c['clips']} (need >= "
              f"{tol['captions_identical_min']:.0%}); selection overlap min {c['selection_overlap_min']:.2f} (need >= "
              f"{tol['selection_overlap_min']}); clip score difference per scored row {score} ({atol}); tolerance "
              f"for {r['precision']}")
    if r["passed"]:
        out.print("[bold green]PASS[/]")
    else:
        out.print(f"[bold red]FAIL[/]: {escape('; '.join(r['failed']))}")


def register(app: typer.Typer) -> None:
    app.command()(check)
