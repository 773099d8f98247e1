"""Run Python code in a subprocess where importing torch or transformers fails (the on-device situation)."""

import os
import subprocess
import sys
import textwrap

BLOCKER = textwrap.dedent("""
    import sys
    class _BlockTorch:
        def find_spec(self, name, path=None, target=None):
            if name.split('.')[0] in ('torch', 'transformers'):
                raise ImportError('blocked: ' + name)
    sys.meta_path.insert(0, _BlockTorch())
    TORCH_FREE = lambda: not any(m.split('.')[0] in ('torch', 'transformers') for m in sys.modules)
""")


def run_without_torch(code: str, home, timeout: int = 120, **env) -> subprocess.CompletedProcess:
    """`code` (dedented) runs after the blocker; `TORCH_FREE()` says whether torch stayed out."""
    return subprocess.run([sys.executable, "-c", BLOCKER + textwrap.dedent(code)], capture_output=True, text=True,
                          timeout=timeout, env={**os.environ, "RLIVS_HOME": str(home), **env})
