"""The measuring instruments: the asv suite, ``bandsolve bench`` and the problem generator.

Nothing here times anything against a limit (speed is measured by the instruments, never
asserted in a unit test); the tests make sure the instruments run, measure what they
claim, and cannot rot while the kernels change:

* the asv suite is discovered by asv (``asv check``), runs through asv's own harness
  (one benchmark, smoke sizes), and every benchmark runs at the smallest grid point;
* the LAPACK and dense baselines solve the same system as bandsolve;
* ``bandsolve bench --quick`` prints the target table and writes JSON and the PNG;
* :func:`bandsolve.problems.coupled_oscillators` is well posed in float32 and is the ODE
  it claims to be (against ``scipy.integrate.solve_ivp``).

Runtime: about 30 s on 2 cores with a warm Numba cache (subprocesses load the kernels).
"""

import importlib
import importlib.util
import inspect
import itertools
import json
import os
import pathlib
import subprocess
import sys

import numpy as np
import pytest
import scipy.integrate

import bandsolve
from bandsolve.apps import bench
from bandsolve.problems import coupled_oscillators

ROOT = pathlib.Path(__file__).resolve().parents[1]
BENCHMARK_MODULES = ("bench_smnn", "bench_baselines", "bench_targets")
BENCHMARK_PREFIXES = ("time_", "peakmem_", "track_", "mem_", "timeraw_")


def _asv(*args, env=None, timeout=300):
    return subprocess.run([sys.executable, "-m", "asv", *args], cwd=ROOT, env=env,
                          capture_output=True, text=True, timeout=timeout)


def _asv_config(tmp_path):
    """The repository's asv.conf.json with asv's output dirs moved to ``tmp_path`` (asv
    run writes benchmarks.json and machine.json even with --dry-run)."""
    lines = (ROOT / "asv.conf.json").read_text().splitlines()
    config = json.loads("\n".join(line for line in lines if not line.lstrip().startswith("//")))
    config.update(repo=str(ROOT), benchmark_dir=str(ROOT / config["benchmark_dir"]),
                  results_dir=str(tmp_path / "results"), html_dir=str(tmp_path / "html"),
                  env_dir=str(tmp_path / "env"))
    path = tmp_path / "asv.conf.json"
    path.write_text(json.dumps(config))
    return str(path)


def _benchmark_module(name):
    if str(ROOT / "benchmarks") not in sys.path:
        sys.path.insert(0, str(ROOT / "benchmarks"))
    return importlib.import_module(f"asv_benchmarks.{name}")


# ----------------------------------------------------------------------------- asv suite

def test_asv_discovers_the_suite(tmp_path):
    pytest.importorskip("asv", reason="the asv suite needs the [bench] extra")
    out = _asv("check", "--python=same", "--config", _asv_config(tmp_path))
    assert out.returncode == 0, out.stdout + out.stderr
    assert "No problems found" in out.stdout + out.stderr


def _benchmarks():
    """(class, method name) of every asv benchmark in the suite, as pytest params."""
    found = []
    for module_name in BENCHMARK_MODULES:
        module = _benchmark_module(module_name)
        for _, cls in inspect.getmembers(module, inspect.isclass):
            if cls.__module__ != module.__name__ or cls.__name__.startswith("_"):
                continue
            for name in dir(cls):
                if name.startswith(BENCHMARK_PREFIXES):
                    found.append(pytest.param(cls, name, id=f"{cls.__name__}.{name}"))
    return found


def _smallest_points(cls):
    """The smallest value of every size parameter, crossed with all values of the
    others (smoothness mode, dtype, target)."""
    choices = []
    for name, values in zip(cls.param_names, cls.params):
        choices.append(values[:1] if name in ("T", "B", "n") else values)
    return list(itertools.product(*choices))


@pytest.mark.parametrize("cls, method", _benchmarks())
def test_every_benchmark_runs_at_the_smallest_size(cls, method, monkeypatch):
    """What asv does for each point (setup, then the benchmark), in-process, at the
    grid's smallest sizes: a benchmark broken by an API change fails here."""
    if cls.__name__ == "Targets":
        monkeypatch.setattr(cls, "sizes", bench.QUICK_SIZES)
    for point in _smallest_points(cls):
        instance = cls()
        if hasattr(instance, "setup"):
            instance.setup(*point)  # NotImplementedError here: the smallest point must run
        result = getattr(instance, method)(*point)
        if method.startswith("track_"):
            assert np.isfinite(result) and result > 0, (point, result)


def test_grid_skips_what_does_not_fit():
    common = _benchmark_module("common")
    # T = 10^6 only for a batch of one
    with pytest.raises(NotImplementedError):
        common.skip_if_too_big(64, 1_000_000, 3, False, "float32")
    common.skip_if_too_big(1, 1_000_000, 3, True, "float64")
    common.skip_if_too_big(1, 1_000_000, 9, False, "float64")  # 1.6 GiB
    # B x T x n^2 beyond the budget
    with pytest.raises(NotImplementedError):
        common.skip_if_too_big(1024, 100_000, 15, True, "float64")
    common.skip_if_too_big(1024, 1000, 9, True, "float64")
    with pytest.raises(NotImplementedError):
        _benchmark_module("bench_baselines").DenseCholesky().setup(1000, 9, False, "float64")


@pytest.mark.slow
def test_asv_runs_the_suite_through_its_harness(tmp_path):
    """asv.conf.json, discovery, setup, the skip path and result reporting, end to end, for
    every benchmark on the smoke grid (T in {100, 10^5} with a tiny memory budget, so
    T = 10^5 is skipped; float64, no central rows; Targets at the quick sizes). The other
    parameter values ran in-process above, which also filled Numba's on-disk cache that
    asv's benchmark processes load."""
    pytest.importorskip("asv", reason="the asv suite needs the [bench] extra")
    env = dict(os.environ, HOME=str(tmp_path), BANDSOLVE_ASV_SMOKE="1")
    config = _asv_config(tmp_path)
    machine = _asv("machine", "--yes", "--machine", "ci", "--config", config, env=env)
    assert machine.returncode == 0, machine.stdout + machine.stderr
    # timeout: measured 305 s wall (44 s of CPU) on a 2-core machine shared with other jobs
    out = _asv("run", "--python=same", "--quick", "--dry-run", "--machine", "ci",
               "--show-stderr", "--config", config, env=env, timeout=1200)
    text = out.stdout + out.stderr
    assert out.returncode == 0, text  # asv exits with 2 when a benchmark fails
    assert "failed" not in text, text
    for cls, method in (p.values for p in _benchmarks()):
        assert f"{cls.__name__}.{method}" in text, (cls, method)
    assert "n/a" in text, text  # the over-budget points were skipped, not run


@pytest.mark.slow
def test_run_asv_wrapper_saves_results_under_the_commit(tmp_path):
    """``benchmarks/run_asv.sh`` (the documented way to run the suite) works on first use:
    no stored machine description (a fresh HOME), results saved under the current commit,
    and ``asv show`` finds them."""
    pytest.importorskip("asv", reason="the asv suite needs the [bench] extra")
    commit = subprocess.run(["git", "rev-parse", "HEAD"], cwd=ROOT, capture_output=True,
                            text=True)
    if commit.returncode != 0:
        pytest.skip("not a git checkout: asv saves results under a commit hash")
    commit = commit.stdout.strip()
    config = _asv_config(tmp_path)
    env = dict(os.environ, HOME=str(tmp_path), BANDSOLVE_ASV_SMOKE="1", PYTHON=sys.executable,
               ASV_CONFIG=config, ASV_MACHINE="wrapper-test")
    out = subprocess.run(["bash", str(ROOT / "benchmarks" / "run_asv.sh"), "--quick",
                          "--bench", "Forward.time_forward"], cwd=tmp_path, env=env,
                         capture_output=True, text=True, timeout=600)
    text = out.stdout + out.stderr
    assert out.returncode == 0, text
    saved = list((tmp_path / "results" / "wrapper-test").glob(f"{commit[:8]}*.json"))
    assert len(saved) == 1, (text, list((tmp_path / "results").rglob("*")))
    results = json.loads(saved[0].read_text())
    assert results["commit_hash"] == commit
    assert any(name.startswith("bench_smnn.Forward.time_forward") for name in results["results"])
    shown = _asv("show", "--config", config, commit, env=env)
    assert shown.returncode == 0 and "time_forward" in shown.stdout, shown.stdout + shown.stderr


# ----------------------------------------------------------------------------- baselines

@pytest.mark.parametrize("central", [False, True])
def test_lapack_band_holds_the_same_matrix(central):
    args = coupled_oscillators(2, 7, n_dims=3, seed=4)
    matrix, b = bandsolve.smnn_normal_equations(*args, central_smoothness=central)
    n, T = matrix.block_size, matrix.n_steps
    dense = matrix.to_dense()[1]
    for tight in (True, False):
        ab, kd = bench.lapack_band(matrix, index=1, tight=tight)
        # the S-MNN structure: off-diagonal blocks couple equal state dimensions only
        if tight:
            expected_kd = 2 * n if central else n + 3 - 1
        else:
            expected_kd = (matrix.bandwidth + 1) * n - 1
        assert kd == expected_kd
        rebuilt = np.zeros_like(dense)
        for d in range(kd + 1):
            k = np.arange(T * n - d)
            rebuilt[k + d, k] = ab[d, :T * n - d]
        np.testing.assert_array_equal(np.tril(rebuilt), np.tril(dense))
        assert np.all(np.tril(dense, -kd - 1) == 0)  # nothing outside the band was lost
    # both baselines solve the system that bandsolve solves; cond(M) <~ 1e6 here, so the
    # float64 solutions agree to ~1e-10 relative (a wrong band would be off by O(1))
    u = bandsolve.smnn_solve(*args, central_smoothness=central)[1].reshape(-1)
    rhs = b[1].reshape(-1)
    x_lapack = bench.lapack_solve(bench.lapack_band(matrix, index=1)[0], rhs.copy())
    x_dense = bench.dense_solve(dense.copy(), rhs.copy())
    for x in (x_lapack, x_dense):
        assert np.linalg.norm(x - u) <= 1e-9 * np.linalg.norm(u)


def test_flop_count_of_the_block_algorithm():
    # n = 9, p = 1, E = 3: 3*45 + 27 + (7/6)*729 + 3*81 multiply-adds per step
    assert bench.block_algorithm_flops(1) == pytest.approx(2 * (135 + 27 + 850.5 + 243))
    assert bench.block_algorithm_flops(10, batch=4) == pytest.approx(
        40 * bench.block_algorithm_flops(1))


# ----------------------------------------------------------------------------- bandsolve bench

@pytest.mark.slow
def test_bench_quick_writes_table_json_and_plot(tmp_path, capsys):
    pytest.importorskip("matplotlib", reason="--plot needs the [bench] extra")
    json_path, png_path = tmp_path / "bench.json", tmp_path / "scaling.png"
    status = bench.main(["--quick", "--repeat", "1", "--json", str(json_path),
                         "--plot", str(png_path)])
    assert status == 0
    printed = capsys.readouterr().out
    results = json.loads(json_path.read_text())
    ids = [row["id"] for row in results["targets"]]
    assert ids == ["1", "2", "3", "4a", "4b", "5"]
    for row in results["targets"]:
        assert np.isfinite(row["measured"]) and row["measured"] > 0, row
        assert f"{row['measured']:.3f}" in printed and row["target"] in printed
    # the memory probe must see the solve's working set (a probe measuring nothing would
    # give ~0): the one-lane kernels hold 72 float64 per step (packed diagonal 45; x,
    # column norms and one sweep vector 9 each; the couplings are rebuilt, not stored),
    # 0.44 of the host layout's factor bytes (2 blocks of 81); measured 0.39 at this
    # size (pages, timing of the peak) and 0.444 at T=10^6
    huge = results["memory_huge"]
    assert huge["factor_bytes"] == results["sizes"]["t_huge"] * 2 * 81 * 8
    assert 0.25 < huge["rss_increase"] / huge["factor_bytes"] < 10
    scaling = results["scaling"]
    assert len(scaling["bandsolve_seconds"]) == len(scaling["T"])
    assert len(scaling["lapack_seconds"]) == len(scaling["T"])
    assert scaling["dense_T"] and all(t * 9 <= 600 for t in scaling["dense_T"])
    assert results["gflops"]["dgemm_1_thread"] > 0
    assert png_path.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_bench_rejects_bad_arguments():
    with pytest.raises(SystemExit):
        bench.main(["--repeat", "0"])


def _measuring_is_an_error(*args, **kwargs):
    raise AssertionError("bench.run was called: the arguments should have been refused first")


def test_bench_without_matplotlib_refuses_plot_before_measuring(monkeypatch, tmp_path, capsys):
    real_find_spec = importlib.util.find_spec
    monkeypatch.setattr(importlib.util, "find_spec",
                        lambda name, *a: None if name == "matplotlib" else real_find_spec(name, *a))
    monkeypatch.setattr(bench, "run", _measuring_is_an_error)
    with pytest.raises(SystemExit) as exit_info:
        bench.main(["--quick", "--plot", str(tmp_path / "scaling.png")])
    assert exit_info.value.code == 2
    assert "--plot needs matplotlib" in capsys.readouterr().err


def test_bench_refuses_an_output_folder_that_does_not_exist(monkeypatch, tmp_path, capsys):
    monkeypatch.setattr(bench, "run", _measuring_is_an_error)
    # without matplotlib, --plot is refused for that reason first (tested above)
    has_matplotlib = importlib.util.find_spec("matplotlib") is not None
    for option in ("--plot", "--json") if has_matplotlib else ("--json",):
        with pytest.raises(SystemExit):
            bench.main(["--quick", option, str(tmp_path / "absent" / "out")])
        assert "does not exist" in capsys.readouterr().err


def test_bench_writes_no_plot_unless_asked(monkeypatch, tmp_path):
    pytest.importorskip("matplotlib")
    fake = {"targets": []}
    monkeypatch.setattr(bench, "run", lambda *a, **k: dict(fake))
    monkeypatch.setattr(bench, "format_report", lambda results: "report")
    written = []
    monkeypatch.setattr(bench, "plot", lambda results, path: written.append(path))
    monkeypatch.chdir(tmp_path)
    assert bench.main(["--quick"]) == 0
    assert written == [] and list(tmp_path.iterdir()) == []
    target = str(tmp_path / "where.png")
    assert bench.main(["--quick", "--plot", target]) == 0
    assert written == [target]


# ----------------------------------------------------------------------------- problems

def test_problem_shapes_and_seeding():
    c, r, g, h = coupled_oscillators((2, 3), 50, n_dims=2, n_orders=4, n_equations=3,
                                     dtype=np.float32, seed=7)
    assert c.shape == (2, 3, 50, 3, 2, 4) and r.shape == (2, 3, 50, 3)
    assert g.shape == (2, 3, 1, 2, 2) and h.shape == (2, 3, 49)
    assert {a.dtype for a in (c, r, g, h)} == {np.dtype(np.float32)}
    again = coupled_oscillators((2, 3), 50, n_dims=2, n_orders=4, n_equations=3,
                                dtype=np.float32, seed=7)
    for a, b in zip((c, r, g, h), again):
        np.testing.assert_array_equal(a, b)
    other = coupled_oscillators((2, 3), 50, n_dims=2, n_orders=4, n_equations=3,
                                dtype=np.float32, seed=8)
    assert not np.array_equal(c, other[0])
    assert not np.array_equal(c[0, 0], c[0, 1])  # every system differs
    assert np.all(h > 0)


@pytest.mark.parametrize("kwargs, message", [
    (dict(n_dims=3, n_equations=2), "n_equations"),
    (dict(n_orders=2, central_smoothness=True), "central_smoothness"),
    (dict(n_orders=1), "n_orders"),
    (dict(step=0.0), "step"),
])
def test_problem_rejects_ill_posed_requests(kwargs, message):
    with pytest.raises(ValueError, match=message):
        coupled_oscillators(1, 10, **kwargs)
    with pytest.raises(ValueError, match="n_steps"):
        coupled_oscillators(1, 1)


@pytest.mark.parametrize("n_steps, batch", [(1000, 4), (100_000, 1)])
@pytest.mark.parametrize("central", [False, True])
def test_problem_is_well_posed_in_float32(n_steps, batch, central):
    """float32 factors without breakdown at T = 10^3 and 10^5, close to float64.

    cond(M) of these problems saturates at ~1e6 (no central rows) and ~1e5 (central rows),
    measured with dense eigenvalues for T <= 400; the normwise bound eps32 * cond is then
    0.06-0.006, and the observed errors are ~1e-3 and ~1e-4. The limit 1e-2 keeps a margin
    and still fails for an unstable or near-singular generator (breakdown or O(1) error).
    """
    p64 = coupled_oscillators(batch, n_steps, seed=2)
    p32 = coupled_oscillators(batch, n_steps, seed=2, dtype=np.float32)
    u64 = bandsolve.smnn_solve(*p64, central_smoothness=central)
    u32 = bandsolve.smnn_solve(*p32, central_smoothness=central)
    assert u32.dtype == np.float32
    for i in range(batch):
        error = np.linalg.norm(u32[i] - u64[i]) / np.linalg.norm(u64[i])
        assert error < 1e-2, (i, error)
    assert np.max(np.abs(u64[..., 0])) < 20  # bounded: damped oscillators, unit forcing


def test_problem_is_the_ode_it_describes():
    """The S-MNN solution of a generated problem follows the ODE read back from its
    coefficients, sum_{d,o} c[t,e,d,o] u_d^(o) = r_e, integrated by solve_ivp.

    With h = 0.01 over 10 time units the least-squares solution differs from the ODE by
    ~6e-4 (relative; 1.4e-4 with central rows, O(h^2) discretisation); 5e-3 leaves a
    margin, while swapped orders or signs in the generator give O(1) differences.
    """
    T, D, step = 1001, 3, 0.01
    c, r, g, h = coupled_oscillators(1, T, n_dims=D, seed=3, step=step)
    t = np.concatenate([[0.0], np.cumsum(h[0])])
    C, R = c[0], r[0]

    def rates(time, y):
        i = min(max(np.searchsorted(t, time, side="right") - 1, 0), T - 2)
        w = (time - t[i]) / (t[i + 1] - t[i])  # linear interpolation between steps
        Ct, Rt = (1 - w) * C[i] + w * C[i + 1], (1 - w) * R[i] + w * R[i + 1]
        x, v = y[:D], y[D:]
        acceleration = np.linalg.solve(Ct[:, :, 2], Rt - Ct[:, :, 0] @ x - Ct[:, :, 1] @ v)
        return np.concatenate([v, acceleration])

    y0 = np.concatenate([g[0, 0, :, 0], g[0, 0, :, 1]])
    reference = scipy.integrate.solve_ivp(rates, (0.0, t[-1]), y0, t_eval=t, rtol=1e-9,
                                          atol=1e-11, max_step=step).y[:D].T
    for central in (False, True):
        u = bandsolve.smnn_solve(c, r, g, h, central_smoothness=central)[0, :, :, 0]
        error = np.linalg.norm(u - reference) / np.linalg.norm(reference)
        assert error < 5e-3, (central, error)
