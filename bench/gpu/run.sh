#!/usr/bin/env bash
# The one-shot GPU run, what `bench/gpu/prepare.py` prints for the device tool's `run` (docs/benchmarks.md):
#   bash bench/gpu/run.sh                       # on the GPU machine, carry: bench/gpu/.carry
#   PYTHON=python bash bench/gpu/run.sh --device cpu --small   # the CPU rehearsal here
# Installs the carried wheels into a target folder (nothing is installed into the image's environment), puts it and
# the repository first on PYTHONPATH, and runs bench/gpu/run.py, whose last output line is the JSON summary; the
# summary, the log and the gpu tests' XML land in $OUT.
set -uo pipefail
cd "$(dirname "$0")/../.."
PY=${PYTHON:-python3}
OUT=${OUT:-$(mktemp -d)}
WHEELS=${RLIVS_GPU_WHEELS:-bench/gpu/.carry/wheels}
SITE=${RLIVS_GPU_SITE:-/tmp/rlivs-gpu-site}
mkdir -p "$OUT"
t0=$(date +%s)
if ! "$PY" -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target "$SITE" \
        "$WHEELS"/*.whl >"$OUT/install.log" 2>&1; then
    cat "$OUT/install.log"
    echo '{"error": "installing the carried wheels failed: see install.log; rerun bench/gpu/prepare.py here"}'
    exit 1
fi
echo "installed $(ls "$WHEELS" | wc -l) carried wheels into $SITE in $(( $(date +%s) - t0 )) s" >&2
export PYTHONPATH="$PWD:$SITE${PYTHONPATH:+:$PYTHONPATH}" PYTHONUNBUFFERED=1 HF_HUB_OFFLINE=1
export RLIVS_HOME=${RLIVS_HOME:-/tmp/rlivs-home}
"$PY" bench/gpu/run.py --out "$OUT" "$@" 2>&1 | tee "$OUT/run.log"
exit "${PIPESTATUS[0]}"
