"""`landscape plot --tensorboard LOGDIR`: the figure and the grid's stats read back by TensorBoard's own reader;
the missing package, a LOGDIR inside the store and a symbolic link refused in one line, nothing written."""

from __future__ import annotations

import io
import json
import shutil
import sys
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from conftest import Grid, Train, tree

pytest.importorskip("tensorboard")

RECIPE = (Train("mlp", epochs=2, name="tb"),
          Grid("tb", epochs=[0, 1, 2], width=5, pairs=1, batches=1, batch_size=64, name="plane", progress=False))
LEGACY2 = Path(__file__).parent / "data" / "legacy-0.2.0"


def _events(logdir: Path) -> Any:
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    [event_file] = logdir.glob("events.out.tfevents.*")  # one writer, one file
    events = EventAccumulator(str(event_file), size_guidance={"images": 0, "scalars": 0})
    events.Reload()
    return events


def _png(data: bytes) -> Any:
    from PIL import Image

    assert data[:8] == b"\x89PNG\r\n\x1a\n"
    image = Image.open(io.BytesIO(data))
    image.load()
    return image


def test_plot_logs_the_figure_and_every_stat_of_every_epoch(cli: Any, copy_store: Any, tmp_path: Path) -> None:
    store = copy_store(*RECIPE)
    logdir = tmp_path / "tb" / "logs"  # made, parents included
    r = cli("plot", "tb", "--epoch", "1", "--json", "--tensorboard", str(logdir))
    assert r.exit_code == 0, r.stderr
    out = json.loads(r.stdout)
    run_id = out["grids"][0]["run"]
    tag = "landscape/tb/plane"
    assert out["tensorboard"]["images"] == {tag: 1}
    events = _events(logdir)

    # the figure: a PNG the size of the one plot saved, pixel for pixel
    assert events.Tags()["images"] == [tag]
    [image] = events.Images(tag)
    assert image.step == 1
    logged, saved = _png(image.encoded_image_string), _png(Path(out["path"]).read_bytes())
    assert (image.width, image.height) == logged.size == saved.size
    assert np.array_equal(np.asarray(logged.convert("RGB")), np.asarray(saved.convert("RGB")))

    # the scalars: what `landscape stats --json` prints for the grid's mean landscape, one per stat and epoch
    stats = json.loads(cli("stats", run_id, "--grid", "plane", "--json").stdout)
    expected: dict[str, dict[int, float]] = {}
    for e in stats["epochs"]:
        mean = e["mean"]
        values = {name: mean[name] for name in ("center_loss", "center_accuracy", "condition", "fit_residual",
                                                "fit_residual_relative", "fit_disagreement", "sharpness",
                                                "sharpness_relative", "flat_radius", "share_below")}
        values |= {f"eigenvalue_{k}": v for k, v in enumerate(mean["eigenvalues"], 1)}
        for name, v in values.items():
            if v is not None and np.isfinite(v):
                expected.setdefault(f"{tag}/{name}", {})[e["epoch"]] = v
    assert {"eigenvalue_1", "eigenvalue_2", "sharpness", "flat_radius"} <= {t.rsplit("/", 1)[1] for t in expected}
    assert sorted(events.Tags()["scalars"]) == sorted(expected)
    for name, by_epoch in expected.items():
        got = {s.step: s.value for s in events.Scalars(name)}
        assert sorted(got) == [0, 1, 2], name  # one per epoch, the epoch as the step
        for epoch, v in by_epoch.items():
            assert got[epoch] == np.float32(v) or got[epoch] == pytest.approx(v, rel=1e-6, abs=1e-12), (name, epoch)
    assert not list(store.rglob("events.out.tfevents.*"))  # nothing in the store


def test_log_grid_writes_into_a_writer_of_ones_own(copy_store: Any, tmp_path: Path) -> None:
    from torch.utils.tensorboard import SummaryWriter

    import landscape_cli

    copy_store(*RECIPE)
    with SummaryWriter(log_dir=str(tmp_path / "mine")) as writer:
        logged = landscape_cli.log_grid(writer, "tb", grid="plane", reduce="mean", stats=False)
    assert logged.images == {"landscape/tb/plane": 2} and not logged.scalars  # the newest epoch by default
    events = _events(tmp_path / "mine")
    assert events.Tags()["images"] == ["landscape/tb/plane"] and events.Tags()["scalars"] == []


def test_the_hessian_figure_and_its_numbers(cli: Any, tmp_path: Path) -> None:
    store = tmp_path / "store"  # the tests' $LANDSCAPE_STORE
    shutil.copytree(LEGACY2 / "store", store)
    r = cli("plot", "legacy2", "--hessian", "--json", "--tensorboard", str(tmp_path / "tb"))
    assert r.exit_code == 0, r.stderr
    out = json.loads(r.stdout)
    events = _events(tmp_path / "tb")
    [tag] = events.Tags()["images"]
    assert tag.startswith("landscape/legacy2/hessian/")
    [image] = events.Images(tag)
    assert image.step == max(out["epochs"]) and _png(image.encoded_image_string).size == _png(
        Path(out["path"]).read_bytes()).size
    for name, values in (("lambda_min", out["lambda_min"]), ("trace", out["trace"]),
                         ("eigenvalue_1", [v[0] for v in out["eigenvalues"]])):
        got = {s.step: s.value for s in events.Scalars(f"{tag}/{name}")}
        assert got == {e: pytest.approx(v, rel=1e-6) for e, v in zip(out["epochs"], values, strict=True)}, name


def test_refusals_are_one_line_and_write_nothing(cli: Any, copy_store: Any, tmp_path: Path,
                                                 monkeypatch: pytest.MonkeyPatch) -> None:
    store = copy_store(*RECIPE)
    before = tree(store)
    logdir = tmp_path / "tb"

    def refused(*args: str) -> str:
        r = cli("plot", "tb", *args)
        assert r.exit_code == 2, (args, r.stdout, r.stderr)
        lines = r.stderr.strip().splitlines()
        assert len(lines) == 1, lines
        assert tree(store) == before  # no figure, no stats cache, no event file
        return lines[0]

    # inside the store, directly or through a link that points into it
    assert "inside the store" in refused("--tensorboard", str(store / "tb"))
    assert "inside the store" in refused("--tensorboard", str(store))
    (tmp_path / "into-store").symlink_to(store, target_is_directory=True)
    assert "inside the store" in refused("--tensorboard", str(tmp_path / "into-store" / "tb"))
    # a link as LOGDIR itself: nothing written through it
    (tmp_path / "elsewhere").mkdir()
    (tmp_path / "link").symlink_to(tmp_path / "elsewhere", target_is_directory=True)
    assert "symbolic link" in refused("--tensorboard", str(tmp_path / "link"))
    assert not any((tmp_path / "elsewhere").iterdir())
    assert "still figure" in refused("--animate", "--tensorboard", str(logdir))

    # the package missing: the one line that says how to install it
    monkeypatch.setitem(sys.modules, "tensorboard", None)  # `import tensorboard` now fails as if not installed
    line = refused("--tensorboard", str(logdir))
    assert line.endswith("--tensorboard needs the tensorboard package: pip install 'landscape-cli[tensorboard]'")
    assert not logdir.exists()
