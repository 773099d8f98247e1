"""Where a model's files are: `tiny` / `random-0.5b` (random weights, built locally), a local HF-format
directory (or an exported bundle), or a hub id in the local HF cache.

Nothing here touches the network: hub ids resolve with `local_files_only=True`.
"""

from __future__ import annotations

import logging
from pathlib import Path
from rlivs.runtime.errors import UserError

log = logging.getLogger("rlivs.models")

TINY = "tiny"
# random-weight models built locally (LLaVA-OV: tiny.py; Qwen2.5-VL / Qwen3-VL: tiny_qwen.py):
# name -> (size the builder takes, model family = runtime/backbones REGISTRY name, known before anything is built)
_RANDOM = {"tiny": ("tiny", "llava_onevision"), "tiny-gqa": ("tiny-gqa", "llava_onevision"),
           "random-0.5b": ("0.5b", "llava_onevision"),
           "tiny-qwen": ("tiny-qwen", "qwen2_5_vl"), "tiny-qwen-gqa": ("tiny-qwen-gqa", "qwen2_5_vl"),
           "random-qwen2.5-vl-3b": ("qwen2.5-vl-3b", "qwen2_5_vl"),
           "tiny-qwen3": ("tiny-qwen3", "qwen3_vl"), "tiny-qwen3-gqa": ("tiny-qwen3-gqa", "qwen3_vl")}
RANDOM_MODELS = {name: size for name, (size, _) in _RANDOM.items()}
RANDOM_BACKBONES = {name: family for name, (_, family) in _RANDOM.items()}


VALID_MODELS = ("'tiny', 'random-0.5b', 'tiny-qwen' (random weights, built locally), a local HF-format directory "
                "(LLaVA-OneVision, Qwen2.5-VL or Qwen3-VL), or a hub id (org/name) in the local Hugging Face cache")


def download_hint(name: str) -> str:
    """How to get a hub model onto the device: the `hf` command that huggingface_hub installs."""
    return (f"on a connected machine run `hf download {name}` and copy the cache here (or set HF_HOME), "
            f"or copy the model directory and pass it with --model DIR")


def _looks_like_path(name: str) -> bool:
    """A name the user meant as a path (./x, /x, ~/x, a/b/c, x.y/...), not a hub id org/name."""
    return name.startswith((".", "/", "~")) or name.count("/") != 1 or name.endswith("/")


def _nearby(path: Path) -> str:
    """'; next to it: a, b' listing the directories beside a path that does not exist (typos), or ''."""
    parent = path.parent if str(path.parent) else Path(".")
    try:
        names = sorted(p.name for p in parent.iterdir() if p.is_dir() and not p.name.startswith("."))[:8]
    except OSError:
        return ""
    return f"; {parent} holds: {', '.join(names)}" if names else ""


def check_model_path(name: str | Path, flag: str = "--model") -> None:
    """Cheap checks of a --model/--bundle value, before anything loads: a path that does not exist, a file, an unknown
    name. Raises UserError naming the fix; hub ids and random models are left to `resolve_model`."""
    name = str(name)
    if name in RANDOM_MODELS:
        return
    path = Path(name).expanduser()
    if flag == "--bundle":
        if not path.exists():
            raise UserError(f"--bundle {name} does not exist{_nearby(path)}: pass a directory written by "
                            f"rlivs export --out DIR")
        if not path.is_dir():
            raise UserError(f"--bundle {name} is a file; pass the bundle directory written by rlivs export --out DIR")
        return
    if path.exists():
        return  # a directory (checked by resolve_model) or a file (refused there)
    if _looks_like_path(name):
        raise UserError(f"--model {name} does not exist{_nearby(path)}. --model takes {VALID_MODELS}")


def resolve_model(name: str | Path) -> tuple[Path, str]:
    """-> (model directory, model id to record). Raises UserError saying how to obtain a missing model."""
    name = str(name)
    if name in RANDOM_MODELS:
        try:
            from rlivs.runtime.backends.torch.tiny import ensure_random_model
        except ImportError as e:
            raise UserError(
                f"building the {name} model needs the torch extra ({e}); install it with: "
                "pip install torch==2.13.0 && pip install 'rlivs[torch]'"
            ) from e
        return ensure_random_model(RANDOM_MODELS[name]), name
    path = Path(name).expanduser()
    if path.is_dir():
        if (path / "manifest.json").exists():  # an exported bundle: validated by its backend
            return path.resolve(), str(path.resolve())
        if not (path / "config.json").exists():
            raise UserError(f"{path} is a directory but has no config.json: point --model at an HF-format model directory")
        from .backbones import backbone_for_dir

        backbone_for_dir(path)  # a model family rlivs does not run is refused here, naming the ones it does
        return path.resolve(), str(path.resolve())
    if path.exists():
        raise UserError(f"--model {name} is a file; --model takes {VALID_MODELS}")
    if _looks_like_path(name):
        raise UserError(f"model {name!r} does not exist as a directory and is not a hub id (org/name){_nearby(path)}. "
                        f"--model takes {VALID_MODELS}")
    from huggingface_hub import snapshot_download
    from huggingface_hub.constants import HF_HUB_CACHE
    from huggingface_hub.errors import LocalEntryNotFoundError

    try:
        snap = Path(snapshot_download(name, local_files_only=True))
    except (LocalEntryNotFoundError, FileNotFoundError, OSError) as e:
        raise UserError(
            f"model {name!r} is not in the local Hugging Face cache ({HF_HUB_CACHE}) and there is no directory "
            f"{name} here; rlivs never downloads: {download_hint(name)}"
        ) from e
    log.info("model %s resolved from the local HF cache: %s", name, snap)
    return snap, name


def source_backbone(name: str | Path, bundle: bool = False):
    """The backbone (runtime/backbones) of a --model or --bundle value, from its config.json (a bundle carries the
    model's), without loading or building anything; None when that cannot be known before it loads (a random model
    this table does not name, a --bundle without a manifest). Raises UserError as `resolve_model` and a bundle's
    manifest check do (a model family rlivs does not run, a damaged bundle, ...)."""
    from .backbones import backbone_for_dir, get_backbone

    name = str(name)
    path = Path(name).expanduser()
    if bundle or (path / "manifest.json").is_file():
        from .backends.bundle import is_bundle, load_manifest

        if not is_bundle(path):
            return None  # the backend says what is wrong with it
        load_manifest(path)  # its files, and that config.json is the exported one
        return backbone_for_dir(path)
    if name in RANDOM_MODELS:
        return get_backbone(RANDOM_BACKBONES[name]) if name in RANDOM_BACKBONES else None
    model_dir = path if path.is_dir() and (path / "config.json").is_file() else resolve_model(name)[0]
    return backbone_for_dir(model_dir)
