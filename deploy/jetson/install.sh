#!/usr/bin/env bash
# The device install of rlivs: a venv that runs, ingests, asks and serves from an exported bundle, with no torch,
# transformers, onnx export tooling or CUDA wheels from PyPI. One script for every place it runs:
#
#   a Jetson (JetPack 6.1/6.2):   bash deploy/jetson/install.sh --ort jetson --tensorrt
#   the Dockerfile beside this:   the same, inside the l4t-jetpack image
#   CI's device tier (.ci/run):   bash deploy/jetson/install.sh --python python3.10 --venv DIR --ort onnxruntime==1.20.1
#   any other edge box (CPU):     bash deploy/jetson/install.sh
#
# Versions come from constraints-device.txt (numpy 1.26: NVIDIA's Jetson onnxruntime-gpu is built against numpy < 2;
# wheels for CPython 3.10 and 3.12 on manylinux x86-64 and aarch64, checked by deploy/jetson/check-wheels.sh).
#
#   --python PY     the interpreter the venv is made from (default: python3; JetPack 6's is 3.10)
#   --venv DIR      where the venv goes (default: ~/rlivs-venv); an existing venv there is reused
#   --ort SPEC      which ONNX Runtime: "pypi" (default: PyPI's CPU onnxruntime at the constraints' pin, the `device`
#                   extra), a pip requirement such as onnxruntime==1.23.2 (replaces the pin), or "jetson": NVIDIA's
#                   onnxruntime-gpu from the pip index in $JETSON_PIP_INDEX (e.g. the Jetson AI Lab index for
#                   jp6/cu126), never beside PyPI's onnxruntime
#   --tensorrt      also the `tensorrt` extra (cuda-python 12.6, onnx for rlivs build-engines), and a venv made with
#                   --system-site-packages so JetPack's TensorRT (apt: python3-libnvinfer) imports in it
#   --editable      install the checkout editable (development); default: a regular install, as on a device
#
# It never imports tensorrt (a `docker build` has no GPU); `rlivs doctor` checks the result on the device.
set -euo pipefail

here=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
repo=$(cd "$here/../.." && pwd)
python=python3 venv="$HOME/rlivs-venv" ort=pypi tensorrt=0 editable=0
while [ $# -gt 0 ]; do
    case "$1" in
        --python) python=$2; shift 2 ;;
        --venv) venv=$2; shift 2 ;;
        --ort) ort=$2; shift 2 ;;
        --tensorrt) tensorrt=1; shift ;;
        --editable) editable=1; shift ;;
        -h|--help) sed -n '2,/^set -euo/p' "$0" | sed '$d; s/^# \{0,1\}//'; exit 0 ;;
        *) echo "install.sh: unknown option $1 (see --help)" >&2; exit 2 ;;
    esac
done
say() { printf '== rlivs device install: %s\n' "$*"; }
die() { printf 'install.sh: %s\n' "$*" >&2; exit 1; }

constraints="$repo/constraints-device.txt"
[ -f "$constraints" ] || die "no $constraints: run this script from an rlivs checkout"
command -v "$python" >/dev/null 2>&1 || [ -x "$python" ] || die "no Python at '$python': pass --python (JetPack 6: python3, 3.10)"
"$python" -c 'import sys; sys.exit(sys.version_info < (3, 10))' \
    || die "$("$python" --version 2>&1) is too old: rlivs needs Python 3.10 or later"
"$python" -c 'import venv, ensurepip' 2>/dev/null \
    || die "$python has no venv/ensurepip: sudo apt-get install python3-venv python3-pip"

# 1. the venv (JetPack's TensorRT bindings live in the system Python: only --system-site-packages sees them)
if [ ! -x "$venv/bin/python" ]; then
    say "venv $venv from $("$python" --version 2>&1)$([ $tensorrt = 1 ] && echo ', with system site-packages')"
    if [ $tensorrt = 1 ]; then "$python" -m venv --system-site-packages "$venv"; else "$python" -m venv "$venv"; fi
fi
pip=("$venv/bin/python" -m pip --disable-pip-version-check)

# 2. which ONNX Runtime, and the constraints that go with it (a given requirement replaces the pin)
extras=device
work=$(mktemp -d); trap 'rm -rf "$work"' EXIT
cp "$constraints" "$work/constraints.txt"
case "$ort" in
    pypi) ;;
    jetson)
        [ -n "${JETSON_PIP_INDEX:-}" ] || die "--ort jetson needs JETSON_PIP_INDEX: the pip index of NVIDIA's Jetson \
builds for your JetPack (docs/jetson.md, 'Install on the device')"
        grep -v -i -E '^onnxruntime(-gpu)?==' "$constraints" > "$work/constraints.txt"
        say "onnxruntime-gpu from $JETSON_PIP_INDEX"
        "${pip[@]}" install -c "$work/constraints.txt" --extra-index-url "$JETSON_PIP_INDEX" "onnxruntime-gpu>=1.20"
        extras=robotics ;;  # the device extra less PyPI's CPU onnxruntime: the two are one module, never install both
    onnxruntime*)
        grep -v -i -E '^onnxruntime(-gpu)?==' "$constraints" > "$work/constraints.txt"
        echo "$ort" >> "$work/constraints.txt" ;;
    *) die "--ort $ort: use pypi, jetson or a requirement such as onnxruntime==1.23.2" ;;
esac
[ $tensorrt = 1 ] && extras="$extras,tensorrt"

# 3. rlivs itself, pinned by the device constraints
target="$repo[$extras]"
say "pip install -c constraints-device.txt '$target'"
if [ $editable = 1 ]; then
    "${pip[@]}" install -c "$work/constraints.txt" -e "$target"
else
    "${pip[@]}" install -c "$work/constraints.txt" "$target"
fi
"${pip[@]}" check

# 4. what was installed: one ONNX Runtime, numpy 1.x beside a Jetson build, no torch/transformers/export tooling
"$venv/bin/python" - "$ort" <<'PY'
import sys
from importlib import metadata


def version(dist):
    try:
        return metadata.version(dist)
    except metadata.PackageNotFoundError:
        return None


ort = [d for d in ("onnxruntime", "onnxruntime-gpu") if version(d)]
if len(ort) != 1:
    sys.exit(f"install.sh: expected one ONNX Runtime, found {ort or 'none'}: uninstall the extra one "
             f"(pip uninstall onnxruntime); they are the same module")
heavy = [d for d in ("torch", "transformers", "onnxscript") if version(d)]
if heavy:
    sys.exit(f"install.sh: the device install pulled {heavy}; it must not (report this as a bug)")
numpy = version("numpy")
if sys.argv[1] == "jetson" and not numpy.startswith("1."):
    sys.exit(f"install.sh: numpy {numpy} beside NVIDIA's onnxruntime-gpu, which is built against numpy < 2")
import numpy as np, onnxruntime as rt  # noqa: E401,E402 - the import is the check
print(f"== rlivs device install: python {sys.version.split()[0]}, numpy {np.__version__}, {ort[0]} {rt.__version__} "
      f"(providers {', '.join(rt.get_available_providers())}), rlivs {version('rlivs')}")
PY
"$venv/bin/rlivs" --version
say "done: . $venv/bin/activate && rlivs doctor"
