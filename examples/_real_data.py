"""Real time series that ship inside ``statsmodels`` (read offline, never downloaded).

* :func:`load_co2`: weekly atmospheric CO2 at Mauna Loa, March 1958 - December 2001
  (``statsmodels.datasets.co2``; 2,284 weeks, 59 of them missing, in ppm);
* :func:`load_elnino`: monthly sea-surface temperature of the Nino 1+2 region,
  1950-2010 (``statsmodels.datasets.elnino``; 732 months, in degrees C).

Both return a :class:`Series`: ``values`` ``(T,)`` float64 with NaN where a value is
missing, ``years`` ``(T,)`` the decimal calendar year of each sample, and
``per_year`` samples per year. :func:`interpolate` fills the gaps linearly in time (for
the inputs of methods that need complete windows; errors and losses are still taken at
observed samples only).

Example::

    >>> co2 = load_co2()
    >>> co2.values.shape, int(np.isnan(co2.values).sum())
    ((2284,), 59)
"""

from dataclasses import dataclass

import numpy as np

WEEKS_PER_YEAR = 365.25 / 7.0


@dataclass(frozen=True)
class Series:
    name: str
    unit: str
    values: np.ndarray   # (T,) float64, NaN where missing
    years: np.ndarray    # (T,) decimal calendar year of each sample
    per_year: float      # samples per year (52.18 weekly, 12 monthly)


def _statsmodels_datasets():
    try:
        import statsmodels.datasets as datasets
    except ImportError:
        raise SystemExit("the real-data examples need statsmodels: pip install statsmodels "
                         "(or pip install -e .[examples])") from None
    return datasets


def load_co2():
    """Weekly Mauna Loa CO2 (ppm), NaN for the 59 missing weeks."""
    frame = _statsmodels_datasets().co2.load_pandas().data
    dates = frame.index.to_numpy().astype("datetime64[D]")
    gaps = np.diff(dates).astype(int)
    if not np.all(gaps == 7):
        raise ValueError(f"co2: expected a regular weekly index, found gaps {set(gaps)}")
    days = (dates - np.datetime64("1958-01-01", "D")).astype(float)
    years = 1958.0 + days / 365.25
    return Series("Mauna Loa CO2 (weekly)", "ppm",
                  frame["co2"].to_numpy(dtype=np.float64), years, WEEKS_PER_YEAR)


def load_elnino():
    """Monthly Nino 1+2 sea-surface temperature (C), 1950-2010."""
    frame = _statsmodels_datasets().elnino.load_pandas().data
    table = frame.drop(columns="YEAR").to_numpy(dtype=np.float64)   # (61, 12)
    first = frame["YEAR"].to_numpy()[:, None]
    years = (first + (np.arange(12)[None, :] + 0.5) / 12.0).ravel()
    return Series("Nino 1+2 SST (monthly)", "C", table.ravel(), years, 12.0)


def interpolate(values):
    """``values`` ``(T,)`` with NaN gaps filled linearly (ends held constant)."""
    values = np.asarray(values, dtype=np.float64)
    observed = ~np.isnan(values)
    if observed.all():
        return values.copy()
    index = np.arange(values.size)
    return np.interp(index, index[observed], values[observed])
