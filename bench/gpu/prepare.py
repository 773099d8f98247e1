"""Prepare the one-shot GPU run, here (with access to PyPI): download exactly the wheels bench/gpu/run.sh installs on
the GPU machine, check that what travels stays under the device tool's 64 MiB, and print the `carry` list and the
command to pass to its `run` (docs/benchmarks.md, "The one-shot GPU run").

The GPU image (the device tool's KINDS.md) has Python 3.12, torch 2.11 + CUDA, transformers 5.17, numpy, tokenizers,
huggingface_hub, safetensors, pillow, jinja2, rich, typer, pytest, and no PyAV, sqlite-utils, FastAPI or TensorRT.
The run needs, besides the image's own packages, the ones in NEEDED, at the versions constraints.txt pins:

    python bench/gpu/prepare.py                       # for the GPU image: cp312, manylinux x86-64
    python bench/gpu/prepare.py --python-version 3.11 --dest /tmp/rehearse-wheels   # for the CPU rehearsal here

Prints one JSON object as its last line: the wheels, their total size, the travelling size, `carry` and `command`.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
CARRY = "bench/gpu/.carry"  # ignored (.gitignore): travels only when `carry` names it
LIMIT = 64 * 2**20  # the device tool: the working tree that travels, carried paths included
MARGIN = 4 * 2**20  # room for what a session adds before the call
# package -> why the run needs it carried (the image lacks it, or has a version below our range)
NEEDED = {
    "transformers": "the image has 5.17; rlivs needs >=5.23 (pyproject), and the tests and parity ran on the pin",
    "regex": "transformers checks regex>=2025.10.22 at import; the image's version is not known",
    "sqlite-utils": "runtime.memory (the clip step's store stage, the answer path) imports it; not in the image",
    "sqlite-fts4": "required by sqlite-utils",
    "click-default-group": "required by sqlite-utils",
    "av": "the cameras_live stage replays the cameras through the service's live source (PyAV); not in the image "
          "(34 MiB: the largest wheel here)",
}
PLATFORMS = ("manylinux_2_28_x86_64", "manylinux_2_27_x86_64", "manylinux_2_17_x86_64", "manylinux2014_x86_64",
             "manylinux1_x86_64")
RUN_TIMEOUT_S = 540  # run.py's budget (450 s) + the model builds' and the last stage's overrun; under 10 min


def pins(constraints: Path) -> dict[str, str]:
    """name (lower case, '-' for '_') -> version, from constraints.txt: one source of versions."""
    out = {}
    for line in constraints.read_text().splitlines():
        line = line.split("#")[0].strip()
        if "==" in line:
            name, version = line.split("==", 1)
            out[name.strip().lower().replace("_", "-")] = version.strip()
    return out


def download(specs: list[str], dest: Path, python_version: str) -> None:
    cmd = [sys.executable, "-m", "pip", "download", "--no-deps", "--only-binary=:all:", "--python-version",
           python_version, "--implementation", "cp", "-d", str(dest), *[f"--platform={p}" for p in PLATFORMS],
           *specs]
    p = subprocess.run(cmd, capture_output=True, text=True)
    if p.returncode:
        sys.exit(f"pip download failed:\n{p.stderr[-2000:]}")


def travelling_bytes() -> int:
    """What the device tool sends without `carry`: tracked files and untracked files git does not ignore."""
    names = subprocess.run(["git", "ls-files", "-z", "--cached", "--others", "--exclude-standard"], cwd=ROOT,
                           capture_output=True, check=True).stdout.split(b"\0")
    return sum((ROOT / n.decode()).stat().st_size for n in names if n and (ROOT / n.decode()).is_file())


def main():
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--python-version", default="3.12", help="the run's Python (3.12 on the GPU image)")
    p.add_argument("--dest", type=Path, default=ROOT / CARRY / "wheels", help="where the wheels go")
    args = p.parse_args()
    versions = pins(ROOT / "constraints.txt")
    missing = [n for n in NEEDED if n not in versions]
    if missing:
        sys.exit(f"constraints.txt pins no version of {missing}: pin them first")
    args.dest.mkdir(parents=True, exist_ok=True)
    for old in args.dest.glob("*.whl"):  # one version of each: two would stop the install there
        old.unlink()
    download([f"{n}=={versions[n]}" for n in NEEDED], args.dest, args.python_version)
    wheels = sorted(args.dest.glob("*.whl"))
    got = {w.name.split("-")[0].lower().replace("_", "-") for w in wheels}
    if got != set(NEEDED):
        sys.exit(f"expected one wheel of each of {sorted(NEEDED)}, got {[w.name for w in wheels]}")
    size = sum(w.stat().st_size for w in wheels)
    tree = travelling_bytes()
    listing = [{"file": w.name, "bytes": w.stat().st_size, "sha256": hashlib.sha256(w.read_bytes()).hexdigest(),
                "why": NEEDED[w.name.split("-")[0].lower().replace("_", "-")]} for w in wheels]
    (args.dest.parent / "wheels.json").write_text(json.dumps(listing, indent=1))
    total = tree + size
    ok = total <= LIMIT - MARGIN
    for w in listing:
        print(f"{w['file']:60s} {w['bytes'] / 2**20:6.2f} MiB  {w['why']}", file=sys.stderr)
    print(f"wheels {size / 2**20:.1f} MiB + working tree {tree / 2**20:.1f} MiB = {total / 2**20:.1f} MiB of the "
          f"{LIMIT / 2**20:.0f} MiB the device tool carries ({'ok' if ok else 'TOO LARGE'})", file=sys.stderr)
    summary = {"python_version": args.python_version, "wheels": listing, "wheels_bytes": size, "tree_bytes": tree,
               "travelling_bytes": total, "limit_bytes": LIMIT, "fits": ok,
               "carry": [str(args.dest.parent.relative_to(ROOT))] if args.dest.is_relative_to(ROOT) else None,
               "command": "bash bench/gpu/run.sh", "timeout_s": RUN_TIMEOUT_S}
    print(json.dumps(summary))
    if not ok:
        sys.exit(1)


if __name__ == "__main__":
    main()
