"""The real-data examples' ``--quick`` forms, checked against baselines of the same run.

* ``forecast.py --quick`` (CO2): the S-MNN forecast beats persistence, seasonal naive and
  climatology in every lead-time band; persistence and seasonal-naive errors are
  recomputed here from the raw statsmodels data (an independent check of the script's
  splits, masking and scoring);
* ``lorenz_vs_sindy.py --quick``: PySINDy and bandsolve both recover the exact support at
  0% noise (checked here from the coefficient matrices) within 10% and 2%;
* ``forecast_scaling.py --quick``: every bandsolve length measured, the dense baseline
  stopped at its memory budget inside the run; its dense solve equals
  ``bandsolve.baselines.mnn_dense_solve``.

Together about 30-60 s on 2 idle cores (process start-up, Numba cache loading, the
100-iteration quick training and three ETS fits), so the three runs are marked ``slow``
(CI runs them; ``-m "not slow"`` leaves them out).
"""

import sys

import numpy as np
import pytest

from helpers import EXAMPLES_DIR, run_example

pytest.importorskip("torch", reason="the forecaster trains through the PyTorch adapter")
pytest.importorskip("statsmodels", reason="the real series ship inside statsmodels "
                                          "(pip install -e .[examples])")


@pytest.fixture(scope="module")
def examples_path():
    sys.path.insert(0, str(EXAMPLES_DIR))
    yield
    sys.path.remove(str(EXAMPLES_DIR))


def test_loaders(examples_path):
    from _real_data import interpolate, load_co2, load_elnino

    co2, nino = load_co2(), load_elnino()
    assert co2.values.shape == (2284,) and int(np.isnan(co2.values).sum()) == 59
    assert nino.values.shape == (732,) and not np.isnan(nino.values).any()
    for series in (co2, nino):
        assert np.all(np.diff(series.years) > 0)
        np.testing.assert_allclose(np.diff(series.years).mean(), 1 / series.per_year,
                                   rtol=1e-3)
    filled = interpolate(co2.values)
    observed = ~np.isnan(co2.values)
    assert not np.isnan(filled).any()
    np.testing.assert_array_equal(filled[observed], co2.values[observed])


@pytest.mark.slow
def test_forecast_quick(tmp_path, examples_path):
    from _real_data import interpolate, load_co2

    metrics, stdout = run_example("forecast.py", tmp_path)
    co2 = metrics["datasets"]["co2"]
    assert set(co2["rmse"]) == {"smnn", "persistence", "seasonal_naive", "climatology",
                                "ets"}
    assert co2["bands"] == ["first quarter", "year 1", "year 2", "year 3", "year 4"]
    rmse = {k: np.asarray(v) for k, v in co2["rmse"].items()}
    for baseline in ("persistence", "seasonal_naive", "climatology"):
        assert np.all(rmse["smnn"] < rmse[baseline]), (baseline, co2["rmse"])

    # persistence and seasonal naive recomputed from the raw data, masked the same way
    series = load_co2()
    filled = interpolate(series.values)
    H = co2["horizon"]
    assert co2["train_end"] == 2284 - 416 and H == 208
    assert all(co2["train_end"] <= o <= 2284 - H for o in co2["origins"])
    lead = np.arange(H)
    errors = {"persistence": [], "seasonal_naive": []}
    for o in co2["origins"]:
        truth = series.values[o:o + H]
        errors["persistence"].append(filled[o - 1] - truth)
        errors["seasonal_naive"].append(filled[o + lead - 52 * (lead // 52 + 1)] - truth)
    for method, error in errors.items():
        error = np.stack(error)
        year4 = error[:, 156:208]
        expected = np.sqrt(np.nanmean(year4**2))
        np.testing.assert_allclose(co2["rmse"][method][-1], expected, rtol=1e-12)
    assert "RMSE / MAE" in stdout


@pytest.mark.slow
def test_lorenz_vs_sindy_quick(tmp_path, examples_path):
    pytest.importorskip("pysindy", reason="the comparison needs pysindy "
                                          "(pip install -e .[examples])")
    from lorenz_discovery import true_coefficients

    metrics, _ = run_example("lorenz_vs_sindy.py", tmp_path)
    truth = true_coefficients()
    support = truth != 0
    clean = {r["method"]: np.asarray(r["coefficients"]) for r in metrics["rows"]
             if r["noise"] == 0.0}
    assert set(clean) == {"sindy", "sindy_smoothed", "bandsolve", "bandsolve_smoothed"}
    for method, bound in (("sindy", 0.10), ("bandsolve", 0.02)):
        xi = clean[method]
        np.testing.assert_array_equal(xi != 0, support, err_msg=method)
        relative = np.abs(xi[support] - truth[support]) / np.abs(truth[support])
        assert relative.max() < bound, (method, relative)
    assert {r["noise"] for r in metrics["rows"]} == {0.0, 0.05}


@pytest.mark.slow
def test_forecast_scaling_quick(tmp_path):
    metrics, _ = run_example("forecast_scaling.py", tmp_path)
    rows = metrics["rows"]
    assert [r["T"] for r in rows] == [52, 104, 208, 416]
    assert all(r["bandsolve_seconds"] > 0 for r in rows)
    status = [r["dense_status"] for r in rows]
    assert status[0] == "ok" and status[-1] == "over budget", status
    first_stop = status.index("over budget")
    assert all(s == "over budget" for s in status[first_stop:])
    assert rows[first_stop]["dense_predicted_bytes"] > metrics["budget_bytes"]


def test_dense_solve_matches_the_baseline(examples_path):
    torch = pytest.importorskip("torch")
    from forecast_scaling import dense_solve_factory

    from bandsolve.baselines import mnn_dense_solve

    rng = np.random.default_rng(0)
    B, T, Ti, h = 2, 30, 10, 0.1
    coefficients = rng.uniform(0.5, 2.0, (B, 1, 1, 1, 3))
    rhs = rng.standard_normal((B, T, 1))
    init = rng.standard_normal((B, Ti, 1, 1))
    u = dense_solve_factory()(torch.from_numpy(coefficients), torch.from_numpy(rhs),
                              torch.from_numpy(init), torch.full((B, 1), h, dtype=torch.float64),
                              T).numpy()
    for b in range(B):
        reference = mnn_dense_solve(np.broadcast_to(coefficients[b], (T, 1, 1, 3)), rhs[b],
                                    init[b], np.full(T - 1, h))
        # both are float64 dense Cholesky solves of the same normal equations
        np.testing.assert_allclose(u[b], reference, rtol=0, atol=1e-9 * np.abs(reference).max())
