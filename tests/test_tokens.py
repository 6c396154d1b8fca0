"""Token-level losses: targets [N, T] with padding (-100), scored over every token that is not padding.

A `gpt` run on a padded dataset factory (tests/userland/padded_tokens.py): its grid equals plain PyTorch
(the checkpoint rebuilt, a·d1 + b·d2 from the stored direction files added, cross-entropy over the
flattened tokens with ignore_index=-100), `--batches all` is the mean over the split's scored tokens
(not a mean of per-piece means), and sample targets [N] keep bitwise the values they had.
"""

from __future__ import annotations

import importlib.util
import json
from collections.abc import Callable
from pathlib import Path
from types import ModuleType
from typing import Any

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from conftest import StoreFactory, Train, filter_normalized

from landscape_cli.data import load_dataset
from landscape_cli.data.losses import IGNORE_INDEX, CrossEntropy, MeanSquaredError, scored
from landscape_cli.engine.compute import grid
from landscape_cli.errors import UsageError
from landscape_cli.kernel.batches import Batches
from landscape_cli.models.gpt import GPT
from landscape_cli.store import Store

USERLAND = Path(__file__).resolve().parent / "userland"
FACTORY = USERLAND / "padded_tokens.py"
PADDED = f"{FACTORY}:padded"
RUN = Train("gpt", PADDED, epochs=1, batch_size=16, name="padded")


def _factory() -> ModuleType:
    spec = importlib.util.spec_from_file_location("padded_tokens_for_tests", FACTORY)
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


@pytest.fixture(scope="module")
def padded(trained_store: StoreFactory) -> Path:
    """The master store with the gpt run on the padded tokens (read-only: grids go to copies)."""
    return trained_store.build(RUN)


@pytest.fixture
def store(copy_store: Callable[..., Path]) -> Path:
    """This test's own copy of the master (its $LANDSCAPE_STORE)."""
    return copy_store(RUN)


def _checkpoint(store: Path, epoch: int) -> dict[str, Any]:
    st = Store(store)
    return torch.load(st.run_dir(st.resolve("padded")) / f"checkpoints/epoch-{epoch:04d}.pt", weights_only=True)


def _model(ckpt: dict[str, Any], delta: dict[str, torch.Tensor] | None = None) -> GPT:
    """The checkpoint's model rebuilt by hand, each named parameter moved by `delta` (the tied head with its
    embedding: they are one parameter)."""
    args = ckpt["model_args"]
    model = GPT(vocab_size=args["num_outputs"], block_size=args["input_shape"][0])
    model.load_state_dict(ckpt["state_dict"])
    params = dict(model.named_parameters())
    with torch.no_grad():
        for name, d in (delta or {}).items():
            params[name].add_(d)
    return model.eval()


def _scores(model: torch.nn.Module, x: torch.Tensor, y: torch.Tensor) -> tuple[float, float]:
    """Cross-entropy over the flattened tokens (padding ignored) and the share of scored tokens predicted right."""
    with torch.no_grad():
        out = model(x)
    logits, target = out.reshape(-1, out.shape[-1]), y.reshape(-1)
    keep = target != -100
    return (F.cross_entropy(logits, target, ignore_index=-100).item(),
            (logits.argmax(1)[keep] == target[keep]).double().mean().item())


def _directions(g: Any, ckpt: dict[str, Any], pair: int) -> tuple[dict[str, torch.Tensor], dict[str, torch.Tensor]]:
    meta = json.loads((g.path / "grid.json").read_text())
    raw = torch.load(g.path.parent.parent / meta["directions"][pair]["file"], weights_only=True)
    weights = {n: p.detach() for n, p in _model(ckpt).named_parameters()}
    return filter_normalized(raw["d1"], weights), filter_normalized(raw["d2"], weights)


def test_the_data_has_padding_and_gpt_scores_tokens(padded: Path) -> None:
    data = load_dataset(PADDED)
    assert data.train_y.shape == (96, 12) and (data.train_y == IGNORE_INDEX).sum() > 200
    assert data.num_outputs == 11 and list(data.input_shape) == [12]
    run = Store(padded).read_run(Store(padded).resolve("padded"))
    assert run.model["args"] == {"input_shape": [12], "num_outputs": 11}


def test_a_token_grid_equals_plain_pytorch(store: Path) -> None:
    """Every point of a gpt plane on padded tokens: the library's values = the independent recomputation."""
    g = grid("padded", store=store, width=3, pairs=1, batches=2, batch_size=16, epochs=[0, 1], progress=False)
    ds = g.to_xarray()
    x, y = _factory().padded()["train"]
    for epoch in (0, 1):
        ckpt = _checkpoint(store, epoch)
        d1, d2 = _directions(g, ckpt, 0)
        for yi, b_ in enumerate(ds.y.values):
            for xi, a in enumerate(ds.x.values):
                model = _model(ckpt, {n: float(a) * d1[n] + float(b_) * d2[n] for n in d1})
                for batch in (0, 1):
                    rows = slice(batch * 16, (batch + 1) * 16)
                    loss, acc = _scores(model, x[rows], y[rows])
                    point = {"pair": 0, "batch": batch, "y": yi, "x": xi}
                    got_loss = float(ds.loss.sel(epoch=epoch).isel(point))
                    got_acc = float(ds.accuracy.sel(epoch=epoch).isel(point))
                    assert got_loss == pytest.approx(loss, rel=1e-5), (epoch, point)
                    assert got_acc == pytest.approx(acc, abs=1e-5), (epoch, point)


def test_batches_all_is_the_mean_over_the_splits_scored_tokens(store: Path) -> None:
    """--batches all pools pieces by their scored tokens: the value is the cross-entropy over every token of
    the split at once, not the mean of per-piece means; a piece of padding only weighs nothing."""
    g = grid("padded", store=store, batches="all", batch_size=8, width=3, pairs=1, epochs=[1], progress=False)
    ds = g.to_xarray()
    x, y = _factory().padded()["train"]
    ckpt = _checkpoint(store, 1)
    d1, d2 = _directions(g, ckpt, 0)
    for yi, b_ in enumerate(ds.y.values):
        for xi, a in enumerate(ds.x.values):
            model = _model(ckpt, {n: float(a) * d1[n] + float(b_) * d2[n] for n in d1})
            loss, acc = _scores(model, x, y)  # all 96 sequences in one pass: the pooled recomputation
            assert float(ds.loss.isel(epoch=0, pair=0, batch=0, y=yi, x=xi)) == pytest.approx(loss, rel=1e-5)
            assert float(ds.accuracy.isel(epoch=0, pair=0, batch=0, y=yi, x=xi)) == pytest.approx(acc, abs=1e-5)
    loss, _ = _scores(_model(ckpt), x, y)
    assert float(ds.center_loss.isel(epoch=0, batch=0)) == pytest.approx(loss, rel=1e-5)
    # the weighting matters here: per-piece means, weighted by samples, are another number
    pieces = [_scores(_model(ckpt), x[i:i + 8], y[i:i + 8])[0] for i in range(0, 88, 8)]
    assert abs(float(np.mean(pieces)) - loss) > 1e-3


def test_the_pieces_weigh_their_scored_tokens() -> None:
    data = load_dataset(PADDED)
    whole = Batches(data, "train", 1, 8, whole=True, bn="eval")
    counts = [int((y != -100).sum()) for y in data.train_y.split(8)]
    assert counts[-1] == 0 and len(whole.cpu) == 11  # the piece of padding only is left out
    assert whole.weights is not None and whole.weights.tolist() == counts[:-1]
    digits = load_dataset("digits")
    sizes = Batches(digits, "train", 1, 500, whole=True, bn="eval").weights
    assert sizes is not None and sizes.tolist() == [500, 500, 437]  # samples, as before token targets


def test_a_batch_with_no_scored_token_is_refused(store: Path) -> None:
    with pytest.raises(UsageError, match=r"batch 11 of the train split \(samples 88-95\) has no scored token"):
        grid("padded", store=store, batches=12, batch_size=8, width=3, pairs=1, epochs=[1], progress=False)


def test_a_split_with_no_scored_token_is_refused_when_loaded() -> None:
    with pytest.raises(UsageError, match=r"\(val\): every class target is -100"):
        load_dataset(f"{FACTORY}:all_padding_val")


def test_the_runs_metrics_are_token_means(padded: Path) -> None:
    """Training's records (loss and accuracy per epoch) are means over the split's scored tokens too."""
    st = Store(padded)
    run = st.read_run(st.resolve("padded"))
    splits = _factory().padded()
    for record in run.epochs:
        ckpt = _checkpoint(padded, record.epoch)
        for split, loss_, acc_ in (("val", record.val_loss, record.val_accuracy),
                                   ("train", record.checkpoint_train_loss, record.checkpoint_train_accuracy)):
            loss, acc = _scores(_model(ckpt), *splits[split])
            assert loss_ == pytest.approx(loss, rel=1e-5) and acc_ == pytest.approx(acc, abs=1e-6)


def test_the_hessian_operator_weighs_tokens(padded: Path) -> None:
    """The curvature's loss with --batches all is the token mean too: the operator's gradient (pieces weighted
    by Batches.weights) equals autograd's of the pooled cross-entropy."""
    from landscape_cli.kernel.hvp import operator

    data = load_dataset(PADDED)
    whole = Batches(data, "train", 1, 8, whole=True, bn="eval")
    model = _model(_checkpoint(padded, 1))
    names = [n for n, p in model.named_parameters() if p.dim() > 1]
    with operator(model, whole.on(torch.device("cpu"), False), names, "eval", whole.weights, CrossEntropy()) as op:
        got = op.gradient()
    x, y = data.train_x, data.train_y
    params = dict(model.named_parameters())
    out = model(x)
    loss = F.cross_entropy(out.reshape(-1, out.shape[-1]), y.reshape(-1), ignore_index=-100)
    want = torch.cat([g.reshape(-1) for g in torch.autograd.grad(loss, [params[n] for n in names])])
    np.testing.assert_allclose(got, want.double().numpy(), rtol=1e-4, atol=1e-6)


# --- the losses themselves ---------------------------------------------------------------------------


def test_sample_targets_keep_their_values_bitwise() -> None:
    g = torch.Generator().manual_seed(0)
    ce = CrossEntropy()
    for n in (1, 7, 64, 1000):
        out, y = torch.randn(n, 10, generator=g), torch.randint(0, 10, (n,), generator=g)
        assert torch.equal(ce(out, y), F.cross_entropy(out, y))
        assert torch.equal(ce.accuracy(out, y), (out.argmax(1) == y).float().mean())
        assert torch.equal(ce.correct(out, y), (out.argmax(1) == y).sum())
        assert scored(y) == n


def test_token_targets_score_every_token_but_padding() -> None:
    g = torch.Generator().manual_seed(1)
    out, y = torch.randn(4, 6, 5, generator=g), torch.randint(0, 5, (4, 6), generator=g)
    y[0, 3:] = -100
    y[2, :] = -100
    keep = y != -100
    ce = CrossEntropy()
    assert ce(out, y).item() == pytest.approx(F.cross_entropy(out[keep], y[keep]).item(), rel=1e-6)
    hits = out.argmax(-1)[keep] == y[keep]
    assert ce.accuracy(out, y).item() == pytest.approx(hits.float().mean().item())
    assert int(ce.correct(out, y)) == int(hits.sum()) and scored(y) == int(keep.sum()) == 15
    # PyTorch's own layout, the classes second ([N, C, T] for targets [N, T]), as before
    assert ce(out.transpose(1, 2), y).item() == pytest.approx(ce(out, y).item(), rel=1e-6)
    with pytest.raises(UsageError, match="cross-entropy needs outputs"):
        ce(torch.randn(4, 7, 5), y)
    with pytest.raises(UsageError, match="every class target is -100"):
        ce.check_targets(torch.full((2, 3), -100), "dataset 'x'")


def test_regression_over_trailing_dimensions() -> None:
    out, y = torch.randn(3, 4, 2), torch.randn(3, 4, 2)
    assert MeanSquaredError()(out, y).item() == pytest.approx(((out - y) ** 2).mean().item(), rel=1e-6)
    assert scored(y) == 3  # samples: every one has as many elements
