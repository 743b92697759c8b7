"""The ``bandsolve`` command and what it runs (not part of the library's API).

- :mod:`bandsolve.apps.cli`: the ``bandsolve`` console script (``python -m bandsolve``).
- :mod:`bandsolve.apps.demo`: ``bandsolve demo``, the standalone validation and speed check.
- :mod:`bandsolve.apps.bench`: ``bandsolve bench``, the CPU speed targets as ratios.
"""
