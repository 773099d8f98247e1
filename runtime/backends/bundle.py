"""The bundle format: what `rlivs export` writes and the ONNX Runtime backend reads (no onnxruntime import here)."""

from __future__ import annotations

import hashlib
import json
from pathlib import Path

BUNDLE_FORMAT = "rlivs-bundle"
BUNDLE_VERSION = 1
MANIFEST = "manifest.json"
REQUIRED = ("vision.onnx", "decoder.onnx", "embeddings.npy", "image_newline.npy", "tokenizer.json", "config.json",
            "preprocessor_config.json")


def is_bundle(path: str | Path) -> bool:
    return (Path(path) / MANIFEST).is_file()


def load_manifest(bundle: str | Path) -> dict:
    """Read and validate a bundle's manifest; ValueError saying how to fix a broken or foreign bundle."""
    bundle = Path(bundle)
    path = bundle / MANIFEST
    if not path.is_file():
        raise ValueError(f"{bundle} is not an rlivs bundle (no {MANIFEST}): create one with rlivs export --model M --out {bundle}")
    try:
        manifest = json.loads(path.read_text())
    except (json.JSONDecodeError, UnicodeDecodeError) as e:
        raise ValueError(f"{path} is not valid JSON ({e}): re-run rlivs export") from e
    if not isinstance(manifest, dict):
        raise ValueError(f"{path} is not an rlivs bundle manifest (a JSON {type(manifest).__name__}, not an object): "
                         f"re-run rlivs export")
    if manifest.get("format") != BUNDLE_FORMAT:
        raise ValueError(f"{path} is not an rlivs bundle manifest (format {manifest.get('format')!r})")
    if manifest.get("version") != BUNDLE_VERSION:
        raise ValueError(f"{bundle} is bundle version {manifest.get('version')}; this rlivs reads version "
                         f"{BUNDLE_VERSION}: re-export it with this rlivs (rlivs export)")
    missing = [f for f in REQUIRED if not (bundle / f).is_file()]
    if missing:
        raise ValueError(f"bundle {bundle} is missing {', '.join(missing)}: copy the whole bundle directory or re-export it")
    want = manifest.get("config_sha256")
    if want and hashlib.sha256((bundle / "config.json").read_bytes()).hexdigest() != want:
        raise ValueError(f"{bundle}/config.json is not the one this bundle was exported with (its sha256 differs from "
                         f"the manifest's): it is damaged or from another model; copy the whole bundle directory "
                         f"from one export or re-export it")
    return manifest
