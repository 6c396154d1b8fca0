"""--layer glob patterns: subspaces of a model for grids, PCA and Hessians, `landscape layers --layer`.

A pattern grid's values are checked against an independent computation (the model rebuilt from its
checkpoint, the full seeded draw written out here, zeroed outside the subspace, L(w + a·d1 + b·d2)
in plain torch); its direction files hold only the subspace, with the full draw's values; one exact
name keeps the id it always had.
"""

from __future__ import annotations

import hashlib
import io
import json
from pathlib import Path
from typing import Any

import pytest
import torch
import torch.nn.functional as F
from conftest import Cli, StoreFactory, Train, tree

from landscape_cli.config import GridConfig, GridRequest, HessianConfig, layer_selection, square_axes
from landscape_cli.data import load_dataset
from landscape_cli.directions import draw_random, perturbed_names
from landscape_cli.engine.plan import resolve
from landscape_cli.errors import UnknownNameError, UsageError
from landscape_cli.models import create_model
from landscape_cli.store import Store

TINY = Train("cnn", epochs=2, name="tiny")  # the session's small cnn on digits (shared with other modules)
GLOB = ("--layer", "features.0.*", "--layer", "classifier.*")
SELECTED = ["features.0.weight", "classifier.weight"]  # classifier.bias is 1-D: left out without --perturb-biasbn
SMALL = ("--epochs", "2", "--width", "3", "--pairs", "1", "--batches", "1", "--batch-size", "64", "-q")
GLOB_GRID = Cli("grid", "tiny", *GLOB, *SMALL, "--name", "glob")


@pytest.fixture(scope="module")
def globbed(trained_store: StoreFactory) -> Path:
    """The session's read-only master: the tiny run with one pattern grid (copy it before changing it)."""
    return trained_store.build(TINY, GLOB_GRID)


def _run_dir(store: Path) -> Path:
    st = Store(store)
    return st.run_dir(st.resolve("tiny"))


def _grid_json(store: Path, name: str) -> dict[str, Any]:
    for path in _run_dir(store).glob("grids/*/grid.json"):
        meta = json.loads(path.read_text())
        if meta["name"] == name:
            return {**meta, "dir": path.parent}
    raise AssertionError(name)


def _checkpoint(store: Path, epoch: int) -> dict[str, Any]:
    return torch.load(_run_dir(store) / f"checkpoints/epoch-{epoch:04d}.pt", weights_only=True)


def _parameters(ckpt: dict[str, Any]) -> dict[str, torch.Tensor]:
    model = create_model(ckpt["model"], **ckpt["model_args"])
    return {n: p.detach() for n, p in model.named_parameters()}


def _full_draw(shapes: dict[str, tuple[int, ...]], seed: int, pair: int) -> list[dict[str, torch.Tensor]]:
    """The seeded Gaussian pair over every parameter, as grids have always drawn it, written out here."""
    out = []
    for axis in (0, 1):
        digest = hashlib.sha256(f"landscape-direction:{seed}:{pair}:{axis}".encode()).digest()
        g = torch.Generator().manual_seed(int.from_bytes(digest[:8], "little") >> 1)
        out.append({n: torch.randn(s, generator=g) for n, s in shapes.items()})
    return out


def _filter_normalized(d: torch.Tensor, w: torch.Tensor) -> torch.Tensor:
    out = d.clone()
    for i in range(w.shape[0]):
        out[i] = out[i] * (w[i].norm() / out[i].norm())
    return out


def test_a_glob_grid_is_the_grid_of_directions_zero_outside_the_subspace(globbed: Path) -> None:
    import xarray as xr

    meta = _grid_json(globbed, "glob")
    ckpt = _checkpoint(globbed, 2)
    weights = {n: w for n, w in ckpt["state_dict"].items() if n in _parameters(ckpt)}
    full = _full_draw({n: tuple(w.shape) for n, w in _parameters(ckpt).items()}, seed=0, pair=0)
    # the full directions, zero outside the subspace: every other parameter (classifier.bias included) stays put
    d1 = {n: (_filter_normalized(full[0][n], w) if n in SELECTED else torch.zeros_like(w)) for n, w in weights.items()}
    d2 = {n: (_filter_normalized(full[1][n], w) if n in SELECTED else torch.zeros_like(w)) for n, w in weights.items()}
    data = load_dataset("digits")
    x = (data.train_x[:64].float() / 255 - data.info.mean[0]) / data.info.std[0]
    y = data.train_y[:64]
    ds = xr.open_zarr(meta["dir"] / "landscape.zarr")
    values = ds.loss.sel(epoch=2, pair=0, batch=0)
    for a in (-1.0, 0.0, 1.0):
        for b in (-1.0, 0.0, 1.0):
            model = create_model(ckpt["model"], **ckpt["model_args"])
            state = dict(ckpt["state_dict"])
            for n in weights:
                state[n] = weights[n] + a * d1[n] + b * d2[n]
            model.load_state_dict(state)
            model.train()  # --bn train
            with torch.no_grad():
                loss = F.cross_entropy(model(x), y).item()
            assert float(values.sel(x=a, y=b)) == pytest.approx(loss, abs=1e-5), (a, b)


def test_glob_direction_files_hold_only_the_subspace_with_the_full_draws_values(globbed: Path) -> None:
    meta = _grid_json(globbed, "glob")
    assert meta["config"]["layer"] is None and meta["config"]["layers"] == ["classifier.*", "features.0.*"]
    ckpt = _checkpoint(globbed, 2)
    shapes = {n: tuple(w.shape) for n, w in _parameters(ckpt).items()}
    full = _full_draw(shapes, seed=0, pair=0)
    [record] = meta["directions"]
    path = _run_dir(globbed) / record["file"]
    stored = torch.load(path, weights_only=True)
    assert list(stored["d1"]) == list(stored["d2"]) == SELECTED  # only the subspace, in the model's order
    for j, key in enumerate(("d1", "d2")):
        for n in SELECTED:
            assert torch.equal(stored[key][n], full[j][n]), (key, n)
    assert stored["spec"]["subspace"] and json.loads(path.with_suffix(".json").read_text())["spec"] == stored["spec"]
    whole = io.BytesIO()
    torch.save({"d1": full[0], "d2": full[1]}, whole)
    assert path.stat().st_size < len(whole.getvalue()) / 4  # 464 of the model's 5,178 values per direction
    # the library's restricted draw is the full draw's values, whatever it keeps
    for keep in (SELECTED, ["classifier.bias"], []):
        part = draw_random(shapes, 0, 0, keep=keep)
        assert [list(p) for p in part] == [[n for n in shapes if n in keep]] * 2
        assert all(torch.equal(part[j][n], full[j][n]) for j in (0, 1) for n in keep)


def test_a_glob_grid_lists_exports_and_verifies_beside_an_exact_name_grid(cli: Any, copy_store: Any, tmp_path: Path) -> None:
    copy_store(TINY, GLOB_GRID)
    [run] = json.loads(cli("ls", "--json").stdout)["runs"]
    [g] = [g for g in run["grids"] if g["name"] == "glob"]
    assert g["layers"] == ["classifier.*", "features.0.*"] and g["layer"] is None and g["done"] == 1.0
    verified = cli("verify", "tiny", "--json")
    assert verified.exit_code == 0 and json.loads(verified.stdout)["ok"]
    again = cli("grid", "tiny", *GLOB, *SMALL)  # the same command: nothing to compute
    assert again.exit_code == 0 and "already complete" in again.stderr
    exported = cli("export", "tiny", "--grid", "glob", "--format", "npz", "--out", str(tmp_path / "g.npz"), "--json")
    assert exported.exit_code == 0, exported.stderr
    assert json.loads(exported.stdout)["grid"] == _grid_json(tmp_path / "store", "glob")["id"]
    # one exact name, beside it: no "layers" key, and the full draw's files (as such grids have always used)
    exact = cli("grid", "tiny", "--layer", "features.0.weight", *SMALL, "--json")
    assert exact.exit_code == 0, exact.stderr
    out = json.loads(exact.stdout)
    assert out["config"]["layer"] == "features.0.weight" and "layers" not in out["config"]
    [record] = json.loads((Path(out["path"]) / "grid.json").read_text())["directions"]
    stored = torch.load(_run_dir(tmp_path / "store") / record["file"], weights_only=True)
    assert "subspace" not in stored["spec"] and len(stored["d1"]) == len(_parameters(_checkpoint(tmp_path / "store", 2)))


def test_one_exact_name_keeps_its_id(globbed: Path) -> None:
    # the id a --layer grid has always had (computed by the release before patterns existed)
    cfg = GridConfig(run="57b6f12829c6", axes=square_axes("random", 5, 1.0), pairs=1, batches=1, batch_size=64,
                     layer="features.4.weight")
    assert "layers" not in cfg.identity() and cfg.grid_id == "edc9b7358862"
    hessian = HessianConfig(run="57b6f12829c6", layer="classifier.weight", batches=1, batch_size=64)
    assert "layers" not in hessian.identity() and hessian.hessian_id == "fc05a38e85fd"
    st = Store(globbed)
    run = st.read_run(st.resolve("tiny"))
    for given in ("features.4.weight", ("features.4.weight",), ["features.4.weight", "features.4.weight"]):
        got, _ = resolve(st, run, GridRequest(layer=given, width=5, pairs=1, batches=1, batch_size=64))  # type: ignore[arg-type]
        assert got.layer == "features.4.weight" and got.layers is None
        assert got.identity() == GridConfig(run=run.id, axes=got.axes, pairs=1, batches=1, batch_size=64,
                                            layer="features.4.weight").identity()
    # a pattern is another grid, even one that selects the same single tensor
    pattern, _ = resolve(st, run, GridRequest(layer="features.4.*", width=5, pairs=1, batches=1, batch_size=64))
    assert pattern.layer is None and pattern.layers == ("features.4.*",) and pattern.grid_id != got.grid_id


def test_repeated_patterns_are_one_sorted_set_and_select_their_union() -> None:
    assert layer_selection(["features.4.*", "classifier.*", "features.4.*"]) == (None, ("classifier.*", "features.4.*"))
    assert layer_selection(["a.weight", "b.weight"]) == (None, ("a.weight", "b.weight"))  # several names: a set
    assert layer_selection("x.weight") == ("x.weight", None) and layer_selection([]) == (None, None)
    a = GridConfig(run="r", layers=("classifier.*", "features.4.*"))
    assert a.identity()["layers"] == ["classifier.*", "features.4.*"] and GridConfig.from_identity(a.identity()) == a
    h = HessianConfig(run="r", layers=("classifier.*",))
    assert HessianConfig.from_identity(h.identity()) == h and h.hessian_id != HessianConfig(run="r").hessian_id
    with pytest.raises(UsageError, match="sorted"):
        GridConfig(run="r", layers=("features.4.*", "classifier.*")).validate()
    weights = _parameters({"model": "cnn", "model_args": {"in_channels": 1, "num_classes": 10, "image_size": 8}})
    overlapping = perturbed_names(weights, layers=["features.4.*", "features.*", "classifier.weight"])
    assert overlapping == ["features.0.weight", "features.4.weight", "classifier.weight"]
    with_biases = perturbed_names(weights, layers=["features.[15].*"], perturb_biasbn=True)
    assert with_biases == ["features.1.weight", "features.1.bias", "features.5.weight", "features.5.bias"]
    # a pattern naming only biases and norm parameters selects them (it names nothing else)
    assert perturbed_names(weights, layers=["*.bias"]) == [n for n in weights if n.endswith(".bias")]
    assert perturbed_names(weights, layers=["features.4.*", "features.1.*"]) == [
        "features.1.weight", "features.1.bias", "features.4.weight"]
    with pytest.raises(UnknownNameError, match=r"'conv\*' matches no parameter"):
        perturbed_names(weights, layers=["features.*", "conv*"])
    with pytest.raises(UsageError, match="--single-kernel"):
        perturbed_names(weights, layers=["features.4.*"], single_kernel=True)


def test_layers_shows_what_patterns_select(cli: Any, globbed: Path) -> None:
    weights = _parameters(_checkpoint(globbed, 2))
    size = {n: w.numel() for n, w in weights.items()}
    total = sum(size.values())
    shown = cli("layers", "tiny", "--layer", "features.*", "--layer", "classifier.weight", "--store", str(globbed),
                "--json")
    assert shown.exit_code == 0, shown.stderr
    report = json.loads(shown.stdout)
    chosen = ["features.0.weight", "features.4.weight", "classifier.weight"]
    assert report["layer"] == ["classifier.weight", "features.*"] and report["tensors"] == 3
    assert report["parameters"] == sum(size[n] for n in chosen) == 144 + 4608 + 320
    assert report["model_parameters"] == total and report["fraction"] == pytest.approx(report["parameters"] / total)
    assert [r["name"] for r in report["layers"]] == [n for n in weights if n.startswith("features.")] + [
        "classifier.weight"]
    assert [r["name"] for r in report["layers"] if r["selected"]] == chosen
    assert {p["pattern"]: (p["tensors"], p["selected"], p["parameters"]) for p in report["patterns"]} == {
        "features.*": (6, 2, 144 + 4608), "classifier.weight": (1, 1, 320)}
    assert report["layers"][1] == {"name": "features.1.weight", "shape": [16], "parameters": 16,
                                   "kind": "bias/batchnorm", "perturbed_by_default": False,
                                   "matched_by": ["features.*"], "selected": False}
    biases = json.loads(cli("layers", "tiny", "--layer", "features.*", "--perturb-biasbn", "--store", str(globbed),
                            "--json").stdout)
    assert biases["parameters"] == sum(v for n, v in size.items() if n.startswith("features."))
    table = cli("layers", "tiny", "--layer", "features.*", "--store", str(globbed))
    assert "features.4.weight" in table.stdout and "no (--perturb-biasbn)" in table.stdout
    assert f"selected 2 tensors, 4,752 of the model's {total:,} parameters" in table.stdout
    # a model name (no run of that name): the registered model, built for --dataset
    model = json.loads(cli("layers", "cnn", "--layer", "features.0.*", "--store", str(globbed), "--json").stdout)
    assert model["of"] == "model cnn for digits" and model["parameters"] == 144
    # without --layer: the list it always printed
    assert json.loads(cli("layers", "tiny", "--store", str(globbed), "--json").stdout)[0]["name"] == "features.0.weight"


@pytest.mark.parametrize(("args", "says"), [
    (("grid", "tiny", "--layer", "features.4.*", "--layer", "nope.*"), ["--layer 'nope.*' matches no parameter",
                                                                         "`landscape layers"]),
    (("layers", "tiny", "--layer", "nope.*"), ["--layer 'nope.*' matches no parameter", "`landscape layers"]),
    (("hessian", "tiny", "--layer", "nope.*"), ["--layer 'nope.*' matches no parameter", "`landscape layers"]),
    (("grid", "tiny", "--layer", "features.4.*", "--single-kernel"), ["--single-kernel", "not a pattern"]),
    (("layers", "nosuchrun"), ["nosuchrun", "`landscape models`"]),
])
def test_bad_layer_input_is_one_line_and_writes_nothing(cli: Any, copy_store: Any, args: tuple[str, ...],
                                                          says: list[str]) -> None:
    store = copy_store(TINY)
    before = tree(store)
    done = cli(*args, "-q") if args[0] != "layers" else cli(*args)
    assert done.exit_code == 2, (done.stdout, done.stderr)
    [line] = done.stderr.splitlines()
    assert line.startswith("Error: ") and all(s in line for s in says), line
    assert tree(store) == before


def test_a_glob_hessian_lives_in_the_subspace(cli: Any, copy_store: Any) -> None:
    store = copy_store(TINY)
    done = cli("hessian", "tiny", "--layer", "classifier.*", "--epochs", "2", "--batches", "1", "--batch-size", "64",
               "--probes", "2", "--json", "-q")
    assert done.exit_code == 0, done.stderr
    out = json.loads(done.stdout)
    assert out["config"]["layers"] == ["classifier.*"] and out["config"]["layer"] is None
    results = json.loads((_run_dir(store) / "hessians" / out["id"] / "hessian.json").read_text())
    [file] = [e["file"] for e in results["eigenvectors"].values()]
    vectors = torch.load(_run_dir(store) / file, weights_only=True)
    assert list(vectors["v1"]) == ["classifier.weight"]


def test_a_glob_pca_plane_is_the_pca_of_the_subspace_trajectory(cli: Any, copy_store: Any) -> None:
    import numpy as np

    store = copy_store(TINY)
    assert cli("train", "cnn", "digits", "--epochs", "3", "--name", "tiny", "-q").exit_code == 0  # a 4th checkpoint
    done = cli("grid", "tiny", "--directions", "pca", "--layer", "features.0.*", "--layer", "classifier.*",
               "--width", "3", "--batches", "1", "--batch-size", "64", "--no-gradient", "-q", "--json")
    assert done.exit_code == 0, done.stderr
    [record] = json.loads((Path(json.loads(done.stdout)["path"]) / "grid.json").read_text())["directions"]
    stored = torch.load(_run_dir(store) / record["file"], weights_only=True)
    assert list(stored["d1"]) == list(stored["d2"]) == SELECTED
    # the top principal component of the subspace's trajectory w_i − w_final, computed here with an SVD
    states = [_checkpoint(store, e)["state_dict"] for e in range(4)]
    flat = np.stack([torch.cat([s[n].reshape(-1) for n in SELECTED]).double().numpy() for s in states])
    diffs = flat - flat[-1]
    _, _, vt = np.linalg.svd(diffs - diffs.mean(0), full_matrices=False)
    pc1 = torch.cat([stored["d1"][n].reshape(-1) for n in SELECTED]).double().numpy()
    assert abs(float(pc1 @ vt[0])) == pytest.approx(1.0, abs=1e-4)
