"""The built-in `gpt` and the `text:PATH` dataset: the model's shape, the windows, `landscape train gpt text:FILE`
followed by every command, the run's identity and records, resume, and bad input in one line."""

from __future__ import annotations

import hashlib
import json
import os
import random
import shutil
import subprocess
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch
from conftest import REPO, StoreFactory, Train, checkpoint_hashes, killed_and_resumed_training, subprocess_env

from landscape_cli import train
from landscape_cli.config import TrainConfig
from landscape_cli.data import load_dataset
from landscape_cli.data.text import TRAIN_SHARE
from landscape_cli.kernel.evaluate import Evaluator
from landscape_cli.models import list_models, model_entry
from landscape_cli.models.checkpoints import build_model
from landscape_cli.models.gpt import GPT
from landscape_cli.store import Store

WORDS = ("the", "loss", "landscape", "of", "a", "small", "network", "is", "a", "surface", "over", "two",
         "directions", "in", "weight", "space", "and", "its", "valleys", "show", "where", "training", "went")
BLOCK = 16


def _text(size: int = 4000, seed: int = 0) -> str:
    rng = random.Random(seed)
    lines, length = [], 0
    while length < size:
        line = " ".join(rng.choice(WORDS) for _ in range(rng.randint(5, 12))).capitalize() + ".\n"
        lines.append(line)
        length += len(line)
    return "".join(lines)


@pytest.fixture(scope="module")
def book(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """About 4 kB of text, one file for the whole module (the master run records its path)."""
    path = tmp_path_factory.mktemp("text") / "book.txt"
    path.write_text(_text(), encoding="utf-8")
    return path


def _run(book: Path) -> Any:
    return Train("gpt", f"text:{book}", epochs=3, block_size=BLOCK, batch_size=16, name="book")


@pytest.fixture(scope="module")
def master(trained_store: StoreFactory, book: Path) -> Path:
    return trained_store.build(_run(book))


@pytest.fixture
def store(master: Path, copy_store: Callable[..., Path], book: Path) -> Path:
    return copy_store(_run(book))


def ok(result: Any) -> Any:
    assert result.exit_code == 0, f"exit {result.exit_code}\n{result.stdout}\n{result.stderr}"
    return result


def one_line_error(result: Any, fragment: str) -> None:
    assert result.exit_code != 0, result.stdout
    lines = [line for line in result.stderr.splitlines() if line.strip()]
    assert len(lines) == 1 and lines[0].startswith("Error: "), result.stderr
    assert fragment in lines[0], lines[0]
    assert "Traceback" not in result.stderr + result.stdout


# --- the model ---------------------------------------------------------------------------------------


def test_gpt_is_registered_for_tokens() -> None:
    assert "gpt" in list_models() and "gpt" in list_models("tokens") and "gpt" not in list_models("images")
    assert model_entry("gpt").inputs == "tokens"


def test_the_model_has_nanogpts_shape() -> None:
    torch.manual_seed(0)
    model = GPT(vocab_size=30, block_size=BLOCK).eval()
    names = [n for n, _ in model.named_parameters()]
    assert names[:2] == ["transformer.wte.weight", "transformer.wpe.weight"] and "lm_head.weight" not in names
    assert model.lm_head.weight is model.transformer.wte.weight  # tied: one parameter
    assert len(model.transformer.h) == 2 and model.transformer.h[0].attn.n_head == 2
    x = torch.randint(0, 30, (3, BLOCK))
    out = model(x)
    assert out.shape == (3, BLOCK, 30)
    assert model(x[:, :5]).shape == (3, 5, 30)  # shorter sequences too
    # causal: a later token never changes an earlier position's logits
    changed = x.clone()
    changed[:, 9] = (changed[:, 9] + 1) % 30
    with torch.no_grad():
        a, b = model(x), model(changed)
    assert torch.equal(a[:, :9], b[:, :9]) and not torch.allclose(a[:, 9:], b[:, 9:])
    with pytest.raises(ValueError, match="longer than the model's block size"):
        model(torch.zeros(1, BLOCK + 1, dtype=torch.long))


def test_the_attention_can_be_differentiated_twice() -> None:
    """Hessian-vector products need a double backward through the attention: the fused kernel the model runs
    has none, the products' kernels (`differentiable_kernels`) have one."""
    from landscape_cli.kernel.hvp import differentiable_kernels

    torch.manual_seed(0)
    model = GPT(vocab_size=12, block_size=8)
    x = torch.randint(0, 12, (2, 8))
    params = list(model.parameters())
    v = [torch.randn_like(p) for p in params]

    def hvp() -> list[torch.Tensor]:
        loss = torch.nn.functional.cross_entropy(model(x).reshape(-1, 12), x.roll(-1, 1).reshape(-1))
        grads = torch.autograd.grad(loss, params, create_graph=True)
        return list(torch.autograd.grad(sum((g * u).sum() for g, u in zip(grads, v, strict=True)), params))

    with pytest.raises(RuntimeError, match=r"derivative for .*attention.* is not implemented"):
        hvp()  # the fused CPU kernel training and grids run
    with differentiable_kernels(model):
        hv = hvp()
    assert all(torch.isfinite(h).all() for h in hv) and sum(float(h.abs().sum()) for h in hv) > 0


def test_the_batched_evaluator_agrees_with_the_loop() -> None:
    """Several points per forward pass (vmap over the weights) give the loop's values."""
    torch.manual_seed(0)
    model = GPT(vocab_size=12, block_size=8)
    x = torch.randint(0, 12, (6, 8))
    batches = [(x[:3], x.roll(-1, 1)[:3]), (x[3:], x.roll(-1, 1)[3:])]
    names = [n for n, p in model.named_parameters() if p.dim() > 1]
    d1 = {n: torch.randn_like(p) * 0.1 for n, p in model.named_parameters() if n in names}
    d2 = {n: torch.randn_like(p) * 0.1 for n, p in model.named_parameters() if n in names}
    points = [(a, b) for a in (-1.0, 0.0, 0.5) for b in (-0.5, 1.0)]
    values = []
    for k in (1, 4):
        with Evaluator(model, batches, "eval", points_per_pass=k).plane(d1, d2) as plane:
            values.append(plane.evaluate(points))
    np.testing.assert_allclose(values[1][0], values[0][0], rtol=1e-5)
    np.testing.assert_allclose(values[1][1], values[0][1], atol=1e-6)


# --- the text dataset --------------------------------------------------------------------------------


def test_text_is_cut_into_non_overlapping_windows(book: Path) -> None:
    text = book.read_text(encoding="utf-8")
    data = load_dataset(f"text:{book}", block_size=BLOCK)
    vocabulary = sorted(set(text))
    assert data.num_outputs == len(vocabulary) and data.details["vocabulary"] == "".join(vocabulary)
    ids = torch.tensor([vocabulary.index(c) for c in text])
    cut = int(len(text) * TRAIN_SHARE)
    for (x, y), part in (((data.train_x, data.train_y), ids[:cut]), ((data.val_x, data.val_y), ids[cut:])):
        n = (len(part) - 1) // BLOCK
        assert x.shape == y.shape == (n, BLOCK) and x.dtype == y.dtype == torch.int64
        for i in (0, n - 1):
            assert torch.equal(x[i], part[i * BLOCK:(i + 1) * BLOCK])
            assert torch.equal(y[i], part[i * BLOCK + 1:(i + 1) * BLOCK + 1])
    assert data.sha256 == hashlib.sha256(book.read_bytes()).hexdigest()


# --- the commands -------------------------------------------------------------------------------------


def test_train_gpt_on_text_then_every_command(store: Path, book: Path, cli: Any) -> None:
    """`landscape train gpt text:FILE` (the master's run: nothing to train), then a plane, the interpolation,
    the PCA plane, the Hessian, their plots and an export."""
    trained = ok(cli("train", "gpt", f"text:{book}", "--block-size", str(BLOCK), "--epochs", "3",
                     "--batch-size", "16"))
    assert "nothing to train" in trained.stderr and "gpt / text:book.txt" in trained.stdout
    ok(cli("grid", "book", "--epochs", "3", "--width", "3", "--pairs", "1", "--batches", "1", "--batch-size", "16",
           "--name", "plane", "-q"))
    ok(cli("grid", "book", "--directions", "interpolate", "--epochs", "0", "--to-epoch", "3", "--width", "5",
           "--batches", "all", "--batch-size", "64", "--name", "line", "-q"))
    ok(cli("grid", "book", "--directions", "pca", "--width", "3", "--batches", "1", "--batch-size", "16",
           "--name", "pca", "-q"))
    ok(cli("hessian", "book", "--epochs", "3", "--top", "1", "--batches", "1", "--batch-size", "8",
           "--probes", "2", "-q"))
    for name in ("plane", "line", "pca"):
        png = Path(ok(cli("plot", "book", "--grid", name)).stdout.strip())
        assert png.is_file() and png.suffix == ".png", png
    assert Path(ok(cli("plot", "book", "--hessian")).stdout.strip()).is_file()
    exported = Path(ok(cli("export", "book", "--grid", "plane", "--format", "npz")).stdout.strip().split()[-1])
    assert exported.is_file()
    with np.load(exported) as npz:
        assert np.isfinite(npz["loss"]).all()


def test_the_run_id_covers_the_texts_sha256_and_the_block_size(master: Path, book: Path, tmp_path: Path) -> None:
    st = Store(master)
    run = st.read_run(st.resolve("book"))
    sha = hashlib.sha256(book.read_bytes()).hexdigest()
    assert run.config.identity()["block_size"] == BLOCK and run.config.data_sha256 == sha
    assert run.config.dataset == "text:book.txt"
    assert run.dataset["path"] == str(book) and run.dataset["sha256"] == sha and run.dataset["block_size"] == BLOCK
    assert "block_size" not in TrainConfig("cnn", "digits").identity()  # written only when used
    # the same text elsewhere: the same run; another block size or another text: another run
    moved = tmp_path / "elsewhere" / "book.txt"
    moved.parent.mkdir()
    shutil.copy(book, moved)
    scratch = tmp_path / "scratch"
    common = {"epochs": 0, "batch_size": 16, "store": scratch, "progress": False}
    assert train("gpt", f"text:{moved}", block_size=BLOCK, **common).run_id == run.id
    assert train("gpt", f"text:{moved}", block_size=BLOCK // 2, **common).run_id != run.id
    moved.write_text(book.read_text() + "One more line.\n")
    assert train("gpt", f"text:{moved}", block_size=BLOCK, **common).run_id != run.id
    default = train("gpt", f"text:{moved}", **common)
    assert default.meta.config.block_size == 64 and default.meta.dataset["input_shape"] == [64]


def test_later_commands_reload_the_text_and_refuse_a_changed_or_vanished_one(book: Path, tmp_path: Path,
                                                                            cli: Any) -> None:
    text = tmp_path / "notes.txt"
    shutil.copy(book, text)
    ok(cli("train", "gpt", f"text:{text}", "--block-size", str(BLOCK), "--epochs", "1", "--name", "notes", "-q"))
    args = ("grid", "notes", "--width", "3", "--pairs", "1", "--batches", "1", "--batch-size", "8", "-q")
    ok(cli(*args, "--epochs", "0"))
    ckpt = torch.load(next(tmp_path.glob("store/*/checkpoints/epoch-0001.pt")), weights_only=True)
    assert build_model(ckpt)(torch.zeros(1, BLOCK, dtype=torch.long)).shape[1] == BLOCK
    text.write_text(book.read_text() + "edited\n")
    one_line_error(cli(*args, "--epochs", "1"), "changed since the run was made")
    text.unlink()
    one_line_error(cli(*args, "--epochs", "1"), "is gone")


@pytest.mark.parametrize(("content", "extra", "fragment"), [
    (None, (), "does not exist"),
    (b"", (), "is empty"),
    (b"caf\xe9 latin-1\n", (), "is not UTF-8 text"),
    (b"short text\n", ("--block-size", "64"), "longer than the text"),
    (("abc " * 30).encode(), ("--block-size", "20"), "longer than the val split"),
    (b"fine text, but a bad size\n" * 5, ("--block-size", "0"), "--block-size must be at least 1"),
])
def test_bad_text_input_is_one_line(cli: Any, tmp_path: Path, content: bytes | None, extra: tuple[str, ...],
                                    fragment: str) -> None:
    path = tmp_path / "input.txt"
    if content is not None:
        path.write_bytes(content)
    one_line_error(cli("train", "gpt", f"text:{path}", "--epochs", "1", *extra), fragment)
    assert not list((tmp_path / "store").glob("*/run.json"))


def test_block_size_for_another_dataset_is_one_line(cli: Any, tmp_path: Path) -> None:
    one_line_error(cli("train", "cnn", "digits", "--block-size", "16"), "--block-size applies to text datasets")
    one_line_error(cli("train", "gpt", "digits"), "takes token ids [N, T]")
    (tmp_path / "t.txt").write_text(_text(600))
    one_line_error(cli("train", "cnn", f"text:{tmp_path / 't.txt'}", "--block-size", "8"), "takes square images")
    one_line_error(cli("train", "gpt", f"text:{tmp_path / 't.txt'}", "--activation", "tanh"), "keeps its GELU")


# --- resume ---------------------------------------------------------------------------------------------


@pytest.mark.slow
def test_killed_gpt_training_resumes_bitwise(trained_store: StoreFactory, book: Path, tmp_path: Path) -> None:
    """SIGKILL in the middle of training gpt on a text, rerun: the same checkpoints as an uninterrupted run."""
    args = ["train", "gpt", f"text:{book}", "--block-size", str(BLOCK), "--epochs", "4", "--batch-size", "4", "--quiet"]
    reference = trained_store("gpt", f"text:{book}", epochs=4, block_size=BLOCK, batch_size=4)
    assert killed_and_resumed_training(args, tmp_path / "killed") == checkpoint_hashes(reference)


@pytest.mark.slow
def test_the_readme_example_script(tmp_path: Path) -> None:
    """examples/gpt_readme.sh as README runs it: gpt on this README, the three figures copied out."""
    env = subprocess_env(threads=1)
    env["PATH"] = f"{Path(sys.executable).parent}{os.pathsep}{env['PATH']}"
    env["LANDSCAPE_STORE"] = str(tmp_path / "runs")
    out = tmp_path / "figures"
    done = subprocess.run([str(REPO / "examples" / "gpt_readme.sh"), str(out)], env=env, capture_output=True,
                          text=True, timeout=600)
    assert done.returncode == 0, done.stderr[-3000:]
    assert sorted(p.name for p in out.iterdir()) == ["hessian.png", "interpolation.png", "plane.png"]


def test_import_cuts_a_text_with_its_block_size(cli: Any, master: Path, book: Path, tmp_path: Path) -> None:
    """`landscape import gpt text:FILE CKPT... --block-size B` scores the windows the run was trained on: each
    imported epoch's losses equal the trained run's (the same weights on the same windows)."""
    trained = json.loads(next(master.glob("*/run.json")).read_text())
    files = [str(master / trained["id"] / e["checkpoint"]) for e in trained["epochs"]]
    done = ok(cli("import", "gpt", f"text:{book}", *files, "--epochs", ",".join(str(e["epoch"]) for e in trained["epochs"]),
                  "--block-size", str(BLOCK), "--store", str(tmp_path / "imported"), "--json", "--quiet"))
    imported = json.loads(done.stdout)
    assert imported["dataset"]["block_size"] == BLOCK
    assert [(e["train_loss"], e["val_loss"]) for e in imported["epochs"]] == [
        (e["checkpoint_train_loss"], e["val_loss"]) for e in trained["epochs"]]
    one_line_error(cli("import", "cnn", "digits", files[0], "--block-size", "8", "--store", str(tmp_path / "other")),
                   "--block-size applies to text datasets")
