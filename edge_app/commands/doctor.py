"""`rlivs doctor`: what is installed and usable here, and which backend `auto` would run a given bundle or model on.

For a robotics team on its own device (a Jetson with JetPack, a workstation GPU, a CPU box): versions of the packages
rlivs uses, ONNX Runtime's execution providers, CUDA devices and their memory (through torch, when installed),
TensorRT, the JetPack release, and `auto`'s backend choice with its reason (or why nothing here can run it).
Exit status: 0 when the given bundle or model can run here (or none was given), 1 when it cannot.
"""

from __future__ import annotations

import importlib.util
import json
import platform
import sys
from importlib import metadata
from pathlib import Path
from typing import Optional

import typer
from rich.console import Console
from rich.markup import escape
from rich.table import Table

from rlivs.edge_app import options as o

PACKAGES = ("rlivs", "numpy", "av", "tokenizers", "sqlite-utils", "fastapi", "onnxruntime", "onnxruntime-gpu", "onnx",
            "onnxscript", "torch", "transformers", "tensorrt", "cuda-python")
JETSON_RELEASE = Path("/etc/nv_tegra_release")  # L4T's release file (JetPack), on Jetsons only


def _version(package: str) -> str | None:
    try:
        return metadata.version(package)
    except metadata.PackageNotFoundError:
        return None


def _found(module: str) -> bool:
    try:
        return importlib.util.find_spec(module) is not None
    except (ImportError, ValueError):
        return False


def _onnxruntime() -> dict:
    if not _found("onnxruntime"):
        return {"importable": False}
    import onnxruntime as ort

    return {"importable": True, "version": ort.__version__, "providers": ort.get_available_providers()}


def _cuda() -> dict:
    """CUDA devices as torch sees them (torch is the one CUDA runtime rlivs can ask without TensorRT)."""
    if not _found("torch"):
        return {"checked_with": None, "note": "torch is not installed: CUDA not checked (ONNX Runtime's providers say "
                                              "whether it can use CUDA)"}
    import torch

    devices = [{"index": i, "name": torch.cuda.get_device_name(i),
                "memory_gb": round(torch.cuda.get_device_properties(i).total_memory / 2**30, 2),
                "compute_capability": ".".join(map(str, torch.cuda.get_device_capability(i)))}
               for i in range(torch.cuda.device_count())] if torch.cuda.is_available() else []
    return {"checked_with": f"torch {torch.__version__}", "available": bool(devices), "cuda": torch.version.cuda,
            "devices": devices}


def _tensorrt() -> dict:
    if not _found("tensorrt"):
        return {"importable": False, "note": "TensorRT comes with JetPack on a Jetson; elsewhere use ONNX Runtime"}
    try:
        import tensorrt
    except Exception as e:  # noqa: BLE001 - installed but broken (e.g. no libnvinfer): say so
        return {"importable": False, "error": f"{type(e).__name__}: {e}"}
    return {"importable": True, "version": tensorrt.__version__}


def _jetpack() -> str | None:
    try:
        return JETSON_RELEASE.read_text().splitlines()[0].lstrip("# ").strip()
    except (OSError, IndexError):
        return None


def _backend_choice(engine) -> dict:
    """`auto`'s choice (or the asked backend's check) for the engine config's model or bundle."""
    from rlivs.runtime.backends import choose_backend
    from rlivs.runtime.errors import UserError
    from rlivs.runtime.models import resolve_model

    from rlivs.runtime.backends.bundle import is_bundle, load_manifest

    needs = {}
    try:
        model_dir = Path(engine.bundle) if engine.bundle else resolve_model(engine.source)[0]  # a bundle is a path
        if is_bundle(model_dir):  # what the bundle's graphs need, from its manifest (nothing loads)
            needs = {"onnxruntime_needed": load_manifest(model_dir).onnxruntime_needed()}
        if (model_dir / "config.json").exists():  # the model family, from its config (nothing loads)
            from rlivs.runtime.backbones import backbone_for_dir

            needs["backbone"] = backbone_for_dir(model_dir).label
        name, why = choose_backend(engine.backend, model_dir, bundle_given=engine.bundle is not None)
    except UserError as e:
        return {"target": engine.source, "asked": engine.backend, "runs": False, "error": str(e), **needs}
    return {"target": engine.source, "asked": engine.backend, "runs": True, "name": name, "why": why, **needs}


def report(engine=None) -> dict:
    """Everything `rlivs doctor` prints, as a dict (JSON with --json)."""
    out = {"python": sys.version.split()[0], "platform": platform.platform(), "machine": platform.machine(),
           "jetpack": _jetpack(), "packages": {p: _version(p) for p in PACKAGES},
           "onnxruntime": _onnxruntime(), "cuda": _cuda(), "tensorrt": _tensorrt()}
    if engine is not None:
        out["backend"] = _backend_choice(engine)
    return out


def _print(r: dict) -> None:
    out = Console()
    table = Table("what", "here", title="rlivs doctor", show_lines=False)
    table.add_row("python", f"{r['python']} on {r['platform']}")
    table.add_row("JetPack", r["jetpack"] or "not a Jetson (no /etc/nv_tegra_release)")
    for p, v in r["packages"].items():
        table.add_row(p, v or "[dim]not installed[/]")
    ort = r["onnxruntime"]
    table.add_row("ONNX Runtime providers", ", ".join(ort.get("providers", [])) or "[dim]onnxruntime not importable[/]")
    cuda = r["cuda"]
    if cuda.get("checked_with") is None:
        table.add_row("CUDA", escape(cuda["note"]))
    else:
        gpus = "; ".join(f"{d['name']} ({d['memory_gb']} GB, sm {d['compute_capability']})" for d in cuda["devices"])
        table.add_row("CUDA", gpus or f"no CUDA device ({cuda['checked_with']})")
    trt = r["tensorrt"]
    table.add_row("TensorRT", trt.get("version") or escape(trt.get("error") or trt.get("note", "")))
    out.print(table)
    b = r.get("backend")
    if b is not None:
        if "onnxruntime_needed" in b:
            out.print(f"the bundle's graphs load on onnxruntime >= {b['onnxruntime_needed']}")
        if b["runs"]:
            family = f", backbone {b['backbone']}" if "backbone" in b else ""
            out.print(f"backend for {escape(b['target'])}: [bold]{b['name']}[/] ({escape(b['why'])}){family}")
        else:
            out.print(f"[bold red]{escape(b['target'])} cannot run here:[/] {escape(b['error'])}")


def doctor(
    model: Optional[str] = typer.Option(None, "--model", "-m", help="Also say which backend would run this model."),
    bundle: Optional[Path] = typer.Option(None, "--bundle", help="Also say which backend would run this bundle."),
    backend: str = o.Backend,
    json_out: bool = typer.Option(False, "--json", help="Print the report as JSON."),
):
    """What is installed and usable here (packages, ONNX Runtime providers, CUDA, TensorRT, JetPack) and which
    backend would run a given bundle or model, and why. Exit 1 when the given bundle or model cannot run here."""
    engine = o.engine_config(model or "tiny", bundle, backend) if (model or bundle) else None
    r = report(engine)
    if json_out:
        typer.echo(json.dumps(r))
    else:
        _print(r)
    if engine is not None and not r["backend"]["runs"]:
        raise typer.Exit(1)


def register(app: typer.Typer) -> None:
    app.command()(doctor)
