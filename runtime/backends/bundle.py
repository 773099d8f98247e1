"""The bundle format: what `rlivs export` writes and the ONNX Runtime and TensorRT backends read (numpy only)."""

from __future__ import annotations

import hashlib
import json
from pathlib import Path

import numpy as np

from .base import ModelInfo
from .kv_arena import KVLayout
from rlivs.runtime.errors import UserError

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
        raise UserError(f"{bundle} is not an rlivs bundle (no {MANIFEST}): create one with rlivs export --model M --out {bundle}")
    try:
        manifest = json.loads(path.read_text())
    except (json.JSONDecodeError, UnicodeDecodeError) as e:
        raise UserError(f"{path} is not valid JSON ({e}): re-run rlivs export") from e
    if not isinstance(manifest, dict):
        raise UserError(f"{path} is not an rlivs bundle manifest (a JSON {type(manifest).__name__}, not an object): "
                        f"re-run rlivs export")
    if manifest.get("format") != BUNDLE_FORMAT:
        raise UserError(f"{path} is not an rlivs bundle manifest (format {manifest.get('format')!r})")
    if manifest.get("version") != BUNDLE_VERSION:
        raise UserError(f"{bundle} is bundle version {manifest.get('version')}; this rlivs reads version "
                        f"{BUNDLE_VERSION}: re-export it with this rlivs (rlivs export)")
    missing = [f for f in REQUIRED if not (bundle / f).is_file()]
    if missing:
        raise UserError(f"bundle {bundle} is missing {', '.join(missing)}: copy the whole bundle directory or re-export it")
    want = manifest.get("config_sha256")
    if want and hashlib.sha256((bundle / "config.json").read_bytes()).hexdigest() != want:
        raise UserError(f"{bundle}/config.json is not the one this bundle was exported with (its sha256 differs from "
                        f"the manifest's): it is damaged or from another model; copy the whole bundle directory "
                        f"from one export or re-export it")
    return manifest


def bundle_info(bundle: str | Path, manifest: dict):
    """The ModelInfo and KV layout a bundle's manifest declares (shared by the ONNX Runtime and TensorRT backends)."""
    try:
        kv = manifest["kv_cache"]
        layout = KVLayout(layers=int(kv["layers"]), kv_heads=int(kv["kv_heads"]), head_dim=int(kv["head_dim"]),
                          layout=kv.get("layout", "stacked"), dtype=kv.get("dtype", "float32"),
                          max_context=int(kv.get("max_context", 0)))
        info = ModelInfo(
            model_id=manifest["model_id"], hidden_size=int(manifest["hidden_size"]),
            vocab_size=int(manifest["vocab_size"]), num_layers=int(manifest["num_layers"]),
            probe_layers=tuple(manifest["probe_layers"]), tokens_per_frame=int(manifest["tokens_per_frame"]),
            image_size=tuple(manifest["image_size"]), video_token_id=int(manifest["video_token_id"]),
        )
    except (KeyError, TypeError, ValueError) as e:
        raise UserError(f"{bundle}/manifest.json lacks or garbles {e}: the bundle is damaged; copy the "
                        f"whole bundle directory again or re-export it") from None
    return info, layout


def damaged(bundle: str | Path, name: str, e: BaseException) -> UserError:
    return UserError(f"{bundle}/{name} cannot be loaded ({type(e).__name__}: {str(e)[:300]}): the file is "
                     f"damaged or truncated; copy the whole bundle directory again or re-export it")


def load_tables(bundle: str | Path, info):
    """-> the (V, D) embedding table (memory-mapped, float16|float32) and the (D,) float32 image newline."""
    bundle = Path(bundle)

    def npy(name: str, **kw):
        try:
            return np.load(bundle / name, **kw)
        except (ValueError, OSError, EOFError) as e:  # a truncated header or data
            raise damaged(bundle, name, e) from None

    table = npy("embeddings.npy", mmap_mode="r")  # (V, D)
    newline = npy("image_newline.npy").astype(np.float32)  # (D,)
    if table.shape != (info.vocab_size, info.hidden_size):
        raise UserError(f"{bundle}/embeddings.npy has shape {table.shape}, the manifest says "
                        f"{(info.vocab_size, info.hidden_size)}: the bundle is damaged, re-export it")
    if newline.shape != (info.hidden_size,):
        raise UserError(f"{bundle}/image_newline.npy has shape {newline.shape}, the manifest says "
                        f"({info.hidden_size},): it is from another model; copy the whole bundle directory "
                        f"from one export or re-export it")
    return table, newline
