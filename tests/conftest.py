"""Shared fixtures. Nothing here touches the network: the tiny model and videos are built locally."""

import os
import shutil
import tempfile
from pathlib import Path

# Before anything imports huggingface_hub: never reach a hub, and keep the tiny-model cache per session.
os.environ.setdefault("HF_HUB_OFFLINE", "1")
# Rich wraps CLI output at the terminal width (80 without a terminal): a long temp path would split the words the
# tests look for, differently under CI's longer temp dirs. A wide "terminal" keeps each message on one line.
os.environ.setdefault("COLUMNS", "240")
_OWN_HOME = None  # the per-session model cache this conftest made (removed at the end: random-0.5b is 3.4 GB)
if "RLIVS_HOME" not in os.environ:
    _OWN_HOME = os.environ["RLIVS_HOME"] = tempfile.mkdtemp(prefix="rlivs-test-home-")

import pytest  # noqa: E402


@pytest.fixture(scope="session")
def tiny_dir() -> Path:
    pytest.importorskip("torch")
    from rlivs.runtime.backends.torch.tiny import ensure_tiny_model

    return ensure_tiny_model()


@pytest.fixture(scope="session")
def sample_video(tmp_path_factory) -> Path:
    from rlivs.edge_app.sample_video import make_sample_video

    return make_sample_video(tmp_path_factory.mktemp("video") / "sample.mp4", seconds=20.0)


@pytest.fixture(scope="session")
def bundle(tmp_path_factory, tiny_dir):
    """The tiny model exported for ONNX Runtime with the default ExportConfig (float32 embeddings for this target:
    the parity tests prove the default bundle equal to the reference)."""
    pytest.importorskip("onnxscript")
    from rlivs.export.bundle import ExportConfig, export_bundle

    out = tmp_path_factory.mktemp("bundle") / "tiny"
    export_bundle("tiny", out, ExportConfig())
    return out


@pytest.fixture(scope="session")
def bundle_opset23(tmp_path_factory, tiny_dir):
    """The tiny model at opset 23 (ONNX Runtime's fused Attention, RotaryEmbedding, RMSNormalization): the explicit
    choice that needs onnxruntime >= 1.23; the default bundle is opset 20."""
    pytest.importorskip("onnxscript")
    from rlivs.export.bundle import ExportConfig, export_bundle

    out = tmp_path_factory.mktemp("bundle23") / "tiny"
    export_bundle("tiny", out, ExportConfig(opset=23, check=False))
    return out


_OWN_BASETEMP = None  # this session's own temp root (removed at the end, like every tmp_path: retention "none")


def pytest_configure(config):
    # A temp root of the session's own: pytest's shared /tmp/pytest-of-USER/pytest-N numbering lets concurrent runs
    # delete each other's directories (a second run cleans up "old" numbered dirs the first is still using).
    global _OWN_BASETEMP
    if config.option.basetemp is None and not hasattr(config, "workerinput"):
        _OWN_BASETEMP = config.option.basetemp = tempfile.mkdtemp(prefix="rlivs-pytest-")


def pytest_sessionfinish(session, exitstatus):
    if _OWN_HOME:
        shutil.rmtree(_OWN_HOME, ignore_errors=True)
    if _OWN_BASETEMP:
        shutil.rmtree(_OWN_BASETEMP, ignore_errors=True)


# Skips CI accepts under RLIVS_STRICT_SKIPS=1 (set by .ci/run): what no CPU machine of ours can have. Any other skip
# (a package that did not import, Chromium missing, ...) means an install step is missing, and fails the test there.
ALLOWED_SKIPS = ("needs a CUDA GPU", "tensorrt", "TensorRT", "ModelOpt")

# The system packages the default tier drives (Debian/Ubuntu names): one apt line brings them all. README ("Two
# commands") and .ci/run name the same line (tests/unit/test_install.py checks it).
SYSTEM_PACKAGES = ("chromium", "mosquitto", "openssl")
APT_LINE = "sudo apt-get install -y " + " ".join(SYSTEM_PACKAGES)
PIP_LINE = 'pip install -c constraints.txt -e ".[all]" --config-settings editable_mode=strict'
# Why a test was skipped -> (what it needs, the one command that brings it), first match wins. The summary at the end
# of a run groups the skipped tests by these (pytest_terminal_summary below).
SKIP_FIXES = (
    (("mosquitto",), "mosquitto (the MQTT broker the MQTT tests start on loopback)", APT_LINE),
    (("Chromium", "chromium"), "Chromium (the browser test)", APT_LINE),
    (("openssl",), "the openssl command (the MQTT TLS test's certificates)", APT_LINE),
    (("needs a CUDA GPU", "cuda.bindings"), "a CUDA GPU", "none here: run python -m pytest -q -m gpu on a machine "
                                                           "with an NVIDIA GPU (docs/benchmarks.md)"),
    (("is importable here",), "a machine without that package (they test its absence)", "none: they run where it is "
                                                                                          "not installed"),
    (("tensorrt", "TensorRT"), "TensorRT", "none here: TensorRT comes with JetPack on a Jetson (docs/jetson.md)"),
    (("ModelOpt", "modelopt"), "NVIDIA ModelOpt",
     "pip install --no-deps nvidia-modelopt==0.47.0 (docs/calibration.md)"),
    (("could not import", "No module named", "playwright"), "a Python package", PIP_LINE),
)


def skip_reason(report) -> str:
    """The reason a skipped test or module gave (pytest.skip / importorskip / a skip marker)."""
    reason = str(report.longrepr[2] if isinstance(report.longrepr, tuple) else report.longrepr)
    return reason.removeprefix("Skipped: ")


def skip_fix(reason: str) -> tuple[str, str]:
    """(what the skipped test needs, the command that brings it) for a skip reason."""
    for keys, needs, fix in SKIP_FIXES:
        if any(k in reason for k in keys):
            return needs, fix
    return "something else", f"read its reason (python -m pytest -rs ...): {reason}"


def skip_summary(reports) -> list[str]:
    """The lines that end a run with skips: the skipped tests grouped by what they need, each group with the one
    command that brings it; then, when system packages are missing, the one apt line for all of them."""
    groups: dict[tuple[str, str], list[str]] = {}
    for r in reports:
        groups.setdefault(skip_fix(skip_reason(r)), []).append(r.nodeid or str(getattr(r, "fspath", "?")))
    lines = []
    for (needs, fix), ids in groups.items():
        lines.append(f"{len(ids)} skipped: need {needs}: {fix}")
        lines += [f"    {i}" for i in ids[:8]] + ([f"    ... and {len(ids) - 8} more"] if len(ids) > 8 else [])
    if any(fix == APT_LINE for _, fix in groups):
        lines.append(f"all the system packages the tests use, at once (Debian/Ubuntu): {APT_LINE}")
    return lines


@pytest.hookimpl(hookwrapper=True, tryfirst=True)  # around pytest's own summary: after it, before the counts
def pytest_terminal_summary(terminalreporter, exitstatus, config):
    yield
    skipped = terminalreporter.stats.get("skipped", [])
    if skipped:
        terminalreporter.write_sep("=", f"{len(skipped)} skipped: what they need and the command that brings it")
        for line in skip_summary(skipped):
            terminalreporter.write_line(line)


def _strict(report) -> None:
    """Under RLIVS_STRICT_SKIPS, turn a skip that CI does not accept into a failure that says why."""
    if not report.skipped or os.environ.get("RLIVS_STRICT_SKIPS", "") in ("", "0") or hasattr(report, "wasxfail"):
        return
    reason = skip_reason(report)
    if not any(a in reason for a in ALLOWED_SKIPS):
        report.outcome = "failed"
        report.longrepr = (f"skipped under RLIVS_STRICT_SKIPS ({reason}): an install step is missing; "
                           f".ci/run installs everything the tests need (README, pyproject extras, apt packages)")


@pytest.hookimpl(hookwrapper=True)
def pytest_runtest_makereport(item, call):
    outcome = yield
    _strict(outcome.get_result())


@pytest.hookimpl(hookwrapper=True)
def pytest_make_collect_report(collector):
    outcome = yield  # a module-level importorskip skips the whole file here, before any test runs
    _strict(outcome.get_result())


TIERS = Path(__file__).resolve().parent
FOLDER_MARKERS = {"slow": pytest.mark.slow, "gpu": pytest.mark.gpu}  # the marker is the folder: tests/slow/, tests/gpu/


@pytest.hookimpl(tryfirst=True)  # before pytest's own -m deselection
def pytest_collection_modifyitems(config, items):
    for item in items:
        try:
            folder = Path(str(item.path)).resolve().relative_to(TIERS).parts[0]
        except ValueError:
            continue
        if folder in FOLDER_MARKERS:
            item.add_marker(FOLDER_MARKERS[folder])
    try:
        import torch

        has_cuda = torch.cuda.is_available()
    except ImportError:
        has_cuda = False
    skip = pytest.mark.skip(reason="needs a CUDA GPU")
    for item in items:
        if "gpu" in item.keywords and not has_cuda:
            item.add_marker(skip)
