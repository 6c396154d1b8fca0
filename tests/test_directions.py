"""Directions: seeded draws, Li et al.'s filter normalization and its variants, masks."""

from __future__ import annotations

import shutil
from pathlib import Path

import pytest
import torch
from conftest import StoreFactory

from landscape_cli.directions import (
    draw_random,
    ensure_stored,
    get_kind,
    list_kinds,
    load_recorded,
    normalize,
    perturbed_names,
)
from landscape_cli.errors import IntegrityError, UnknownNameError, UsageError
from landscape_cli.models import create_model
from landscape_cli.store import Store


@pytest.fixture
def weights() -> dict[str, torch.Tensor]:
    torch.manual_seed(0)
    model = create_model("cnn", 1, 10, 8)
    return {k: v.detach() for k, v in model.named_parameters()}


def shapes(w: dict[str, torch.Tensor]) -> dict[str, tuple[int, ...]]:
    return {k: tuple(v.shape) for k, v in w.items()}


def test_draws_are_reproducible_and_distinct(weights: dict[str, torch.Tensor]) -> None:
    a1, a2 = draw_random(shapes(weights), seed=0, pair=0)
    b1, _ = draw_random(shapes(weights), seed=0, pair=0)
    c1, _ = draw_random(shapes(weights), seed=0, pair=1)
    d1, _ = draw_random(shapes(weights), seed=1, pair=0)
    assert all(torch.equal(a1[k], b1[k]) for k in a1)
    for other in (a2, c1, d1):
        assert not torch.equal(a1["features.0.weight"], other["features.0.weight"])
    flat = torch.cat([v.flatten() for v in a1.values()])
    assert abs(float(flat.mean())) < 0.1 and abs(float(flat.std()) - 1) < 0.1  # standard normal


def test_filter_normalization(weights: dict[str, torch.Tensor]) -> None:
    d, _ = draw_random(shapes(weights), 0, 0)
    names = perturbed_names(weights)
    nd = normalize(d, weights, names, "filter")
    assert set(names) == {"features.0.weight", "features.4.weight", "classifier.weight"}
    for name in names:
        w, v = weights[name], nd[name]
        for i in range(w.shape[0]):  # every filter (output channel / row) has the weight filter's norm
            assert float(v[i].norm()) == pytest.approx(float(w[i].norm()), rel=1e-5)
        # and the direction within the filter is the draw's
        cos = torch.nn.functional.cosine_similarity(v[0].flatten(), d[name][0].flatten(), dim=0)
        assert float(cos) == pytest.approx(1.0, abs=1e-6)
    # biases and BatchNorm parameters are not perturbed by default
    assert all(k not in nd for k in weights if weights[k].dim() <= 1)


def test_filter_std_and_layer_norms(weights: dict[str, torch.Tensor]) -> None:
    d, _ = draw_random(shapes(weights), 0, 0)
    names = perturbed_names(weights)
    fs = normalize(d, weights, names, "filter-std")
    w = weights["features.4.weight"]
    expected = d["features.4.weight"][3] * w[3].flatten().std(correction=0)
    assert torch.allclose(fs["features.4.weight"][3], expected)
    lay = normalize(d, weights, names, "layer")
    assert float(lay["classifier.weight"].norm()) == pytest.approx(float(weights["classifier.weight"].norm()), rel=1e-5)
    raw = normalize(d, weights, names, "none")
    assert torch.equal(raw["classifier.weight"], d["classifier.weight"])
    with pytest.raises(UnknownNameError, match="filter, filter-std, layer, none"):
        normalize(d, weights, names, "unit")


def test_biasbn_included_takes_the_weights(weights: dict[str, torch.Tensor]) -> None:
    d, _ = draw_random(shapes(weights), 0, 0)
    names = perturbed_names(weights, perturb_biasbn=True)
    assert names == list(weights)
    nd = normalize(d, weights, names)
    assert torch.equal(nd["features.1.weight"], weights["features.1.weight"])  # Li et al.'s code


def test_layer_and_single_kernel_masks(weights: dict[str, torch.Tensor]) -> None:
    d, _ = draw_random(shapes(weights), 0, 0)
    full = normalize(d, weights, perturbed_names(weights))
    names = perturbed_names(weights, layer="features.4.weight")
    assert names == ["features.4.weight"]
    one = normalize(d, weights, names)
    assert list(one) == ["features.4.weight"]
    assert torch.equal(one["features.4.weight"], full["features.4.weight"])  # the same components as the full grid
    kernel = normalize(d, weights, perturbed_names(weights, layer="features.4.weight", single_kernel=True),
                       single_kernel=True)["features.4.weight"]
    assert torch.equal(kernel[0, 0], full["features.4.weight"][0, 0])
    kernel[0, 0] = 0
    assert not kernel.any()


def test_layer_errors(weights: dict[str, torch.Tensor]) -> None:
    with pytest.raises(UnknownNameError, match=r"features\.0\.weight, features\.1\.weight"):
        perturbed_names(weights, layer="conv9.weight")
    with pytest.raises(UsageError, match="add --perturb-biasbn"):
        perturbed_names(weights, layer="features.1.bias")
    with pytest.raises(UsageError, match="convolution weight"):
        perturbed_names(weights, layer="classifier.weight", single_kernel=True)


def test_stored_once_and_refused_when_damaged(weights: dict[str, torch.Tensor], tmp_path: Path) -> None:
    s = shapes(weights)
    st = Store(tmp_path)
    record = ensure_stored(st, "run", s, 0, 0)
    raw = load_recorded(st, "run", record, s)
    again = ensure_stored(st, "run", s, 0, 0)
    assert again == record and torch.equal(raw["d1"]["classifier.weight"],
                                            load_recorded(st, "run", again, s)["d1"]["classifier.weight"])
    fresh1, fresh2 = draw_random(s, 0, 0)
    assert all(torch.equal(raw["d1"][k], fresh1[k]) and torch.equal(raw["d2"][k], fresh2[k]) for k in s)
    path = st.file("run", record.file)
    data = bytearray(path.read_bytes())
    data[-100] ^= 0xFF
    path.write_bytes(bytes(data))
    with pytest.raises(IntegrityError, match="direction pair 0"):
        load_recorded(st, "run", record, s)
    with pytest.raises(IntegrityError, match="direction pair 0"):
        ensure_stored(st, "run", s, 0, 0)


@pytest.fixture(scope="module")
def five_epochs(trained_store: StoreFactory) -> Path:
    """The session's master (trained once, read-only): the tests take copies."""
    return trained_store("cnn", epochs=4, name="r")


# the Hessian kind computes top eigenvectors at every epoch (~20 s): slow; test_hessian grids along them quickly
@pytest.mark.parametrize("kind", [pytest.param(k, marks=pytest.mark.slow) if k == "hessian" else k for k in list_kinds()])
def test_every_kind_makes_a_grid_centred_on_its_checkpoints(five_epochs: Path, kind: str, tmp_path: Path) -> None:
    """Registry-driven: each kind's grid is complete, stable (same call: nothing to compute) and its centre
    (all coordinates 0) is each grid epoch's checkpoint, whose loss is computed here by hand."""
    import torch.nn.functional as F

    from landscape_cli import grid
    from landscape_cli.data import load_dataset
    from landscape_cli.models import create_model

    store = tmp_path / "store"
    shutil.copytree(five_epochs, store)
    st = Store(store)
    run = st.read_run(st.resolve("r"))
    k = get_kind(kind)
    assert k.name == kind and k.description and k.made
    options = {"width": 5, "batches": 1, "batch_size": 64, "progress": False, "directions": kind, **k.example(run)}
    if kind in ("curve", "curve-plane"):  # a curve to evaluate: epoch 1 to epoch 4 of the run, its bend trained
        from landscape_cli import connect

        made = connect("r:1", "r:4", shape="bezier", bends=1, epochs=1, batch_size=128, lr=0.01, store=store,
                       progress=False)
        options["along"] = made.curve_id
    g = grid("r", store=store, **options)
    assert g.complete and g.meta.config.kind == kind and len(g.meta.ranges) == g.meta.config.dims
    assert grid("r", store=store, **options).computed_rows == 0
    data = load_dataset("digits")
    x = (data.train_x[:64].float() / 255 - data.info.mean[0]) / data.info.std[0]
    ds = g.to_xarray()
    for epoch in g.meta.epochs:
        ckpt = torch.load(st.file(run.id, f"checkpoints/epoch-{epoch:04d}.pt"), weights_only=True)
        model = create_model(ckpt["model"], **ckpt["model_args"])
        model.load_state_dict(ckpt["state_dict"])
        model.train()
        with torch.no_grad():
            expected = F.cross_entropy(model(x), data.train_y[:64]).item()
        assert float(ds.center_loss.sel(epoch=epoch, batch=0)) == pytest.approx(expected, rel=1e-5)
