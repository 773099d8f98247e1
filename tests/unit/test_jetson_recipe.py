"""The Jetson recipe's files agree: docs/jetson.md, deploy/jetson/Dockerfile, deploy/jetson/install.sh (the script CI's
device tier runs), constraints-device.txt and the opset table the runtime enforces. What a first Jetson user reads is
what CI runs."""

import re
import subprocess
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
DOC = (ROOT / "docs" / "jetson.md").read_text()
DOCKERFILE = (ROOT / "deploy" / "jetson" / "Dockerfile").read_text()
INSTALL = ROOT / "deploy" / "jetson" / "install.sh"
DEVICE_TIER = (ROOT / ".ci" / "device-tier").read_text()
PINS = dict(line.split("==", 1) for line in (ROOT / "constraints-device.txt").read_text().splitlines()
            if "==" in line and not line.startswith("#"))


def _options(script: str) -> set[str]:
    """The options install.sh's argument loop accepts."""
    return set(re.findall(r"^\s+(--[a-z-]+)(?:\|[^)]*)?\)", script, re.M))


def _install_calls(text: str, markdown: bool = False) -> list[list[str]]:
    """Every `install.sh ...` invocation in `text` (in markdown: in code blocks and inline code), as its arguments."""
    text = text.replace("\\\n", " ")
    if markdown:
        blocks = re.findall(r"^```[a-z]*\n(.*?)^```", text, re.M | re.S)
        text = "\n".join(blocks + re.findall(r"`([^`\n]+)`", re.sub(r"^```.*?^```", "", text, flags=re.M | re.S)))
    return [line.split("deploy/jetson/install.sh", 1)[1].split("#")[0].split() for line in text.splitlines()
            if "deploy/jetson/install.sh " in line and not line.lstrip().startswith("#")]


def test_every_install_call_uses_options_the_script_has():
    opts = _options(INSTALL.read_text())
    assert opts == {"--python", "--venv", "--ort", "--tensorrt", "--editable"}
    calls = {"Dockerfile": _install_calls(DOCKERFILE), "docs/jetson.md": _install_calls(DOC, markdown=True),
             ".ci/device-tier": _install_calls(DEVICE_TIER)}
    for where, found in calls.items():
        assert found, f"{where} does not run deploy/jetson/install.sh"
        for args in found:
            used = {a for a in args if a.startswith("--")}
            assert used <= opts, f"{where}: {sorted(used - opts)} are not install.sh options"
    # the image and the doc's device step install the same thing: NVIDIA's onnxruntime-gpu and TensorRT's extra
    docker = [a for a in calls["Dockerfile"] if "jetson" in a]
    assert docker and {"--ort", "jetson", "--tensorrt"} <= set(docker[0])
    assert any({"--ort", "jetson", "--tensorrt"} <= set(a) for a in calls["docs/jetson.md"])


def test_install_script_parses_and_explains_itself():
    subprocess.run(["bash", "-n", str(INSTALL)], check=True)
    out = subprocess.run(["bash", str(INSTALL), "--help"], capture_output=True, text=True, check=True).stdout
    for opt in _options(INSTALL.read_text()):
        assert opt in out
    bad = subprocess.run(["bash", str(INSTALL), "--bogus"], capture_output=True, text=True)
    assert bad.returncode == 2 and "unknown option --bogus" in bad.stderr


def test_the_image_build_never_imports_tensorrt_and_copies_the_package():
    runs = " ".join(l for l in DOCKERFILE.replace("\\\n", " ").splitlines() if l.startswith("RUN"))
    assert "import tensorrt" not in runs and "import tensorrt" not in INSTALL.read_text()
    assert "python3-libnvinfer" in runs and "constraints-device.txt" in DOCKERFILE
    linked = sorted(p.name for p in (ROOT / "rlivs").iterdir() if p.is_symlink())  # rlivs/runtime -> ../runtime ...
    copied = set(re.findall(r"^COPY (\S+) ", DOCKERFILE, re.M))
    assert linked and set(linked) | {"rlivs", "deploy"} <= copied


def test_the_device_pins_are_the_jetson_floor():
    from rlivs.runtime.backends.bundle import ORT_FOR_OPSET

    assert PINS["numpy"].startswith("1.26.")  # NVIDIA's Jetson onnxruntime-gpu is built against numpy < 2
    assert PINS["onnxruntime"].startswith(ORT_FOR_OPSET[0][1] + ".")
    assert not {"torch", "transformers", "onnxscript"} & set(PINS)
    pyproject = (ROOT / "pyproject.toml").read_text()
    assert f'"onnxruntime>={ORT_FOR_OPSET[0][1]},' in pyproject  # the `ort` extra's floor is the oldest Jetson build


def test_the_doc_tells_the_current_truth():
    from rlivs.runtime.backends.bundle import ORT_FOR_OPSET

    assert "huggingface-cli" not in DOC and "hf download" in DOC  # the pinned hub installs `hf`
    assert "no separate `rlivs check`" not in DOC and "rlivs check --bundle" in DOC
    assert "deploy/jetson/Dockerfile" in DOC and "constraints-device.txt" in DOC and "never run on a jetson" in DOC.lower()
    assert "numpy < 2" in DOC and "JETSON_PIP_INDEX" in DOC
    rows = dict(re.findall(r"^\| opset (\d+)(?:\s*and older)? \| onnxruntime >= ([\d.]+)", DOC, re.M))
    assert rows == {str(opset): v for opset, v in ORT_FOR_OPSET}  # the doc's table is the one the runtime enforces
    readme = (ROOT / "README.md").read_text()
    assert "Python 3.10+ works" not in readme


@pytest.mark.parametrize("name", ["install.sh", "check-wheels.sh"])
def test_scripts_are_executable(name):
    assert (ROOT / "deploy" / "jetson" / name).stat().st_mode & 0o111
