"""A failure inside rlivs (not a refusal of the user's input) is one line naming the component, exit 1; --debug or
RLIVS_DEBUG=1 shows the traceback. The API answers a JSON 500 with the same detail."""

import os
import subprocess
import sys
import textwrap

import pytest

# Runs the real `rlivs` entry point (rlivs.edge_app.cli:main) with the torch backend's step broken the way a
# transformers release broke it (a TypeError raised inside TorchBackend.step).
BROKEN_STEP = textwrap.dedent("""
    import sys
    from rlivs.runtime.backends.torch import backend as tb
    def broken(cache):  # what TorchBackend.step calls to pass its cache to transformers
        raise TypeError("StaticKV.update() got an unexpected keyword argument 'kwargs'")
    tb.cache_kwargs = broken
    from rlivs.edge_app.cli import main
    sys.argv = ["rlivs", *sys.argv[1:]]
    main()
""")


def _rlivs_broken(tmp_path, *args, **env):
    return subprocess.run([sys.executable, "-c", BROKEN_STEP, *map(str, args)], capture_output=True, text=True,
                          timeout=300, cwd=tmp_path, env={**os.environ, "COLUMNS": "400", **env})


@pytest.fixture(scope="module")
def broken_args(sample_video, tiny_dir, tmp_path_factory):
    db = tmp_path_factory.mktemp("broken") / "m.db"
    return ["ingest", sample_video, "--db", db, "--model", "tiny", "--frames-per-clip", "4",
            "--max-caption-tokens", "4", "--max-clips", "1"]


def test_backend_failure_is_one_line_exit_1(tmp_path, broken_args):
    r = _rlivs_broken(tmp_path, *broken_args)
    assert r.returncode == 1, (r.returncode, r.stderr[-2000:])
    err = " ".join(r.stderr.split())
    assert "Traceback" not in r.stderr and "internal error: the torch backend failed: TypeError:" in err
    assert "unexpected keyword argument 'kwargs'" in err and "rlivs --debug" in err
    error_lines = [line for line in r.stderr.splitlines() if "internal error" in line]
    assert len(error_lines) == 1


@pytest.mark.parametrize("how", ["flag", "env"])
def test_debug_shows_the_traceback(tmp_path, broken_args, how):
    if how == "flag":
        r = _rlivs_broken(tmp_path, "--debug", *broken_args)
    else:
        r = _rlivs_broken(tmp_path, *broken_args, RLIVS_DEBUG="1")
    assert r.returncode != 0 and "Traceback" in r.stderr and "TypeError" in r.stderr
    assert "internal error:" not in r.stderr


def test_a_numpy_style_value_error_is_a_bug_not_the_users_mistake(tmp_path, broken_args):
    """Only UserError means "your input": a plain ValueError from inside (a shape bug) is an internal error, exit 1."""
    code = BROKEN_STEP.replace('raise TypeError("StaticKV.update() got an unexpected keyword argument \'kwargs\'")',
                               'raise ValueError("operands could not be broadcast together with shapes (3,) (4,)")')
    r = subprocess.run([sys.executable, "-c", code, *map(str, broken_args)], capture_output=True, text=True,
                       timeout=300, cwd=tmp_path, env={**os.environ, "COLUMNS": "400"})
    err = " ".join(r.stderr.split())
    assert r.returncode == 1 and "internal error: the torch backend failed: ValueError: operands could not" in err


def test_a_refusal_is_still_exit_2_not_an_internal_error(tmp_path, sample_video, tiny_dir):
    r = _rlivs_broken(tmp_path, "ingest", sample_video, "--db", tmp_path / "x.db", "--fps", "-1")
    assert r.returncode == 2 and "fps must be > 0" in r.stderr and "internal error" not in r.stderr


def test_failed_component_names_the_innermost_rlivs_module():
    from rlivs.edge_app.options import failed_component

    def raise_from(filename: str):
        code = compile("def f():\n    raise RuntimeError('x')\n", filename, "exec")
        ns: dict = {}
        exec(code, ns)  # noqa: S102 - a function whose frames carry the given file name
        try:
            ns["f"]()
        except RuntimeError as e:
            return e

    assert failed_component(raise_from("/x/runtime/backends/onnxruntime/backend.py")) == "the ONNX Runtime backend"
    assert failed_component(raise_from("/x/runtime/memory.py")) == "the memory"
    assert failed_component(raise_from("/x/elsewhere.py")) == "rlivs"
