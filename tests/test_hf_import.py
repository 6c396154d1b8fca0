"""`landscape import hf:DIR`: a Hugging Face causal LM's directory as a run, scored as transformers scores it.

A tiny GPT-2 is trained here with plain torch on a text's characters (or a tokenizer's words) and saved
with `save_pretrained`: the grid's centre is transformers' own `model(ids, labels=ids).loss` on the same
sequences (each window of the dataset and the token after it: transformers shifts the labels inside),
a sharded save is the same run, and every bad directory is one line that writes nothing. Offline.
"""

from __future__ import annotations

import json
import shutil
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
import torch
from conftest import tree

from landscape_cli import grid
from landscape_cli.store import Store

transformers = pytest.importorskip("transformers")
pytest.importorskip("safetensors")

BLOCK = 16  # tokens per sample (--block-size)
VOCAB = 48  # the model's vocabulary: more than the text's characters and the tokenizer's words
SENTENCES = ["the cat sat on the mat", "a dog ran to the park", "we eat bread and jam", "my hat is red",
             "she can see the sea", "birds fly over hills", "rain falls on the roof"]


def _text() -> str:
    g = torch.Generator().manual_seed(0)
    picks = torch.randint(len(SENTENCES), (120,), generator=g).tolist()
    return ". ".join(SENTENCES[i] for i in picks) + ".\n"


def _char_ids(text: str) -> torch.Tensor:
    """The ids text:PATH gives: each character's index in the sorted set of the text's characters."""
    index = {c: i for i, c in enumerate(sorted(set(text)))}
    return torch.tensor([index[c] for c in text])


def _sequences(ids: torch.Tensor) -> torch.Tensor:
    """The training split as transformers would be given it: each window of BLOCK tokens and the next token."""
    train = ids[:int(len(ids) * 0.9)]
    n = (len(train) - 1) // BLOCK
    return torch.stack([train[i * BLOCK:i * BLOCK + BLOCK + 1] for i in range(n)])


def _hf_loss(directory: Path, sequences: torch.Tensor) -> float:
    """transformers' own loss of the model saved in `directory` (labels = inputs: it shifts them itself)."""
    model = transformers.AutoModelForCausalLM.from_pretrained(directory).eval()
    with torch.no_grad():
        return float(model(sequences, labels=sequences).loss)


def _tokenizer(text: str) -> Any:
    """A word-level tokenizer of the text's words, made offline."""
    from tokenizers import Tokenizer, models, pre_tokenizers

    words = sorted({w for w in text.replace(".", " . ").split()})
    tok = Tokenizer(models.WordLevel({w: i for i, w in enumerate(["[UNK]", *words])}, unk_token="[UNK]"))
    tok.pre_tokenizer = pre_tokenizers.WhitespaceSplit()
    return transformers.PreTrainedTokenizerFast(tokenizer_object=tok, unk_token="[UNK]")


@pytest.fixture(scope="module")
def saved(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    """A GPT-2 trained on the characters (checkpoint-4 and checkpoint-12 of one run, the final weights in DIR),
    the same final weights sharded, and with a tokenizer beside them."""
    root = tmp_path_factory.mktemp("hf")
    text = _text()
    (root / "corpus.txt").write_text(text)
    torch.manual_seed(0)
    config = transformers.GPT2Config(n_layer=2, n_head=2, n_embd=32, vocab_size=VOCAB, n_positions=64,
                                     bos_token_id=0, eos_token_id=0)
    model = transformers.AutoModelForCausalLM.from_config(config)
    seqs = _sequences(_char_ids(text))
    opt = torch.optim.Adam(model.parameters(), lr=3e-3)
    out = root / "gpt"
    transformers.logging.set_verbosity_error()  # (save_pretrained's notes)
    transformers.utils.logging.disable_progress_bar()
    for step in range(1, 13):
        model.train()
        opt.zero_grad()
        model(seqs, labels=seqs).loss.backward()
        opt.step()
        if step in (4, 12):
            model.eval().save_pretrained(out / f"checkpoint-{step}")
    model.save_pretrained(out)
    model.save_pretrained(root / "sharded", max_shard_size="20KB")
    shutil.copytree(out, root / "words", ignore=shutil.ignore_patterns("checkpoint-*"))
    _tokenizer(text).save_pretrained(root / "words")
    return {"root": root, "text": root / "corpus.txt", "dir": out, "sharded": root / "sharded", "words": root / "words"}


def _import(cli: Callable[..., Any], *args: str) -> dict[str, Any]:
    result = cli("import", *args, "--block-size", str(BLOCK), "--json", "--quiet")
    assert result.exit_code == 0, result.output
    return json.loads(result.stdout)


def _centre(run: str, store: Path) -> dict[int, float]:
    g = grid(run, width=3, pairs=1, batches="all", batch_size=64, store=store, progress=False)
    ds = g.to_xarray()
    return {int(e): float(ds.center_loss.sel(epoch=e, batch=0)) for e in ds.epoch.values}


def test_the_centre_is_transformers_own_loss(saved: dict[str, Path], cli: Any, store: Path,
                                             tmp_path: Path) -> None:
    """Two Trainer-style checkpoints (given in a shell glob's order) become epochs 0 and 1; the grid, run after
    the directory is gone, has transformers' own loss at its centre."""
    text = saved["text"].read_text()
    seqs = _sequences(_char_ids(text))
    expected = {0: _hf_loss(saved["dir"] / "checkpoint-4", seqs), 1: _hf_loss(saved["dir"] / "checkpoint-12", seqs)}
    moved = tmp_path / "gpt"
    shutil.copytree(saved["dir"], moved)
    made = _import(cli, f"hf:{moved}", f"text:{saved['text']}", str(moved / "checkpoint-12"),
                   str(moved / "checkpoint-4"), "--name", "chars")
    assert made["imported"] == [0, 1]
    assert [Path(f["file"]).name for f in made["files"]] == ["checkpoint-4", "checkpoint-12"]
    meta = Store.of(store).read_run(made["id"])
    assert meta.model["args"]["class"] == "GPT2LMHeadModel" and meta.model["args"]["config"]["n_embd"] == 32
    assert meta.config.block_size == BLOCK and meta.dataset["block_size"] == BLOCK
    shutil.rmtree(moved)  # the run alone rebuilds the model
    centre = _centre("chars", store)
    for epoch, loss in expected.items():
        assert centre[epoch] == pytest.approx(loss, abs=1e-5)
    assert cli("import", f"hf:{saved['dir']}", f"text:{saved['text']}", str(saved["dir"] / "checkpoint-4"),
               str(saved["dir"] / "checkpoint-12"), "--block-size", str(BLOCK), "--quiet").exit_code == 0
    assert len(Store.of(store).run_ids()) == 1  # the same weights elsewhere: the same run


def test_a_sharded_directory_is_the_same_run(saved: dict[str, Path], cli: Any, store: Path) -> None:
    single = _import(cli, f"hf:{saved['dir']}", f"text:{saved['text']}")
    sharded = _import(cli, f"hf:{saved['sharded']}", f"text:{saved['text']}")
    assert sharded["id"] == single["id"] and sharded["imported"] == []  # nothing new to write
    files = single["files"][0]
    assert files["layout"] == "safetensors"
    assert len(list(saved["sharded"].glob("model-*.safetensors"))) > 1


def test_the_directorys_tokenizer_makes_the_tokens(saved: dict[str, Path], cli: Any, store: Path) -> None:
    text = saved["text"].read_text()
    tokenizer = transformers.AutoTokenizer.from_pretrained(saved["words"], local_files_only=True)
    ids = torch.tensor(tokenizer(text, add_special_tokens=False)["input_ids"])
    assert int(ids.max()) < VOCAB and len(ids) < len(text) // 3  # words, not characters
    made = _import(cli, f"hf:{saved['words']}", f"text:{saved['text']}", "--name", "words")
    assert made["dataset"]["tokenizer"] == str(saved["words"].resolve())
    assert made["dataset"]["tokens"] == len(ids)
    assert made["config"]["dataset"] == "text:corpus.txt"  # the id covers the token ids, not where the text is
    assert _centre("words", store)[0] == pytest.approx(_hf_loss(saved["words"], _sequences(ids)), abs=1e-5)
    gone = saved["root"] / "words-gone"
    saved["words"].rename(gone)  # later commands tokenize the text again: without the tokenizer, one line
    try:
        result = cli("grid", "words", "--width", "5", "--batches", "1", "--batch-size", "8")
    finally:
        gone.rename(saved["words"])
    assert result.exit_code == 2 and f"the tokenizer's directory {saved['words'].resolve()} is gone" in result.stderr


def test_a_factory_of_token_ids_scores_too(saved: dict[str, Path], cli: Any, store: Path, tmp_path: Path) -> None:
    ids = _char_ids(saved["text"].read_text())
    torch.save(ids, tmp_path / "ids.pt")
    (tmp_path / "tokens.py").write_text(
        "import torch\n\n"
        "def data():\n"
        f"    ids = torch.load({str(tmp_path / 'ids.pt')!r})\n"
        f"    n = (len(ids) - 1) // {BLOCK}\n"
        f"    x, y = ids[:n * {BLOCK}].view(n, {BLOCK}), ids[1:n * {BLOCK} + 1].view(n, {BLOCK})\n"
        "    return {'train': (x[:-4], y[:-4]), 'val': (x[-4:], y[-4:]), 'task': 'classification'}\n")
    made = json.loads(cli("import", f"hf:{saved['dir']}", f"{tmp_path / 'tokens.py'}:data", "--json", "--quiet").stdout)
    n = (len(ids) - 1) // BLOCK
    seqs = torch.stack([ids[i * BLOCK:i * BLOCK + BLOCK + 1] for i in range(n - 4)])
    assert _centre(made["id"], store)[0] == pytest.approx(_hf_loss(saved["dir"], seqs), abs=1e-5)


def test_the_hessian_of_an_imported_model(saved: dict[str, Path], cli: Any, store: Path) -> None:
    _import(cli, f"hf:{saved['dir']}", f"text:{saved['text']}", "--name", "h")
    result = cli("hessian", "h", "--top", "1", "--batches", "1", "--batch-size", "16", "--json")
    assert result.exit_code == 0, result.output
    assert "eigenvalues" in result.stdout


def test_without_the_extra_it_is_one_line(saved: dict[str, Path], cli: Any, store: Path,
                                          monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setitem(sys.modules, "transformers", None)  # `import transformers` now fails as if not installed
    result = cli("import", f"hf:{saved['dir']}", f"text:{saved['text']}")
    assert result.exit_code != 0
    assert result.stderr.strip() == "Error: hf: needs the Hugging Face extra: pip install 'landscape-cli[hf]'"
    assert "Traceback" not in result.output and not store.exists()


@pytest.mark.parametrize("case", ["no-config", "unknown-type", "mismatch", "no-checkpoint"])
def test_bad_directories_are_one_line_and_write_nothing(saved: dict[str, Path], cli: Any, store: Path,
                                                        tmp_path: Path, case: str) -> None:
    bad = tmp_path / "bad"
    shutil.copytree(saved["dir"], bad, ignore=shutil.ignore_patterns("checkpoint-*"))
    extra: list[str] = []
    if case == "no-config":
        (bad / "config.json").unlink()
        needle = f"{bad} has no config.json"
    elif case == "unknown-type":
        config = json.loads((bad / "config.json").read_text())
        (bad / "config.json").write_text(json.dumps({**config, "model_type": "no-such-model"}))
        needle = "model_type 'no-such-model' is not a model transformers"
    elif case == "mismatch":
        from safetensors.torch import load_file, save_file

        state = load_file(str(bad / "model.safetensors"))
        state["transformer.extra.weight"] = state.pop("transformer.h.1.mlp.c_fc.weight")
        del state["transformer.ln_f.bias"]
        save_file(state, str(bad / "model.safetensors"))
        needle = ("do not match its config.json: missing keys transformer.h.1.mlp.c_fc.weight, transformer.ln_f.bias; "
                  "unexpected keys transformer.extra.weight")
    else:
        extra = [str(bad / "checkpoint-99")]
        needle = f"checkpoint directory {bad / 'checkpoint-99'} does not exist"
    store.mkdir(parents=True, exist_ok=True)
    before = tree(store)
    result = cli("import", f"hf:{bad}", f"text:{saved['text']}", *extra)
    assert result.exit_code == 2, result.output
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("Error: ") and needle in lines[0], result.stderr
    assert tree(store) == before
