"""``python -m bandsolve ...``: the same as the ``bandsolve`` command."""

import sys

from .apps.cli import main

sys.exit(main())
