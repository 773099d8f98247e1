#!/usr/bin/env bash
# Do the device pins install from wheels alone, everywhere the device install runs?
#
# For CPython 3.10 and 3.12, on manylinux x86-64 and aarch64, resolve (pip install --dry-run --only-binary=:all:) the
# device requirement lists read from pyproject.toml against constraints-device.txt, straight from PyPI:
#   device: base dependencies + the ort and robotics extras (what `pip install ".[device]"` pulls in);
#   jetson: base dependencies + the robotics and tensorrt extras, no onnxruntime (NVIDIA's onnxruntime-gpu replaces it).
# Fails when a combination does not resolve, when it resolves a package constraints-device.txt does not pin, when numpy
# is not 1.26.x or onnxruntime not 1.20.1 (device; absent for jetson), or when torch or transformers (or, for device,
# onnx or onnxscript) come in.
#
# Usage: bash deploy/jetson/check-wheels.sh          (any Python >= 3.11 with pip >= 22.2; CI: the main venv)
#   PYTHON=...   the interpreter that runs pip (default: python3)
#   CHECK_WHEELS_INDEX_URL=...   the index (default: https://pypi.org/simple)
#
# Notes. pip does not widen a manylinux tag, so every glibc baseline a wheel may carry is named, up to manylinux_2_28
# (glibc 2.28: Debian 10, RHEL 8, Ubuntu 20.04+; JetPack 6 is Ubuntu 22.04, glibc 2.35). pip evaluates environment
# markers against the interpreter running it, not against --python-version/--platform, so a dependency behind a marker
# (exceptiongroup; python_version < "3.11") would be missed for 3.10: after each resolve, the markers of every resolved
# package are evaluated for the target and what they add is resolved too (against the same pins), until nothing is
# missing.
set -euo pipefail
cd "$(dirname "$0")/../.."
t0=$(date +%s)

PYTHON=${PYTHON:-python3}
INDEX_URL=${CHECK_WHEELS_INDEX_URL:-https://pypi.org/simple}
CONSTRAINTS=constraints-device.txt
PY_VERSIONS=(3.10 3.12)
ARCHES=(x86_64 aarch64)
VARIANTS=(device jetson)
MANYLINUX_TAGS=(manylinux2014 manylinux_2_17 manylinux_2_24 manylinux_2_26 manylinux_2_27 manylinux_2_28)

[ -f "$CONSTRAINTS" ] || { echo "check-wheels: $CONSTRAINTS not found"; exit 1; }
command -v "$PYTHON" >/dev/null 2>&1 || { echo "check-wheels: no $PYTHON on PATH (set PYTHON=...)"; exit 1; }

# Only PyPI and the flags below: no pip.conf (global, user, site), no PIP_* variables (extra indexes, find-links,
# constraint files). --isolated alone still reads the global pip.conf; PIP_CONFIG_FILE=/dev/null skips every file.
# A CA bundle the environment names is kept (it changes where certificates come from, not where packages come from).
cert=${PIP_CERT:-${SSL_CERT_FILE:-${REQUESTS_CA_BUNDLE:-}}}
while IFS= read -r var; do unset "$var"; done < <(compgen -e | grep '^PIP_' || true)
export PIP_CONFIG_FILE=/dev/null
cert_args=()
if [ -n "$cert" ] && [ -f "$cert" ]; then cert_args=(--cert "$cert"); fi

tmpdir=$(mktemp -d "${TMPDIR:-/tmp}/check-wheels.XXXXXX")
trap 'rm -rf "$tmpdir"' EXIT

cat > "$tmpdir/helper.py" <<'PY'
"""check-wheels.sh's helper: requirement lists from pyproject.toml, marker fix-up and checks on pip's --report JSON."""
import json
import sys

try:
    from packaging.markers import default_environment
    from packaging.requirements import Requirement
    from packaging.utils import canonicalize_name
except ImportError:  # pip vendors packaging
    from pip._vendor.packaging.markers import default_environment
    from pip._vendor.packaging.requirements import Requirement
    from pip._vendor.packaging.utils import canonicalize_name


def reqs(variant, out):
    try:
        import tomllib
    except ModuleNotFoundError:
        try:
            import tomli as tomllib
        except ModuleNotFoundError:
            sys.exit("check-wheels: reading pyproject.toml needs Python >= 3.11 (tomllib) or the tomli package; "
                     f"{sys.executable} is Python {sys.version.split()[0]}: run it under the CI venv or set PYTHON=...")
    with open("pyproject.toml", "rb") as f:
        project = tomllib.load(f)["project"]
    name, optional = canonicalize_name(project["name"]), project["optional-dependencies"]

    def expand(extras, seen):  # an extra's requirements, self-references (rlivs[ort,robotics]) expanded
        found = []
        for extra in extras:
            if extra in seen:
                continue
            seen.add(extra)
            if extra not in optional:
                sys.exit(f"check-wheels: pyproject.toml has no extra {extra!r}")
            for line in optional[extra]:
                r = Requirement(line)
                found += expand(sorted(r.extras), seen) if canonicalize_name(r.name) == name else [line]
        return found

    extras = {"device": ["device"], "jetson": ["robotics", "tensorrt"]}[variant]
    lines = list(project["dependencies"]) + expand(extras, set())
    names = {canonicalize_name(Requirement(line).name) for line in lines}
    if (variant == "device") != ("onnxruntime" in names):
        sys.exit(f"check-wheels: the {variant} requirement list {'lacks' if variant == 'device' else 'has'} onnxruntime")
    with open(out, "w") as f:
        f.write("\n".join(lines) + "\n")


def target_env(py, arch):
    env = default_environment()
    env.update(python_version=py, python_full_version=py + ".0", implementation_version=py + ".0",
               implementation_name="cpython", platform_python_implementation="CPython", platform_machine=arch,
               sys_platform="linux", platform_system="Linux", os_name="posix")
    return env


def resolved(report):
    with open(report) as f:
        items = json.load(f)["install"]
    return {canonicalize_name(i["metadata"]["name"]): i for i in items}


def missing(report, py, arch, out):
    """Requirements of resolved packages whose markers hold on the target but that pip, judging by its own
    interpreter, left out (or left unsatisfied): written to `out`, markers dropped; prints how many."""
    env, have, add = target_env(py, arch), resolved(report), set()
    for item in have.values():
        for line in item["metadata"].get("requires_dist") or []:
            r = Requirement(line)
            if r.marker is not None and not any(r.marker.evaluate({**env, "extra": e})
                                                for e in [""] + list(item.get("requested_extras") or [])):
                continue
            got = have.get(canonicalize_name(r.name))
            if got is None or not r.specifier.contains(got["metadata"]["version"], prereleases=True):
                r.marker = None
                add.add(str(r))
    with open(out, "w") as f:
        f.writelines(line + "\n" for line in sorted(add))
    print(len(add))


def merge(report, extra):
    """Add the packages of the report `extra` (the marker-only requirements, resolved against the same pins) to
    `report`; a package resolved to two versions is an error."""
    with open(report) as f:
        base = json.load(f)
    have = {canonicalize_name(i["metadata"]["name"]): i for i in base["install"]}
    for name, item in resolved(extra).items():
        if name in have and have[name]["metadata"]["version"] != item["metadata"]["version"]:
            sys.exit(f"check-wheels: {name} resolved to {have[name]['metadata']['version']} and "
                     f"{item['metadata']['version']}")
        if name not in have:
            base["install"].append(item)
    with open(report, "w") as f:
        json.dump(base, f)


def check(report, py, arch, variant, constraints, results):
    have = resolved(report)
    version = {n: i["metadata"]["version"] for n, i in have.items()}
    pins = set()
    with open(constraints) as f:
        for line in f:
            line = line.split("#", 1)[0].strip()
            if line:
                pins.add(canonicalize_name(Requirement(line).name))
    problems = []
    unpinned = sorted(n for n in version if n not in pins and n != "pip")  # pip: the installer, never pinned
    if unpinned:
        problems.append("not pinned in " + constraints + ": " + ", ".join(f"{n} {version[n]}" for n in unpinned))
    if not version.get("numpy", "").startswith("1.26."):
        problems.append(f"numpy {version.get('numpy', 'absent')} (want 1.26.x)")
    ort = version.get("onnxruntime")
    if variant == "device" and ort != "1.20.1":
        problems.append(f"onnxruntime {ort or 'absent'} (want 1.20.1)")
    if variant == "jetson" and ort is not None:
        problems.append(f"onnxruntime {ort} in the jetson set (NVIDIA's onnxruntime-gpu replaces it)")
    if variant == "jetson" and not version.get("cuda-python", "").startswith("12.6."):
        problems.append(f"cuda-python {version.get('cuda-python', 'absent')} (want 12.6.x)")
    forbidden = ["torch", "transformers"] + (["onnx", "onnxscript"] if variant == "device" else [])
    problems += [f"{n} {version[n]} must not be in the {variant} set" for n in forbidden if n in version]
    not_wheels = sorted(n for n, i in have.items() if not i["download_info"]["url"].endswith(".whl"))
    if not_wheels:
        problems.append("not wheels: " + ", ".join(not_wheels))
    result = {"python": py, "arch": arch, "variant": variant, "packages": len(version),
              "numpy": version.get("numpy"), "onnxruntime": ort, "cuda-python": version.get("cuda-python"),
              "ok": not problems, "problems": problems, "resolved": sorted(version)}
    with open(results, "a") as f:
        f.write(json.dumps(result) + "\n")
    status = "OK" if not problems else "FAIL: " + "; ".join(problems)
    print(f"py{py} {arch:7s} {variant:6s} {len(version):3d} packages  numpy {version.get('numpy')}  "
          f"onnxruntime {ort or '-'}  {status}")
    sys.exit(0 if not problems else 1)


def summary(results, constraints, seconds, failed):
    rows = []
    with open(results) as f:
        rows = [json.loads(line) for line in f if line.strip()]
    used = set().union(*(set(r["resolved"]) for r in rows)) if rows else set()
    unused = []
    with open(constraints) as f:
        for line in f:
            line = line.split("#", 1)[0].strip()
            if line and canonicalize_name(Requirement(line).name) not in used:
                unused.append(line)
    failed = failed.split()
    print(json.dumps({"ok": not failed, "combinations": len(rows) + len([f for f in failed if "unresolved" in f]),
                      "failed": failed, "pins_unused": unused, "seconds": int(seconds),
                      "results": {f"py{r['python']}/{r['arch']}/{r['variant']}":
                                  {k: r[k] for k in ("packages", "numpy", "onnxruntime", "cuda-python")}
                                  for r in rows}}))


cmd, args = sys.argv[1], sys.argv[2:]
if cmd == "reqs":
    reqs(*args)
elif cmd == "missing":
    missing(*args)
elif cmd == "merge":
    merge(*args)
elif cmd == "check":
    check(*args)
elif cmd == "summary":
    summary(*args)
PY

pip_version=$("$PYTHON" -m pip --version | awk '{print $2}')
"$PYTHON" - "$pip_version" <<'PY' || { echo "check-wheels: needs pip >= 22.2 (--dry-run --report); $PYTHON has pip $pip_version"; exit 1; }
import sys
sys.exit(0 if tuple(int(x) for x in sys.argv[1].split(".")[:2]) >= (22, 2) else 1)
PY
echo "check-wheels: $PYTHON ($("$PYTHON" --version 2>&1), pip $pip_version), index $INDEX_URL, $CONSTRAINTS"

for variant in "${VARIANTS[@]}"; do
    "$PYTHON" "$tmpdir/helper.py" reqs "$variant" "$tmpdir/reqs-$variant.txt"
done

check_one() {  # python version, arch, variant: resolve (with the marker fix-up), then check; exit status = verdict
    local py=$1 arch=$2 variant=$3 combo="py$1-$2-$3" tag round added
    local reqfile="$tmpdir/reqs-$variant.txt" report="$tmpdir/report-$combo.json" platform_args=()
    for tag in "${MANYLINUX_TAGS[@]}"; do platform_args+=(--platform "${tag}_${arch}"); done
    for round in 1 2 3 4; do
        # round 1: the whole requirement list; later rounds: only what the target's markers add (everything is pinned,
        # so the versions are those of a single resolve), merged into round 1's report
        local out=$report
        [ "$round" = 1 ] || out="$tmpdir/report-$combo-$round.json"
        if ! "$PYTHON" -m pip --isolated install --dry-run --ignore-installed --only-binary=:all: \
                --no-input --quiet --disable-pip-version-check --timeout 60 ${cert_args[@]+"${cert_args[@]}"} \
                --index-url "$INDEX_URL" --target "$tmpdir/target-$combo" \
                --python-version "$py" "${platform_args[@]}" \
                -c "$CONSTRAINTS" -r "$reqfile" --report "$out" > "$tmpdir/pip-$combo.log" 2>&1; then
            echo "py$py $arch $variant: FAIL: pip could not resolve it from wheels (round $round):"
            grep -v '^[[:space:]]*$' "$tmpdir/pip-$combo.log" | tail -n 15 | sed 's/^/    /'
            echo "    (a pin with no wheel for this Python and platform shows up as a conflict with pyproject's range)"
            return 1
        fi
        [ "$round" = 1 ] || "$PYTHON" "$tmpdir/helper.py" merge "$report" "$out" || return 1
        reqfile="$tmpdir/reqs-$combo-$((round + 1)).txt"
        added=$("$PYTHON" "$tmpdir/helper.py" missing "$report" "$py" "$arch" "$reqfile") || return 1
        if [ "$added" = 0 ]; then
            "$PYTHON" "$tmpdir/helper.py" check "$report" "$py" "$arch" "$variant" "$CONSTRAINTS" "$tmpdir/result-$combo.json"
            return  # the check's verdict
        fi
    done
    echo "py$py $arch $variant: FAIL: environment markers still add requirements after $round rounds"
    return 1
}

# The combinations run side by side (pip's cache is safe to share); their lines are printed in order.
combos=()
for py in "${PY_VERSIONS[@]}"; do
    for arch in "${ARCHES[@]}"; do
        for variant in "${VARIANTS[@]}"; do
            combos+=("$py $arch $variant")
            # shellcheck disable=SC2086
            ( if check_one $py $arch $variant > "$tmpdir/out-$py-$arch-$variant.txt" 2>&1; then rc=0; else rc=1; fi
              echo "$rc" > "$tmpdir/rc-$py-$arch-$variant" ) &
        done
    done
done
wait
failed=0 failed_list=""
for c in "${combos[@]}"; do
    set -- $c
    cat "$tmpdir/out-$1-$2-$3.txt"
    if [ "$(cat "$tmpdir/rc-$1-$2-$3" 2>/dev/null)" != 0 ]; then
        failed=$((failed + 1))
        if [ -f "$tmpdir/result-py$1-$2-$3.json" ]; then failed_list+=" py$1/$2/$3"; else failed_list+=" py$1/$2/$3:unresolved"; fi
    fi
done
expected=${#combos[@]}
cat "$tmpdir"/result-*.json > "$tmpdir/results.jsonl" 2>/dev/null || true
"$PYTHON" "$tmpdir/helper.py" summary "$tmpdir/results.jsonl" "$CONSTRAINTS" "$(( $(date +%s) - t0 ))" "$failed_list"
if [ "$failed" != 0 ]; then
    echo "check-wheels: $failed of $expected combinations failed ($(( $(date +%s) - t0 )) s)"
    exit 1
fi
echo "check-wheels: all $expected combinations resolve from wheels ($(( $(date +%s) - t0 )) s)"
