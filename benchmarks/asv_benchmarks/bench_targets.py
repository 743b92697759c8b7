"""The five CPU speed targets of issue 3 as asv ``track_`` benchmarks.

Each value is a ratio measured in one process against a baseline measured in the same
process (``bandsolve.apps.bench.Measurements``, the code behind ``bandsolve bench``), so
``asv compare`` shows how each ratio moves between commits. Limits: see
``bandsolve.apps.bench.TARGETS``. Every timing starts with an untimed call of its own size
(``bandsolve.apps.timing.best_time``), so compilation stays out of the ratios.
"""

from bandsolve.apps import bench

from .common import SMOKE


class Targets:
    params = [[row[0] for row in bench.TARGETS]]
    param_names = ["target"]
    unit = "ratio"
    timeout = 600
    rounds = 1
    sizes = bench.QUICK_SIZES if SMOKE else bench.DEFAULT_SIZES

    def track_ratio(self, target):
        return bench.Measurements(self.sizes, repeat=5).ratio(target)
