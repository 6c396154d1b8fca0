"""The plane through three checkpoints and user metrics on the models people train now: a transformer encoder
layer and a GRU (factories of `tests/userland/attention_factories.py`, an image of digits read as 8 tokens).

Each grid point's loss and metric must be those of weights built by hand from the three checkpoints (numpy,
float64), scored by the model itself: the kernels only see parameters and outputs, and this proves it for
attention and recurrence, not only for CNNs.
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
import torch
import torch.nn.functional as F
from conftest import Train, run_in_process
from test_plane import flat_weights, model_at, plane_by_hand

USERLAND = Path(__file__).parent / "userland"
METRICS = '''
def margin(out, y):
    """The mean margin: the true class's logit minus the largest other logit."""
    import torch

    top = out.gather(1, y[:, None])[:, 0]
    others = out.masked_fill(torch.nn.functional.one_hot(y, out.shape[1]).bool(), float("-inf")).amax(1)
    return (top - others).mean()
'''


@pytest.mark.parametrize("model", ["encoder", "gru"])
def test_a_plane_with_a_metric_on_attention_and_recurrent_models_is_hand_built_weights(
        model: str, copy_store: Callable[..., Path], tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    import xarray as xr

    from landscape_cli.data import load_dataset
    from landscape_cli.kernel.batches import Batches
    from landscape_cli.models.checkpoints import build_model, load_epoch
    from landscape_cli.store import Store

    monkeypatch.syspath_prepend(str(USERLAND))
    store = copy_store(Train(f"attention_factories:{model}", "digits", syspath=USERLAND, epochs=2, batch_size=64,
                             lr=0.05, name=model))
    (tmp_path / "seq_metrics.py").write_text(METRICS)
    out = run_in_process("grid", model, "--directions", "plane", "--epochs", "2", "--through", "0", "--through", "1",
                         "--width", "3", "--batches", "1", "--batch-size", "48", "--bn", "train", "--metric",
                         f"{tmp_path / 'seq_metrics.py'}:margin", "--store", str(store), "-q")
    assert out.returncode == 0, out.stderr
    st = Store(store)
    run = st.read_run(st.resolve(model))
    [grid] = st.grids(run.id)
    ds: Any = xr.open_zarr(st.zarr_path(run.id, grid.id), consolidated=False)

    checkpoint_a = load_epoch(st, run.id, run.record(2))
    names = [n for n, _ in build_model(checkpoint_a).named_parameters()]
    a, b, c = (flat_weights(load_epoch(st, run.id, run.record(e))["state_dict"], names) for e in (2, 0, 1))
    u, v, _ = plane_by_hand(ds, a, b, c)

    [(xb, yb)] = list(Batches(load_dataset("digits"), "train", 1, 48).on(torch.device("cpu"), False))
    for i, j in ((0, 0), (1, 2), (2, 1)):
        x, y = float(ds.x.values[i]), float(ds.y.values[j])
        net = model_at(checkpoint_a, a + x * u + y * v).train()
        with torch.no_grad():
            logits = net(xb)
        top = logits.gather(1, yb[:, None])[:, 0]
        others = logits.masked_fill(F.one_hot(yb, 10).bool(), float("-inf")).amax(1)
        assert float(ds.loss.sel(epoch=2).values[0, 0, j, i]) == pytest.approx(float(F.cross_entropy(logits, yb)),
                                                                               rel=2e-5), (i, j)
        assert float(ds.margin.sel(epoch=2).values[0, 0, j, i]) == pytest.approx(float((top - others).mean()),
                                                                                 rel=1e-4, abs=1e-5), (i, j)
