"""A new machine runs the README's commands and gets every test, or is told at the end of the run which tests did not
run and the one command that brings them: the summary hook of tests/conftest.py on a synthetic run (pytester), and
the README, .ci/run and the tests' own skip messages naming the same system packages."""

import re
from pathlib import Path

import pytest

from tests.conftest import APT_LINE, PIP_LINE, SYSTEM_PACKAGES, skip_fix

pytest_plugins = ["pytester"]
ROOT = Path(__file__).resolve().parents[2]

SYNTHETIC = '''
import pytest

def test_runs():
    assert True

def test_broker():
    pytest.skip("the mosquitto binary is absent: apt-get install mosquitto (.ci/run installs it)")

def test_broker_again():
    pytest.skip("the mosquitto binary is absent: apt-get install mosquitto (.ci/run installs it)")

def test_browser():
    pytest.skip("no Chromium at /usr/bin/chromium: install Debian's (apt-get install chromium; .ci/run does)")

@pytest.mark.skip(reason="needs a CUDA GPU")
def test_gpu():
    pass

def test_engine():
    pytest.importorskip("tensorrt_not_here_either", reason="tensorrt is absent")

def test_package():
    pytest.importorskip("no_such_package_rlivs")
'''


@pytest.fixture
def synthetic(pytester):
    # the hook under test, as the repository's conftest defines it (not a copy)
    pytester.makeconftest("from tests.conftest import pytest_terminal_summary  # noqa: F401\n")
    pytester.makepyfile(test_synthetic=SYNTHETIC)
    return pytester


def test_the_run_ends_with_the_skipped_tests_grouped_by_what_brings_them(synthetic):
    result = synthetic.runpytest("-q", "-rs", "-p", "no:cacheprovider")
    result.assert_outcomes(passed=1, skipped=6)
    out = result.stdout.str()
    assert out.index("short test summary info") < out.index("6 skipped: what they need")  # the run's last lines
    assert out.rstrip().splitlines()[-1].startswith("1 passed, 6 skipped")
    summary = out[out.index("6 skipped: what they need and the command that brings it"):]
    lines = summary.splitlines()
    # each group: how many, what they need, the one command; then the test ids
    mosq = lines.index(f"2 skipped: need mosquitto (the MQTT broker the MQTT tests start on loopback): {APT_LINE}")
    assert lines[mosq + 1:mosq + 3] == ["    test_synthetic.py::test_broker",
                                        "    test_synthetic.py::test_broker_again"]
    chrom = lines.index(f"1 skipped: need Chromium (the browser test): {APT_LINE}")
    assert lines[chrom + 1] == "    test_synthetic.py::test_browser"
    gpu = next(i for i, x in enumerate(lines) if x.startswith("1 skipped: need a CUDA GPU: none here"))
    assert lines[gpu + 1] == "    test_synthetic.py::test_gpu"
    trt = next(i for i, x in enumerate(lines) if x.startswith("1 skipped: need TensorRT: none here"))
    assert lines[trt + 1] == "    test_synthetic.py::test_engine"
    pkg = lines.index(f"1 skipped: need a Python package: {PIP_LINE}")
    assert lines[pkg + 1] == "    test_synthetic.py::test_package"
    assert f"all the system packages the tests use, at once (Debian/Ubuntu): {APT_LINE}" in lines
    assert "test_synthetic.py::test_runs" not in summary  # only what did not run


def test_a_run_without_skips_adds_nothing(pytester):
    pytester.makeconftest("from tests.conftest import pytest_terminal_summary  # noqa: F401\n")
    pytester.makepyfile(test_ok="def test_ok():\n    assert True\n")
    result = pytester.runpytest("-q", "-p", "no:cacheprovider")
    result.assert_outcomes(passed=1)
    assert "skipped" not in result.stdout.str()


def _skip_messages() -> list[str]:
    """The reasons the tests of the default tier give when they skip for something missing (pytest.skip calls)."""
    found = []
    for path in (ROOT / "tests").rglob("*.py"):
        if path.name == Path(__file__).name:
            continue
        text = path.read_text()
        found += re.findall(r'pytest\.skip\(\s*f?"([^"]*(?:apt-get|install)[^"]*)"', text)
    return found


def test_the_readme_names_every_system_package_the_tests_use():
    readme, ci = (ROOT / "README.md").read_text(), (ROOT / ".ci" / "run").read_text()
    # every package a test's skip message tells to apt-get install is among them ...
    asked = {m for msg in _skip_messages() for m in re.findall(r"apt-get install (\w[\w.-]*)", msg)}
    assert {"mosquitto", "chromium", "openssl"} <= asked <= set(SYSTEM_PACKAGES), asked
    # ... CI installs exactly them ...
    ci_packages = re.search(r"^SYSTEM_PACKAGES='([^']*)'", ci, re.M)
    assert ci_packages and tuple(ci_packages.group(1).split()) == SYSTEM_PACKAGES
    # ... and the README's install section gives the one line for all of them, in the block that runs the tests
    install = readme[readme.index("## Two commands"):readme.index("### Test tiers")]
    block = f"```bash\n{APT_LINE}\npython -m pytest -q\n```"
    assert block in install and install.index("pip install torch==") < install.index(block)
    for pkg in SYSTEM_PACKAGES:  # each skip reason that names a package maps to that apt line
        assert skip_fix(f"the {pkg} binary is absent")[1] == APT_LINE, pkg
