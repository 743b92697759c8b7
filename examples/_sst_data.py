"""Sea-surface temperature data for ``examples/sst.py``: the NOAA OI SST V2 weekly loader and a
clearly labelled synthetic surrogate.

**Real data** (never downloaded here): NOAA's OI SST V2 weekly means,
``sst.wkmean.1990-present.nc`` (1,727 weeks x 180 x 360 at the paper's cut-off), from NOAA
PSL (https://psl.noaa.gov/data/gridded/data.noaa.oisst.v2.html), with the land-sea mask
``lsmask.nc`` from the same page. Layout used: a variable ``sst`` ``(time, lat, lon)``,
stored as packed integers (``scale_factor``, ``add_offset``) or floats, with missing cells
marked by ``missing_value`` / ``_FillValue`` (or NaN); coordinate variables ``time``
(days since an epoch), ``lat``, ``lon``. The mask file has ``mask`` ``(1 or time, lat,
lon)`` with 1 for ocean and 0 for land.

The file is read with ``netCDF4`` if installed, else ``xarray``, else SciPy's
``scipy.io.netcdf_file`` (NetCDF3 classic only: it needs nothing extra and reads the
small files the tests write). NOAA's current file is NetCDF4/HDF5: reading it needs
``pip install netCDF4`` (or ``xarray h5netcdf``); the loader says so if that is missing.

**Synthetic surrogate** (:func:`synthetic_sst`), used when the real file is absent and
labelled "SYNTHETIC" in every output: on a coarse latitude-longitude grid with
rectangular "continents", a latitude-dependent mean, a seasonal cycle whose phase flips
between hemispheres, a slow ENSO-like oscillation (periods 3-7 years) in the tropics, a
warming trend and AR(1) weekly noise.
"""

import os

import numpy as np

WEEKS_PER_YEAR = 365.25 / 7.0


# ----------------------------------------------------------------------------- reading

def _read_netcdf(path, names):
    """``{name: (array, attributes)}`` for the variables ``names`` of a NetCDF file, raw
    (no scaling or masking applied)."""
    with open(path, "rb") as handle:
        magic = handle.read(4)
    try:
        import netCDF4
    except ImportError:
        netCDF4 = None
    if netCDF4 is not None:
        with netCDF4.Dataset(path) as dataset:
            out = {}
            for name in names:
                var = dataset.variables[name]
                var.set_auto_maskandscale(False)
                out[name] = (np.asarray(var[...]), {k: var.getncattr(k) for k in var.ncattrs()})
            return out
    try:
        import xarray
    except ImportError:
        xarray = None
    if xarray is not None:
        with xarray.open_dataset(path, mask_and_scale=False, decode_times=False) as dataset:
            return {name: (np.asarray(dataset[name].values), dict(dataset[name].attrs))
                    for name in names}
    if magic[:3] != b"CDF":
        raise ValueError(
            f"{path} is not a NetCDF3 classic file (it starts with {magic!r}; NOAA's current "
            f"files are NetCDF4/HDF5); reading it needs netCDF4 (pip install netCDF4) or "
            f"xarray with h5netcdf (pip install xarray h5netcdf)")
    from scipy.io import netcdf_file

    with netcdf_file(path, "r", mmap=False, maskandscale=False) as dataset:
        return {name: (np.array(dataset.variables[name].data),
                       dict(dataset.variables[name]._attributes)) for name in names}


def _attribute(attributes, name):
    value = attributes.get(name)
    if isinstance(value, bytes):
        value = value.decode()
    if value is None:
        return None
    return np.asarray(value).ravel()[0]


def _unpack(raw, attributes):
    """Raw stored values -> float64 with NaN at missing cells (``missing_value``,
    ``_FillValue``, NaN), then ``scale_factor`` and ``add_offset`` applied."""
    values = raw.astype(np.float64)
    missing = ~np.isfinite(values)
    for name in ("missing_value", "_FillValue"):
        marker = _attribute(attributes, name)
        if marker is not None:
            missing |= raw == np.asarray(marker).astype(raw.dtype)
    scale = _attribute(attributes, "scale_factor")
    offset = _attribute(attributes, "add_offset")
    if scale is not None:
        values = values * float(scale)
    if offset is not None:
        values = values + float(offset)
    values[missing] = np.nan
    return values


def load_oisst(path, mask_path=None, coarsen=1):
    """Read NOAA's OI SST V2 weekly file.

    Parameters
    ----------
    path : the ``sst.wkmean.*.nc`` file (layout in the module docstring).
    mask_path : optional ``lsmask.nc`` (1 ocean, 0 land); cells it marks as land are masked.
    coarsen : average ``coarsen x coarsen`` blocks of cells (ocean cells only; a block with
        no ocean cell is land).

    Returns a dict: ``sst`` ``(T, ny, nx)`` float64 in degrees C with NaN on land,
    ``ocean`` ``(ny, nx)`` bool, ``time`` ``(T,)`` (the file's units, usually days since
    1800-01-01), ``lat`` ``(ny,)``, ``lon`` ``(nx,)``. A cell is land if the mask file says
    so, if any of its weeks is missing, or if it never changes (a filled constant).
    """
    data = _read_netcdf(path, ["sst", "time", "lat", "lon"])
    sst = _unpack(*data["sst"])
    if sst.ndim != 3:
        raise ValueError(f"{path}: sst must be (time, lat, lon); got shape {sst.shape}")
    lat, lon, time = (data[k][0].astype(np.float64) for k in ("lat", "lon", "time"))
    ocean = np.all(np.isfinite(sst), axis=0)
    # std of the cells without missing weeks (land cells are all-NaN: no warnings)
    ocean[ocean] &= np.std(sst[:, ocean], axis=0) > 0
    if mask_path is not None:
        mask = _read_netcdf(mask_path, ["mask"])["mask"][0]
        mask = mask.reshape(-1, *mask.shape[-2:])[0]
        if mask.shape != ocean.shape:
            raise ValueError(f"{mask_path}: mask has shape {mask.shape}, the sst grid is "
                             f"{ocean.shape}")
        ocean &= mask != 0
    sst[:, ~ocean] = np.nan
    if coarsen > 1:
        T, ny, nx = sst.shape
        ny, nx = ny // coarsen, nx // coarsen
        blocks = sst[:, :ny * coarsen, :nx * coarsen].reshape(T, ny, coarsen, nx, coarsen)
        count = np.isfinite(blocks[0]).sum(axis=(1, 3))
        with np.errstate(invalid="ignore"):
            sst = np.nansum(blocks, axis=(2, 4)) / np.maximum(count, 1)
        ocean = count > 0
        sst[:, ~ocean] = np.nan
        lat = lat[:ny * coarsen].reshape(ny, coarsen).mean(axis=1)
        lon = lon[:nx * coarsen].reshape(nx, coarsen).mean(axis=1)
    return dict(sst=sst, ocean=ocean, time=time, lat=lat, lon=lon)


def normalise(sst, ocean, fit_weeks=None):
    """Z-score with the mean and standard deviation of all ocean values in the weeks
    ``fit_weeks`` (a slice; default all). Returns ``(values (T, ny, nx) with 0 on land,
    mean, std)``."""
    fit = sst[fit_weeks if fit_weeks is not None else slice(None)][:, ocean]
    mean, std = float(fit.mean()), float(fit.std())
    values = np.where(ocean, (sst - mean) / std, 0.0)
    return values, mean, std


# ----------------------------------------------------------------------------- synthetic

def synthetic_sst(n_weeks=1727, n_lat=18, n_lon=36, seed=0):
    """A SYNTHETIC stand-in for the weekly SST field (not NOAA data).

    ``sst(t, lat, lon) = mean(lat) + seasonal + slow + trend + noise`` with

    * ``mean = 1 + 27 cos(lat)^2`` degrees C;
    * ``seasonal = A(lat) sign(lat) cos(2 pi (t / 52.18 - 0.2))``, ``A`` growing from 0.3
      at the equator to 4 at mid latitudes: the hemispheres are in opposite phase;
    * ``slow``: an ENSO-like oscillation in a tropical band of the eastern half, the sum
      of two sines with periods 3.7 and 6.1 years (amplitude up to 1.2);
    * ``trend`` 0.015 degrees C per year;
    * ``noise``: AR(1) per cell, coefficient 0.85 per week, stationary std 0.35.

    Rectangular "continents" are land. Returns the same dict as :func:`load_oisst` (time in
    weeks) plus ``synthetic=True``.
    """
    rng = np.random.default_rng(seed)
    lat = np.linspace(-90 + 90 / n_lat, 90 - 90 / n_lat, n_lat)
    lon = np.linspace(180 / n_lon, 360 - 180 / n_lon, n_lon)
    t = np.arange(n_weeks, dtype=np.float64)[:, None, None]
    years = t / WEEKS_PER_YEAR
    la, lo = np.meshgrid(np.radians(lat), np.radians(lon), indexing="ij")
    mean = 1.0 + 27.0 * np.cos(la) ** 2
    amplitude = 0.3 + 3.7 * np.sin(np.minimum(np.abs(la) * 1.5, np.pi / 2)) ** 2
    seasonal = amplitude * np.sign(la) * np.cos(2 * np.pi * (years - 0.2))
    band = np.exp(-(np.degrees(la) / 12.0) ** 2) * np.clip(np.sin(lo - np.pi / 2), 0, None)
    slow = 1.2 * band * (0.6 * np.sin(2 * np.pi * years / 3.7 + 0.5)
                         + 0.4 * np.sin(2 * np.pi * years / 6.1 + 2.0))
    trend = 0.015 * years
    phi, sigma = 0.85, 0.35
    noise = np.empty((n_weeks, n_lat, n_lon))
    noise[0] = sigma * rng.standard_normal((n_lat, n_lon))
    shocks = sigma * np.sqrt(1 - phi**2) * rng.standard_normal((n_weeks, n_lat, n_lon))
    for week in range(1, n_weeks):
        noise[week] = phi * noise[week - 1] + shocks[week]
    sst = mean + seasonal + slow + trend + noise
    ocean = np.ones((n_lat, n_lon), dtype=bool)
    deg_lat, deg_lon = np.meshgrid(lat, lon, indexing="ij")
    for lat0, lat1, lon0, lon1 in ((-35, 35, 10, 50), (15, 70, 60, 140), (20, 70, 240, 300),
                                   (-55, 10, 280, 320), (-40, -12, 115, 150), (-90, -65, 0, 360)):
        ocean &= ~((deg_lat >= lat0) & (deg_lat <= lat1) & (deg_lon >= lon0) & (deg_lon <= lon1))
    sst[:, ~ocean] = np.nan
    return dict(sst=sst, ocean=ocean, time=t.ravel(), lat=lat, lon=lon, synthetic=True)


def default_path():
    """Where the real file is looked for: ``$OISST_PATH`` or ``data/sst.wkmean.1990-present.nc``
    next to the repository root."""
    root = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
    return os.environ.get("OISST_PATH", os.path.join(root, "data",
                                                     "sst.wkmean.1990-present.nc"))
