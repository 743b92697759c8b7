"""Every ```python block of README.md runs as written in a fresh interpreter.

Each block is what a reader pastes into a new ``python`` session with the extras
installed (``.[torch,jax]``, as CI installs them), so each runs in its own subprocess with
no state from the other blocks or from this test process. A block that needs a missing
extra fails: the README promises it runs.
"""

import os
import pathlib
import re
import subprocess
import sys

import pytest

ROOT = pathlib.Path(__file__).resolve().parents[1]
README = ROOT / "README.md"
BLOCK = re.compile(r"^```python\n(.*?)^```", re.S | re.M)


def python_blocks():
    text = README.read_text()
    blocks = []
    for match in BLOCK.finditer(text):
        line = text.count("\n", 0, match.start()) + 1
        blocks.append(pytest.param(match.group(1), id=f"README.md:{line}"))
    return blocks


def test_readme_has_python_blocks():
    assert len(python_blocks()) >= 3


@pytest.mark.parametrize("source", python_blocks())
def test_readme_block_runs(source, tmp_path):
    # this checkout first (not whatever bandsolve an editable install points at)
    path = [str(ROOT), str(ROOT / "adapters"), os.environ.get("PYTHONPATH", "")]
    env = dict(os.environ, PYTHONPATH=os.pathsep.join(p for p in path if p))
    result = subprocess.run([sys.executable, "-c", source], cwd=tmp_path, env=env,
                            capture_output=True, text=True, timeout=600)
    assert result.returncode == 0, (
        f"README block failed:\n{source}\n--- stderr ---\n{result.stderr[-3000:]}")
