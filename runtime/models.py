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
RANDOM_MODELS = {"tiny": "tiny", "tiny-gqa": "tiny-gqa", "random-0.5b": "0.5b"}  # name -> size; random weights, built locally


def resolve_model(name: str | Path) -> tuple[Path, str]:
    """-> (model directory, model id to record). Raises ValueError saying how to obtain a missing model."""
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
        return path.resolve(), str(path.resolve())
    if path.exists():
        raise UserError(f"--model {name} is a file; give an HF-format model directory, a hub id, or 'tiny'")
    if name.count("/") != 1 or name.startswith((".", "/")):
        raise UserError(f"model {name!r} is neither a directory nor a hub id (org/name) nor 'tiny'")
    from huggingface_hub import snapshot_download
    from huggingface_hub.constants import HF_HUB_CACHE
    from huggingface_hub.errors import LocalEntryNotFoundError

    try:
        snap = Path(snapshot_download(name, local_files_only=True))
    except (LocalEntryNotFoundError, FileNotFoundError, OSError) as e:
        raise UserError(
            f"model {name!r} is not in the local Hugging Face cache ({HF_HUB_CACHE}); rlivs never downloads. "
            f"On a connected machine run `huggingface-cli download {name}` and copy the cache here (or set HF_HOME), "
            f"or pass a local model directory with --model"
        ) from e
    log.info("model %s resolved from the local HF cache: %s", name, snap)
    return snap, name
