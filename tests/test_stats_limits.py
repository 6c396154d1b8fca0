"""`landscape stats` says where its numbers stop meaning what they seem to: a poor quadratic fit (its residual,
the 3x3 window disagreeing), the stored Hessian eigenvalues beside the fitted curvature, a flat radius that is
only a bound, radii without float noise. On copies of the frozen store (no training) and analytic landscapes."""

from __future__ import annotations

import json
import math
import shutil
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from landscape_cli.store import Store
from landscape_cli.store.grid_arrays import Rows

LEGACY2 = Path(__file__).parent / "data" / "legacy-0.2.0"
IDS = json.loads((LEGACY2 / "ids.json").read_text())
HESSIAN, LINE = IDS["grids"]["hessian"], IDS["grids"]["line"]


def _stats(*args: Any, **kwargs: Any) -> Any:
    from landscape_cli.curvature.stats import stats

    return stats(*args, **kwargs)


def _frozen(store: Path) -> Store:
    shutil.copytree(LEGACY2 / "store", store)
    return Store(store)


# --- the quartic: closed forms ------------------------------------------------------------------------------
#
# L = x⁴ on the 5 points s·h, s in {0, ±1, ±2}: the least-squares a + b·s² through s⁴ has b = cov(s², s⁴)/var(s²)
# = (62/5)/(14/5) = 31/7, so the fitted curvature L'' = 2b·h² = 62/7·h²; its residuals are (-14.4, 9.6, 9.6, -2.4,
# -2.4)/7 against s⁴ - mean(s⁴) = (-6.8, -5.8, -5.8, 9.2, 9.2), a relative RMS of sqrt(403.2/49 / 56.56·5/5).
# The 3 points s in {0, ±1} give the exact second difference: L'' = 2h².
QUARTIC_CURVATURE = 62 / 7
QUARTIC_RELATIVE = math.sqrt((403.2 / 49) / 282.8)
QUARTIC_3X3 = 2.0


def _write_line(store: Store, epoch_index: int, pair: int, values: np.ndarray, center: float) -> None:
    """Analytic values into the frozen line grid (9 points on [-1, 1], one batch), as the engine writes rows."""
    run_id = IDS["run_id"]
    rows = Rows(store.zarr_path(run_id, LINE))
    rows.write_row(epoch_index, pair, 0, values[None, :].astype(np.float32), np.full((1, len(values)), 0.5, np.float32))
    rows["center_loss"][epoch_index, :] = np.float32(center)


def test_the_fit_residual_flags_a_quartic_and_not_a_quadratic(tmp_path: Path, cli: Any) -> None:
    st = _frozen(tmp_path / "store")
    x = np.asarray(Rows(st.zarr_path(IDS["run_id"], LINE), "r")["x"][:], np.float64)
    h = 0.25
    assert np.allclose(x, np.linspace(-1, 1, 9)) and np.isclose(x[5] - x[4], h)
    _write_line(st, 1, 0, 1.0 + x**4, 1.0)  # epoch 3, pair 0: a quartic bottom
    _write_line(st, 1, 1, 1.0 + 3 * x**2, 1.0)  # pair 1: a quadratic, L'' = 6
    [e] = _stats("legacy2", grid="line", epochs=[3], store=st.root).epochs
    quartic, quadratic = e["panels"]
    assert quartic["eigenvalues"][0] == pytest.approx(QUARTIC_CURVATURE * h**2, rel=1e-5)
    assert quartic["eigenvalues_3x3"][0] == pytest.approx(QUARTIC_3X3 * h**2, rel=1e-5)
    assert quartic["fit_residual_relative"] == pytest.approx(QUARTIC_RELATIVE, rel=1e-4)
    assert quartic["fit_residual"] == pytest.approx(QUARTIC_RELATIVE * np.std(x[2:7] ** 4), rel=1e-4)
    assert quartic["fit_disagreement"] == pytest.approx(1 - QUARTIC_3X3 / QUARTIC_CURVATURE, rel=1e-5)
    assert quartic["fit_poor"]
    assert quadratic["eigenvalues"][0] == pytest.approx(6.0, rel=1e-5)
    assert quadratic["eigenvalues_3x3"][0] == pytest.approx(6.0, rel=1e-5)
    assert quadratic["fit_residual_relative"] < 1e-5 and quadratic["fit_disagreement"] < 1e-5
    assert not quadratic["fit_poor"]
    # the CLI says so: a note on stderr, "poor" in the quartic's row only, every field in --json
    done = cli("stats", "legacy2", "--grid", "line", "--epochs", "3", "--store", str(st.root))
    assert done.exit_code == 0, done.stderr
    note = " ".join(done.stderr.split())
    assert "epoch 3: the quadratic fits 1 of 3 landscapes poorly" in note  # the quartic (the mean is near 1.5x²)
    assert f"{100 * QUARTIC_RELATIVE:.1f}% of the spread" in note
    rows = [line for line in done.stdout.splitlines() if "pair " in line]
    assert "poor" in rows[0] and "poor" not in rows[1], done.stdout
    out = json.loads(cli("stats", "legacy2", "--grid", "line", "--epochs", "3", "--json", "--store",
                         str(st.root)).stdout)
    for m in [*out["epochs"][0]["panels"], out["epochs"][0]["mean"]]:
        for key in ("fit_residual", "fit_residual_relative", "eigenvalues_3x3", "fit_disagreement", "fit_poor",
                    "flat_radius_upper_bound", "eigenvalues", "flat_radius", "flat_radius_lower_bound"):
            assert key in m, key


def test_a_2d_quartic_and_a_quadratic_plane() -> None:
    """The same measures on a plane: a separable quartic x⁴ + y⁴ (each axis the line's closed form) and an exact
    quadratic with a cross term, its fit residual at float32 rounding."""
    from landscape_cli.curvature.stats import landscape_metrics

    x = y = np.linspace(-1, 1, 21)
    h = 0.1
    gx, gy = np.meshgrid(x, y)
    m = landscape_metrics(1 + gx**4 + gy**4, np.ones(21, bool), [x, y], 1.0, 0.5, 1.0, 0.1)
    assert np.allclose(m["eigenvalues"], QUARTIC_CURVATURE * h**2, rtol=1e-9)
    assert np.allclose(m["eigenvalues_3x3"], QUARTIC_3X3 * h**2, rtol=1e-9)
    assert m["fit_residual_relative"] == pytest.approx(QUARTIC_RELATIVE, rel=1e-9) and m["fit_poor"]
    q = landscape_metrics((1 + 3 * gx**2 + gx * gy + 0.5 * gy**2).astype(np.float32), np.ones(21, bool), [x, y], 1.0,
                          0.5, 1.0, 0.1)
    assert np.allclose(q["hessian"], [[6, 1], [1, 1]], rtol=1e-4) and not q["fit_poor"]
    assert q["fit_residual_relative"] < 1e-5 and q["fit_disagreement"] < 1e-5


def test_a_flat_radius_on_the_first_ring_is_marked_as_a_bound(tmp_path: Path, cli: Any) -> None:
    st = _frozen(tmp_path / "store")
    x = np.linspace(-1, 1, 9)
    _write_line(st, 1, 0, 1.0 + x**4, 1.0)  # above L0 + 0.1 first at |x| = 0.75: points at 0.25, 0.5 are below
    _write_line(st, 1, 1, 1.0 + 3 * x**2, 1.0)  # above first at |x| = 0.25, the grid spacing
    [e] = _stats("legacy2", grid="line", epochs=[3], store=st.root).epochs
    far, near = e["panels"]
    assert far["flat_radius"] == 0.75 and not far["flat_radius_upper_bound"] and not far["flat_radius_lower_bound"]
    assert near["flat_radius"] == 0.25 and near["flat_radius_upper_bound"] and not near["flat_radius_lower_bound"]
    done = cli("stats", "legacy2", "--grid", "line", "--epochs", "3", "--store", str(st.root))
    rows = [line for line in done.stdout.splitlines() if "pair " in line]
    assert "≤0.25" in rows[1] and "≤" not in rows[0] and " 0.75 " in rows[0], done.stdout
    assert "≤: the nearest point above L0 + δ is on the first ring" in " ".join(done.stdout.split())
    # nothing above L0 + δ: a lower bound, as before
    _write_line(st, 1, 0, 1.0 + 0.01 * x**2, 1.0)  # (the same done-marks: the cached entry would be used)
    [e] = _stats("legacy2", grid="line", epochs=[3], store=st.root, cache=False).epochs
    flat = e["panels"][0]
    assert flat["flat_radius"] == 1.0 and flat["flat_radius_lower_bound"] and not flat["flat_radius_upper_bound"]


def test_radii_are_printed_without_float_noise() -> None:
    from landscape_cli.curvature.stats import landscape_metrics, title_text

    x = np.linspace(-1, 1, 21)
    nearest = float(np.min(np.abs(x[x != 0])))
    assert nearest != 0.1 and repr(nearest) == "0.09999999999999998"  # the coordinate as linspace makes it
    m = landscape_metrics((1 + 30 * x**2)[None, :], np.ones(1, bool), [x], 1.0, 0.5, 1.0, 0.1)
    assert m["flat_radius"] == 0.1 and m["flat_radius_upper_bound"]
    assert json.dumps(m["flat_radius"]) == "0.1"
    assert "flat radius ≤0.1 (δ 0.1)" in title_text({**m, "delta": 0.1})


def test_a_hessian_grid_prints_its_stored_eigenvalues_beside_the_fit(tmp_path: Path, cli: Any) -> None:
    st = _frozen(tmp_path / "store")
    grid_json = json.loads((st.grid_dir(IDS["run_id"], HESSIAN) / "grid.json").read_text())
    stored = grid_json["kind"]["epochs"]["3"]["eigenvalues"][:2]
    [e] = _stats("legacy2", grid=HESSIAN, store=st.root).epochs
    assert e["stored_eigenvalues"] == stored
    out = json.loads(cli("stats", "legacy2", "--grid", HESSIAN, "--json", "--store", str(st.root)).stdout)
    assert out["epochs"][0]["stored_eigenvalues"] == stored
    done = cli("stats", "legacy2", "--grid", HESSIAN, "--store", str(st.root))
    assert done.exit_code == 0, done.stderr
    [row] = [line for line in done.stdout.splitlines() if "pair 0" in line]
    fitted = e["mean"]["eigenvalues"]
    ratios = ", ".join(f"{f / v:.3g}" for f, v in zip(fitted, stored, strict=True))
    assert f"{stored[0]:.4g}, {stored[1]:.4g} (fit/λ {ratios})" in row, done.stdout
    assert "stored λ" in done.stdout
    # its flat radius is the grid spacing (±0.05 in 5 points): a bound, printed ≤
    x = np.asarray(Rows(st.zarr_path(IDS["run_id"], HESSIAN), "r")["x"][:], np.float64)
    assert e["mean"]["flat_radius"] == pytest.approx(x[3] - x[2]) and e["mean"]["flat_radius_upper_bound"]
    assert f"≤{e['mean']['flat_radius']:.3g}" in row
    # other kinds have none
    assert _stats("legacy2", grid=LINE, store=st.root).epochs[0]["stored_eigenvalues"] is None
    assert "stored λ" not in cli("stats", "legacy2", "--grid", LINE, "--store", str(st.root)).stdout
