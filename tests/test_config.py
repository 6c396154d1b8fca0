"""Requests, configurations and metadata, in process and without training: the frozen second-release store
holds a trained run, so resolving requests against it needs no torch computation at all."""

from __future__ import annotations

import inspect
import json
import shutil
from pathlib import Path
from typing import Any

import pytest

from landscape_cli.config import GridConfig, GridRequest, HessianConfig, Runtime
from landscape_cli.engine.plan import resolve
from landscape_cli.errors import GridStateError, UnknownNameError, UsageError
from landscape_cli.store import Store
from landscape_cli.store.meta import EvaluatorRecord, GridMeta, RunMeta

LEGACY2 = Path(__file__).parent / "data" / "legacy-0.2.0"
IDS = json.loads((LEGACY2 / "ids.json").read_text())


@pytest.fixture(scope="module")
def st() -> Store:
    return Store(LEGACY2 / "store")  # only read


@pytest.fixture(scope="module")
def run(st: Store) -> RunMeta:
    return st.read_run(IDS["run_id"])


def _cli_defaults(command: str) -> dict[str, Any]:
    from landscape_cli.cli import app

    [fn] = [c.callback for c in app.registered_commands if (c.name or c.callback.__name__) == command]  # type: ignore[union-attr]
    return {name: p.default for name, p in inspect.signature(fn).parameters.items()}


def test_the_cli_takes_its_grid_and_hessian_defaults_from_the_request() -> None:
    grid = _cli_defaults("grid")
    request = GridRequest()
    renamed = {"range_": "range", "grid_ref": "from_grid"}
    for option, default in grid.items():
        field = renamed.get(option, option)
        if field in GridRequest.__dataclass_fields__ and field != "epochs":
            want = getattr(request, field)
            assert default == (str(want) if field == "batches" else want), option
    hessian = _cli_defaults("hessian")
    cfg = HessianConfig("x")
    for option in ("top", "batch_size", "split", "bn", "tol", "probes", "density", "density_probes", "bins", "seed"):
        assert hessian[option] == getattr(cfg, option), option
    assert hessian["steps"] == cfg.density_steps and hessian["batches"] == str(cfg.batches)


def test_a_request_resolves_to_the_grids_the_second_release_made(st: Store, run: RunMeta) -> None:
    small = {"batches": 1, "batch_size": 64}
    cases = {
        "line": GridRequest(epochs=(0, 3), dims=1, width=9, pairs=2, **small),
        "interpolate": GridRequest(epochs=(0, 1), directions="interpolate", to_epoch=3, width=9, **small),
        "pca": GridRequest(directions="pca", width=5, **small),
        "hessian": GridRequest(epochs=(3,), directions="hessian", width=5, span=0.05, **small),
        "shards": GridRequest(epochs=(2, 3), width=5, pairs=1, **small),
    }
    for name, request in cases.items():
        cfg, wanted = resolve(st, run, request)
        assert cfg.grid_id == IDS["grids"][name], name
        assert GridConfig.from_identity(cfg.identity()) == cfg
        # a PCA plane is computed around the trajectory's last checkpoint only
        assert wanted == (list(request.epochs) if request.epochs else [run.epoch_numbers[-1]]), name
    # batches as the CLI passes them (text) and as the library does (a number) are the same request
    assert resolve(st, run, GridRequest(batches="1", batch_size=64))[0] == resolve(st, run, GridRequest(
        batches=1, batch_size=64))[0]


@pytest.mark.parametrize(("request_", "error", "words"), [
    (GridRequest(batches="some"), UsageError, "--batches"),
    (GridRequest(points_per_pass=0), UsageError, "--points-per-pass"),
    (GridRequest(width=1), UsageError, "--width"),
    (GridRequest(epochs=(7,)), UsageError, "no checkpoint for epoch 7"),
    (GridRequest(directions="sideways"), UnknownNameError, "choose one of"),
    (GridRequest(span=0.5, range=(-1, 1)), UsageError, "--span or --range"),
    (GridRequest(dims=1, yrange=(0, 1)), UsageError, "--yrange"),
    (GridRequest(batches=100, batch_size=256), UsageError, "at most"),
    (GridRequest(directions="interpolate"), UsageError, "--to-epoch"),
    (GridRequest(directions="hessian", bn="recompute"), UsageError, "--bn"),
    (GridRequest(norm="layer", directions="interpolate", epochs=(0,), to_epoch=3), UsageError, "--norm"),
    (GridRequest(single_kernel=True), UsageError, "--layer"),
])
def test_bad_requests_are_refused_in_one_line(st: Store, run: RunMeta, request_: GridRequest, error: type,
                                              words: str) -> None:
    with pytest.raises(error) as caught:
        resolve(st, run, request_)
    assert words in str(caught.value) and "\n" not in str(caught.value)


def test_a_run_without_checkpoints_is_refused_once_for_every_command(run: RunMeta) -> None:
    empty = RunMeta.from_json({**run.to_json(), "epochs": []}, "run.json")
    with pytest.raises(GridStateError, match="no checkpoint yet: train it first"):
        empty.require_checkpoints()


def test_runtime_notes_go_to_the_callback_or_stderr(capsys: pytest.CaptureFixture[str]) -> None:
    seen: list[str] = []
    Runtime(report=seen.append).note("a repaired row")
    Runtime().note("to stderr")
    assert seen == ["a repaired row"] and capsys.readouterr().err == "to stderr\n"


def test_evaluator_records_read_old_and_new_grid_json(st: Store) -> None:
    for run_id in (IDS["run_id"], IDS["imported_id"]):
        for meta in st.grids(run_id):
            assert isinstance(meta, GridMeta)
            # the second release recorded the evaluator without thread counts
            assert meta.evaluator is not None and meta.evaluator.threads == {} and meta.evaluator.name == "loop"
            assert GridMeta.from_json(meta.to_json(), "grid.json").to_json() == meta.to_json()
    record = EvaluatorRecord(3, "bf16", "cuda", {"shard 0/2": [8], "shard 1/2": [8, 4]})
    again = EvaluatorRecord.from_json(json.loads(json.dumps(record.to_json())), "fp32")
    assert again == record and record.to_json()["name"] == "batched"
    assert EvaluatorRecord.from_json({}, "fp32") is None  # made before evaluators were recorded


def test_every_legacy_grid_json_reads_back_unchanged(st: Store) -> None:
    for path in sorted((LEGACY2 / "store").glob("*/grids/*/grid.json")):
        raw = json.loads(path.read_text())
        meta = GridMeta.from_json(raw, path)
        assert meta.config.grid_id == raw["id"] == path.parent.name
        assert meta.to_json()["config"] == raw["config"]


def test_a_damaged_direction_sidecar_is_one_integrity_error(tmp_path: Path) -> None:
    from landscape_cli.errors import IntegrityError

    store = tmp_path / "store"
    shutil.copytree(LEGACY2 / "store", store)
    st = Store(store)
    [sidecar, *_] = st.direction_sidecars(IDS["run_id"])
    record = st.direction_sidecar(sidecar)
    assert record.id == sidecar.stem and len(record.sha256) == 64 and st.direction_of(sidecar).is_file()
    sidecar.write_text('{"id": 3}')
    with pytest.raises(IntegrityError, match=sidecar.name):
        st.direction_sidecar(sidecar)


def test_too_many_batches_counts_samples_in_the_datasets_own_word(run: RunMeta) -> None:
    from landscape_cli.config import check_batches

    with pytest.raises(UsageError, match=r"= 512 images, but digits has 360 validation images"):
        check_batches(2, 256, False, "val", run.dataset)
    tokens = {"name": "toy:tokens", "train_size": 100, "val_size": 20, "source": {"kind": "module"}}
    with pytest.raises(UsageError, match=r"= 128 samples, but toy:tokens has 100 training samples: at most 1 batches"):
        check_batches(2, 64, False, "train", tokens)
