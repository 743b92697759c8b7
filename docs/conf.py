"""Sphinx configuration of the bandsolve documentation site.

Build: ``sphinx-build -W -b html docs docs/_build/html`` (warnings are errors) and
``sphinx-build -W -b doctest docs docs/_build/doctest`` (runs every example in the pages
and docstrings). Needs the ``[docs]`` extra; the adapter pages import ``bandsolve_torch``
and ``bandsolve_jax``, so install the ``[torch]`` and ``[jax]`` extras too.
"""

import os
import sys

ROOT = os.path.abspath(os.path.join(os.path.dirname(__file__), ".."))
sys.path.insert(0, os.path.join(ROOT, "adapters"))
sys.path.insert(0, ROOT)

from bandsolve import __version__  # noqa: E402

project = "bandsolve"
author = "the bandsolve developers"
copyright = "2026, the bandsolve developers"
version = release = __version__

extensions = [
    "myst_parser",
    "sphinx.ext.autodoc",
    "sphinx.ext.napoleon",
    "sphinx.ext.doctest",
    "sphinx.ext.mathjax",
]
source_suffix = {".md": "markdown", ".rst": "restructuredtext"}
myst_enable_extensions = ["dollarmath"]
exclude_patterns = ["_build"]

# signatures stay readable: the types are in the docstrings (shapes and dtypes)
autodoc_typehints = "none"
autodoc_member_order = "bysource"
autodoc_default_options = {"members": True}
napoleon_numpy_docstring = True
napoleon_google_docstring = False
napoleon_use_rtype = False
# "name : ``(..., T or 1, E)``": the shape stays one literal (a type field would be split
# at " or " and cross-referenced word by word)
napoleon_use_param = False

# the adapters' docstring examples use the names of their own module (as their tests run
# them, with the module's globals)
doctest_global_setup = """
import numpy as np
import bandsolve
try:
    import torch
    from bandsolve_torch import FrozenLHS, MechanisticLayer
except ImportError:
    pass
"""

html_theme = "alabaster"
html_title = f"bandsolve {release}"
