"""Installation properties a user relies on: a read-only install still imports and
solves (without Numba's disk cache, with one warning naming ``NUMBA_CACHE_DIR``), the
version is single-sourced, and ``bandsolve --version`` prints it.

The source distribution carries what the tests need, and the package description (the
long description on package indexes) has no relative links, which would not render
there, and its example runs.

Read-only is simulated so that it holds for root too (CI runs as root, and root ignores
permission bits): the package is copied to a folder where every ``__pycache__`` is a
plain *file* (so nothing can be created beside the sources) and ``HOME`` points below a
file (so no ``~/.cache`` can be created); for other users the copy is also made
read-only with ``chmod``.
"""

import os
import pathlib
import re
import shutil
import stat
import subprocess
import sys
import tarfile

import pytest

import numpy as np

import bandsolve
from bandsolve import _version

ROOT = pathlib.Path(__file__).resolve().parents[1]

# solves one tiny problem; prints the warnings it saw, then the solution's first value
_PROBE = """
import warnings
warnings.simplefilter("always")
with warnings.catch_warnings(record=True) as caught:
    import numpy as np
    import bandsolve
    c = np.zeros((5, 1, 1, 3)); c[...] = [4.0, 0.3, 1.0]
    u = bandsolve.smnn_solve(c, np.zeros((5, 1)), np.array([[[1.0, 0.0]]]), np.full(4, 0.1))
for w in caught:
    print("WARNING", w.category.__name__, str(w.message).replace("\\n", " "))
print("FIRST", bandsolve.__file__, repr(float(u[2, 0, 0])))
"""


def _read_only_copy(tmp_path):
    site = tmp_path / "site"
    shutil.copytree(ROOT / "bandsolve", site / "bandsolve",
                    ignore=shutil.ignore_patterns("__pycache__", "*.nbi", "*.nbc"))
    for folder in [site, *(p for p in site.rglob("*") if p.is_dir())]:
        (folder / "__pycache__").write_text("not a folder: nothing can be cached here\n")
    if os.geteuid() != 0:
        for path in [site, *site.rglob("*")]:
            mode = path.stat().st_mode
            path.chmod(mode & ~(stat.S_IWUSR | stat.S_IWGRP | stat.S_IWOTH))
    return site


@pytest.mark.slow
def test_read_only_install_imports_and_solves_with_one_warning(tmp_path):
    site = _read_only_copy(tmp_path)
    blocker = tmp_path / "home-is-a-file"
    blocker.write_text("")
    env = {key: value for key, value in os.environ.items()
           if not key.startswith(("NUMBA_", "XDG_"))}
    env.update(HOME=str(blocker / "home"), PYTHONPATH=str(site), PYTHONDONTWRITEBYTECODE="1")
    result = subprocess.run([sys.executable, "-c", _PROBE], cwd=tmp_path, env=env,
                            capture_output=True, text=True, timeout=900)
    assert result.returncode == 0, result.stdout + result.stderr
    lines = result.stdout.splitlines()
    first = [line for line in lines if line.startswith("FIRST")]
    assert first and str(site) in first[0], result.stdout  # the read-only copy was used
    # the same solve in this process (cached kernels): the same kernels, the same numbers
    c = np.zeros((5, 1, 1, 3))
    c[...] = [4.0, 0.3, 1.0]
    u = bandsolve.smnn_solve(c, np.zeros((5, 1)), np.array([[[1.0, 0.0]]]), np.full(4, 0.1))
    assert float(first[0].split()[-1]) == float(u[2, 0, 0])
    warned = [line for line in lines if line.startswith("WARNING")]
    assert len(warned) == 1, result.stdout
    assert "RuntimeWarning" in warned[0] and "NUMBA_CACHE_DIR" in warned[0]


def test_version_is_single_sourced():
    assert bandsolve.__version__ == _version.__version__
    text = (ROOT / "pyproject.toml").read_text()
    assert 'dynamic = ["version"]' in text
    assert 'attr = "bandsolve._version.__version__"' in text


def test_version_command():
    result = subprocess.run([sys.executable, "-m", "bandsolve", "--version"],
                            capture_output=True, text=True, timeout=120)
    assert result.returncode == 0, result.stderr
    assert result.stdout.strip() == f"bandsolve {bandsolve.__version__}"


def test_package_description_has_no_relative_links_and_its_example_runs():
    text = (ROOT / "DESCRIPTION.md").read_text()
    assert 'readme = "DESCRIPTION.md"' in (ROOT / "pyproject.toml").read_text()
    targets = re.findall(r"\]\(([^)]*)\)", text)
    assert all(re.match(r"https?://", target) for target in targets), targets
    blocks = re.findall(r"```python\n(.*?)```", text, flags=re.S)
    assert len(blocks) == 1
    namespace = {}
    exec(blocks[0], namespace)  # the package's own documented example
    assert namespace["u"].shape == (1000, 1, 3)
    assert namespace["steps_bar"].shape == (999,)


def test_sdist_carries_the_test_helpers_and_the_license(tmp_path):
    pytest.importorskip("setuptools", reason="builds the sdist with the build backend")
    build = ("import sys; from setuptools import build_meta; "
             "print(build_meta.build_sdist(sys.argv[1]))")
    result = subprocess.run([sys.executable, "-c", build, str(tmp_path)], cwd=ROOT,
                            capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, result.stdout + result.stderr
    name = result.stdout.strip().splitlines()[-1]
    with tarfile.open(tmp_path / name) as archive:
        members = {member.split("/", 1)[1] for member in archive.getnames() if "/" in member}
    for needed in ("tests/helpers.py", "tests/test_solve.py", "LICENSE", "DESCRIPTION.md",
                   "bandsolve/_version.py", "bandsolve/py.typed", "docs/conf.py"):
        assert needed in members, needed
