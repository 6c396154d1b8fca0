"""Commands about runs and their contents: train, import, ls, layers, verify.

Plain functions: `landscape_cli.cli.application` registers them as commands. Heavy libraries (torch, zarr)
are imported inside the commands so that `landscape --help` and `landscape ls` start fast.
"""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, Any

import typer
from rich.table import Table

from landscape_cli.cli._common import (
    DataDirOpt,
    DeviceOpt,
    JsonOpt,
    NameOpt,
    QuietOpt,
    StoreOpt,
    ThreadsOpt,
    err,
    human_size,
    name_suffix,
    num,
    pct,
    print_json,
    set_threads,
    stdout,
)
from landscape_cli.config import TrainConfig
from landscape_cli.errors import IntegrityError, Interrupted
from landscape_cli.store import Store


def train(
    model: Annotated[str, typer.Argument(help="Model name (`landscape models` lists them), pkg.module:factory or "
                                          "./file.py:factory.", show_default=False)],
    dataset: Annotated[str, typer.Argument(help="Dataset name (`landscape datasets` lists them), pkg.module:factory "
                                            "or ./file.py:factory.", show_default=False)],
    epochs: Annotated[int, typer.Option(help="Epochs to train (epoch 0, the untrained model, is always kept).")] = 10,
    batch_size: Annotated[int, typer.Option(help="Mini-batch size.")] = TrainConfig.batch_size,
    optimizer: Annotated[str, typer.Option(help="adam or sgd.")] = TrainConfig.optimizer,
    lr: Annotated[float, typer.Option(help="Learning rate.")] = TrainConfig.lr,
    momentum: Annotated[float, typer.Option(help="SGD momentum.")] = TrainConfig.momentum,
    weight_decay: Annotated[float, typer.Option(help="L2 weight decay.")] = TrainConfig.weight_decay,
    activation: Annotated[
        str, typer.Option(help="relu, sigmoid or tanh: replaces every activation of a built-in model (a factory's "
                          "model is never rewritten).")
    ] = TrainConfig.activation,
    loss: Annotated[
        str | None, typer.Option(help="cross-entropy or mse [default: from the dataset's task].", show_default=False)
    ] = None,
    seed: Annotated[int, typer.Option(help="Seed of the initial weights and of the data order.")] = TrainConfig.seed,
    block_size: Annotated[
        int | None, typer.Option(help="Characters per sample of a text:PATH dataset [default: 64].",
                                 show_default=False)
    ] = None,
    device: DeviceOpt = "auto",
    threads: ThreadsOpt = None,
    data_dir: Annotated[
        Path | None,
        typer.Option(help="Where datasets are cached (else $LANDSCAPE_DATA, else ~/.cache/landscape/data).",
                     show_default=False),
    ] = None,
    track_lambda_max: Annotated[
        int | None, typer.Option(metavar="K", help="Estimate λmax, the top Hessian eigenvalue of the training loss, "
                                 "at step 0 and every K optimizer steps (Lanczos warm-started from the last "
                                 "eigenvector; BatchNorm in train mode): `landscape plot RUN --lambda-max` draws it "
                                 "against 2/lr. Changes no weight and not the run's id; a continuation must repeat "
                                 "it.", show_default=False)
    ] = None,
    track_batches: Annotated[int, typer.Option(help="Probe batches of --track-lambda-max: the train split's first "
                                               "ones, never shuffled.")] = 1,
    track_batch_size: Annotated[
        int | None, typer.Option(help="Samples per probe batch of --track-lambda-max [default: --batch-size].",
                                 show_default=False)
    ] = None,
    checkpoint_every: Annotated[
        int | None, typer.Option(metavar="N", help="Also checkpoint every N optimizer steps (part of the run's id; "
                                 "its checkpoints are then keyed by step: grid/hessian --at-steps). A run killed "
                                 "within an epoch continues from its last step checkpoint.", show_default=False)
    ] = None,
    keep: Annotated[
        str | None, typer.Option(metavar="POLICY", help="Which checkpoints to keep: every=K (every k-th), last=N, "
                                 "epochs (epoch ends), comma-separated; the newest and any a grid or Hessian result "
                                 "refers to are always kept. Recorded in run.json [default: all].",
                                 show_default=False)
    ] = None,
    store: StoreOpt = None,
    name: NameOpt = None,
    json_output: JsonOpt = False,
    quiet: QuietOpt = False,
) -> None:
    """Train MODEL on DATASET and checkpoint every epoch into a run.

    The run's id is a hash of the training configuration: the same command again trains nothing,
    resumes a stopped run from its last complete epoch, or continues it when --epochs grows. Your own
    model or dataset: pkg.module:factory or ./file.py:factory (README: "Your own model and data");
    the id then covers the factory file's sha256 and the data's, so edits make a new run. text:PATH trains
    on a text file's characters (README: "Language models"), e.g. `landscape train gpt text:README.md`.

    Example: `landscape train resnet digits --epochs 5 --name quickstart`; every 20 steps, keeping every 5th
    of those and the epoch ends: `landscape train cnn digits --epochs 3 --checkpoint-every 20 --keep every=5,epochs`
    """
    set_threads(threads)
    from landscape_cli.training import train as train_run

    def report(record: Any) -> None:
        if not quiet:
            at = record.train_at_checkpoint()
            train = (f"train loss {num(at[0])} acc {pct(at[1])}" if at is not None else "")
            mean = f"  (mean during the epoch {num(record.train_loss)})" if record.epoch > 0 else ""
            err().print(
                f"epoch {record.epoch:>3}  {train}{mean}"
                f"  val loss {num(record.val_loss)} acc {pct(record.val_accuracy)}  ({record.seconds:.1f} s)"
            )

    try:
        result = train_run(
            model, dataset, epochs=epochs, batch_size=batch_size, optimizer=optimizer, lr=lr,
            momentum=momentum, weight_decay=weight_decay, activation=activation, seed=seed, loss=loss,
            block_size=block_size, device=device,
            data_dir=data_dir, store=store, name=name, progress=not quiet, on_epoch=report,
            track_lambda_max=track_lambda_max, track_batches=track_batches, track_batch_size=track_batch_size,
            checkpoint_every=checkpoint_every, keep=keep,
        )
    except KeyboardInterrupt:
        raise Interrupted(
            "training interrupted: run the same command again to resume from the last complete epoch"
        ) from None
    meta = result.meta
    if json_output:
        print_json({"id": result.run_id, "path": result.path, "trained": result.trained, **meta.to_json()})
        return
    if result.existed:
        err().print(f"run {result.run_id} already has epochs 0-{meta.epochs_done}: nothing to train")
    stdout().print(_epochs_table(meta))
    stdout().print(f"run [bold]{result.run_id}[/bold]{name_suffix(meta.name)} in {result.path}")


def _epochs_table(meta: Any) -> Table:
    cfg = meta.config
    imported = cfg.imported is not None
    how = "imported" if imported else f"{cfg.optimizer}, lr {cfg.lr}"
    rewritten = "activation" in meta.model.get("args", {})  # a factory's model (or gpt) is used as written
    model = f"{cfg.model} / {cfg.activation}" if rewritten else cfg.model
    table = Table(title=f"{model} / {cfg.dataset}  ({how})")
    columns = ["epoch", "train loss", "train acc"] + ([] if imported else ["mean loss during the epoch"])
    for col in (*columns, "val loss", "val acc", "seconds"):
        table.add_column(col, justify="right")
    steps = [r for r in meta.epochs if r.epoch_end is False]
    if steps:
        kept = sum(not r.removed for r in steps)
        table.caption = (f"and {len(steps)} checkpoints within epochs (every {cfg.checkpoint_every} steps"
                         + (f"; {kept} kept by --keep" if kept < len(steps) else "") + "): `landscape grid --at-steps`")
    for r in meta.epochs:
        if r.epoch_end is False:
            continue
        at = r.train_at_checkpoint(imported)  # at the checkpoint (eval mode), where it is known
        cells = [str(r.epoch), num(at[0]) if at else "-", pct(at[1]) if at else "-"]
        if not imported:
            cells.append(num(r.train_loss) if r.epoch > 0 else "-")
        table.add_row(*cells, num(r.val_loss), pct(r.val_accuracy), f"{r.seconds:.1f}")
    return table


def import_(
    model: Annotated[str, typer.Argument(help="The model the weights are of: a built-in name, pkg.module:factory, "
                                          "./file.py:factory, or hf:DIR (a Hugging Face causal LM's directory).",
                                          show_default=False)],
    dataset: Annotated[str, typer.Argument(help="The dataset to score them on (as for train).", show_default=False)],
    checkpoints: Annotated[list[Path] | None, typer.Argument(
        help="Checkpoint files (.pt, .pth, .ckpt, .bin, .safetensors) or folders of them; for hf:DIR, checkpoint "
             "directories (e.g. DIR/checkpoint-500) [default for hf:DIR: DIR itself].", show_default=False)] = None,
    epochs: Annotated[
        str | None, typer.Option(help="Each file's epoch, in the order given (e.g. 0,5,9) [default: the single number "
                                 "in each file name; hf:DIR: 0, 1, ... in training order].", show_default=False)
    ] = None,
    activation: Annotated[str, typer.Option(help="A built-in model's activation, as it was trained.")] = "relu",
    loss: Annotated[
        str | None, typer.Option(help="cross-entropy or mse [default: from the dataset's task].", show_default=False)
    ] = None,
    block_size: Annotated[
        int | None, typer.Option(help="On text:PATH: tokens (characters, or hf:DIR's tokens) per sample [default: 64].",
                                 show_default=False)
    ] = None,
    device: DeviceOpt = "auto",
    threads: ThreadsOpt = None,
    data_dir: DataDirOpt = None,
    store: StoreOpt = None,
    name: NameOpt = None,
    json_output: JsonOpt = False,
    quiet: QuietOpt = False,
) -> None:
    """Make a run from weights trained elsewhere: then grid, hessian, plot, ls and verify work on it.

    Each file holds a plain state_dict, a dict with one under "state_dict" or "model" (Lightning and
    most training scripts; a common key prefix such as "model." or "module." is stripped), or is a
    .safetensors file. Files are read without running any code they hold: objects other than
    tensors (Lightning's hyper-parameters...) are replaced by inert placeholders. The run's id is a
    hash of the weights: importing the same files again changes nothing.

    hf:DIR imports a Hugging Face causal LM as save_pretrained wrote it (config.json, model.safetensors
    or its shards; needs `pip install 'landscape-cli[hf]'`), scored on text:PATH in DIR's own tokens
    (README: "Hugging Face checkpoints").

    Example: `landscape import resnet digits ckpts/epoch=*.ckpt --epochs 0,1,5 --name theirs`,
    `landscape import hf:./out text:corpus.txt ./out/checkpoint-* --block-size 128`
    """
    set_threads(threads)
    from landscape_cli.config import parse_epochs
    from landscape_cli.errors import UsageError
    from landscape_cli.exchange.hf_import import import_hf, is_hf
    from landscape_cli.exchange.importer import import_run

    try:
        if is_hf(model):
            if activation != TrainConfig.activation:
                raise UsageError("--activation applies to the built-in models only: hf:DIR keeps its own")
            result = import_hf(model, dataset, list(checkpoints or []), epochs=parse_epochs(epochs),
                               block_size=block_size, loss=loss, device=device, name=name, store=store,
                               data_dir=data_dir, progress=not quiet)
        else:
            result = import_run(model, dataset, list(checkpoints or []), epochs=parse_epochs(epochs),
                                activation=activation, loss=loss, block_size=block_size, device=device, name=name,
                                store=store, data_dir=data_dir, progress=not quiet)
    except KeyboardInterrupt:  # a run is written whole (run.json last) or removed: nothing half-imported stays
        raise Interrupted("import interrupted: no half-imported run was kept (a run stays only once all its "
                          "checkpoints and run.json are written; temporary files removed); run the same command "
                          "again") from None
    meta = result.meta
    if json_output:
        print_json({"id": result.run_id, "path": result.path, "imported": result.imported,
                    "files": meta.model.get("imported", []), **meta.to_json()})
        return
    if result.existed:
        err().print(f"run {result.run_id} already holds these weights: nothing to import")
    stdout().print(_epochs_table(meta))
    stdout().print(f"run [bold]{result.run_id}[/bold]{name_suffix(meta.name)} in {result.path}")


def ls(store: StoreOpt = None, json_output: JsonOpt = False) -> None:
    """List every run in the store, with its grids, its Hessian results and their progress.

    Example: `landscape ls --store runs`
    """
    from landscape_cli.views.listing import list_runs

    st = Store(store)
    runs = list_runs(st)
    if json_output:
        print_json({"store": str(st.root), "runs": runs})
        return
    if not runs:
        stdout().print(f"no runs in {st.root}: `landscape train MODEL DATASET` makes one")
        return
    table = Table(title=f"runs in {st.root}")
    for col in ("id", "name", "model", "dataset", "activation", "epochs", "status", "val acc", "size"):
        table.add_column(col, justify="right" if col in ("epochs", "val acc", "size") else "left")
    for r in runs:
        if r["status"] == "damaged":
            table.add_row(r["id"], "", "", "", "", "", "[red]damaged[/red]", "", "")
            continue
        done = "-" if r["epochs_done"] is None else str(r["epochs_done"])
        epochs = ",".join(map(str, r["epochs"])) if r["imported"] else f"{done}/{r['epochs_requested']}"
        table.add_row(r["id"], r["name"] or "", r["model"], r["dataset"], r["activation"],
                      epochs, r["status"], pct(r["val_accuracy"]),
                      human_size(r["size_bytes"]))
        for g in r["grids"]:
            table.add_row(f"  └ {g['id']}", g.get("name") or "", *_grid_cells(g))
        for h in r.get("hessians", []):
            table.add_row(f"  └ {h['id']}", h.get("name") or "", *_hessian_cells(h))
        for c in r.get("curves", []):
            table.add_row(f"  └ {c['id']}", c.get("name") or "", *_curve_cells(c))
    stdout().print(table)


def _grid_cells(g: dict[str, Any]) -> list[str]:
    if g.get("status") == "damaged":
        return ["grid", "", "", "", "[red]damaged[/red]", "", ""]
    epochs = ",".join(str(e) for e in g["epochs"])
    diverged = f", {g['diverged']} diverged" if g.get("diverged") else ""
    return [f"grid {g['description']}", g["norm"] if g["kind"] != "interpolate" else "", f"bn {g['bn']}",
            f"{'step' if g.get('steps') else 'ep'} {epochs}", f"{pct(g['done'])} done{diverged}", "", ""]


def _hessian_cells(h: dict[str, Any]) -> list[str]:
    if h.get("status") == "damaged":
        return ["hessian", "", "", "", "[red]damaged[/red]", "", ""]
    data = "all" if h["batches"] == "all" else f"{h['batches']}x{h['batch_size']}"
    what = f"hessian top {h['top']}" + (" + density" if h.get("density") else "")
    unit = "steps" if h.get("steps") else "epochs"
    done = "complete" if h["status"] == "complete" else f"{len(h['epochs_done'])}/{len(h['epochs'])} {unit} done"
    keys = ",".join(str(e) for e in h["epochs"])
    return [what, f"batches {data}", f"bn {h['bn']}", f"{'step' if h.get('steps') else 'ep'} {keys}", done, "", ""]


def _curve_cells(c: dict[str, Any]) -> list[str]:
    """A curve's row under each of its two runs: "curve bezier 1 bend", "-> RUN_B:EPOCH" (under RUN_B: "<- RUN_A:EPOCH")."""
    if c.get("status") == "damaged":
        return ["curve", "", "", "", "[red]damaged[/red]", "", ""]
    shape = f"curve {c['shape']} {c['bends']} bend{'s' if c['bends'] > 1 else ''}"
    other = f"-> {c['run_b']}:{c['epoch_b']}" if c["role"] == "from" else f"<- {c['run_a']}:{c['epoch_a']}"
    return [shape, other, "", f"{max(c['epochs_done'], 0)}/{c['epochs_requested']}", c["status"], "", ""]


def layers(
    run_or_model: Annotated[str, typer.Argument(help="Run id, id prefix or name; or a model name (`landscape models`).",
                                                show_default=False)],
    layer: Annotated[
        list[str] | None, typer.Option(help="Show what this name or glob pattern selects, e.g. 'blocks.3.*' "
                                       "(repeatable, as for grid and hessian).", show_default=False)
    ] = None,
    perturb_biasbn: Annotated[
        bool, typer.Option(help="With --layer: biases and norm parameters are selected too (as grid's option).")
    ] = False,
    dataset: Annotated[
        str, typer.Option(help="For a model name: the dataset it is built for (its first and last layers follow it).")
    ] = "digits",
    store: StoreOpt = None,
    json_output: JsonOpt = False,
) -> None:
    """List the parameter tensors of a run's model (the names `grid --layer` accepts), or what --layer selects.

    With --layer NAME or PATTERN (repeatable; shell-style patterns over whole names, * also crosses
    dots): the tensors each matches, which of them a grid or hessian with the same --layer (and
    --perturb-biasbn) moves, and how many parameters that is. A pattern that matches nothing is an error.

    Example: `landscape layers quickstart`, `landscape layers quickstart --layer 'layer4.*' --layer 'fc.*'`
    """
    from rich.markup import escape

    from landscape_cli.engine.compute import layer_report, list_layers

    if layer:
        report = layer_report(run_or_model, layer, store, perturb_biasbn=perturb_biasbn, dataset=dataset)
        if json_output:
            print_json(report)
            return
        table = Table(title=escape(f"--layer {' '.join(report['layer'])} of {report['of']}"))
        for col in ("name", "shape", "parameters", "kind", "matched by", "selected"):
            table.add_column(col, justify="right" if col == "parameters" else "left")
        for r in report["layers"]:
            table.add_row(r["name"], "x".join(map(str, r["shape"])), f"{r['parameters']:,}", r["kind"],
                          escape(" ".join(r["matched_by"])), "yes" if r["selected"] else "no (--perturb-biasbn)")
        stdout().print(table)
        stdout().print(f"selected {report['tensors']} tensors, {report['parameters']:,} of the model's "
                       f"{report['model_parameters']:,} parameters ({100 * report['fraction']:.2f}%)")
        return
    rows = list_layers(run_or_model, store, dataset)
    if json_output:
        print_json(rows)
        return
    table = Table(title="parameters")
    for col in ("name", "shape", "parameters", "kind", "perturbed by default"):
        table.add_column(col, justify="right" if col == "parameters" else "left")
    for r in rows:
        table.add_row(r["name"], "x".join(map(str, r["shape"])), f"{r['parameters']:,}", r["kind"],
                      "yes" if r["perturbed_by_default"] else "no (--perturb-biasbn)")
    stdout().print(table)


def verify(
    run: Annotated[str | None, typer.Argument(help="Only this run [default: every run].", show_default=False)] = None,
    store: StoreOpt = None,
    json_output: JsonOpt = False,
) -> None:
    """Re-hash checkpoints, optimizer states, directions and grid metadata, decode every grid chunk, and check that each
    run's model, rebuilt, still computes what it recorded on the run's probe samples.

    Reports each file that no longer matches what was recorded when it was written, with what to do;
    exits with 1 if anything is damaged. Changes nothing.

    Example: `landscape verify quickstart`
    """
    from landscape_cli.models.checkpoints import behaviour_problem
    from landscape_cli.store.verify import verify as verify_store

    report = verify_store(store, run, behaviour_problem)
    problems = [vars(p) for p in report.problems]
    if json_output:
        print_json({"ok": report.ok, "checked": report.checked, "problems": problems,
                    "leftover_temporary_files": report.leftovers, "unfinished_grids": report.unfinished})
    else:
        checked = ", ".join(f"{v} {k.replace('_', ' ')}" for k, v in report.checked.items())
        if problems:
            table = Table(title="damaged")
            for col in ("run", "file", "problem", "what to do"):
                table.add_column(col, overflow="fold")
            for p in problems:
                table.add_row(p["run"], p["path"], p["problem"], p["fix"])
            stdout().print(table)
        stdout().print(f"checked {checked}")
        if report.leftovers:
            stdout().print(f"{len(report.leftovers)} temporary files left by killed writers (never read; safe to delete)")
        if report.unfinished:
            stdout().print(f"{len(report.unfinished)} grids whose creation was stopped before any row (no grid.json; "
                           "the same `landscape grid` command creates them again, or delete them)")
    if not report.ok:
        raise IntegrityError(f"{len(problems)} damaged or missing files in the store (listed above)")
    if not json_output:
        stdout().print("no damage found")
