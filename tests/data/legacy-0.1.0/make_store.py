"""How `store/` was made: run with landscape 0.1.0 (the first release), `python make_store.py store > ids.json`.

It is kept, not rerun: the store and the ids must stay what that release wrote, so that the tests
prove later releases open, resume and plot it and compute the same ids for the same configurations.
The partial grid has three rows whose done-marks were cleared, as a kill between writing a row's
values and marking it done leaves it.
"""

import json
import sys
from pathlib import Path

from landscape_cli.gridstore import Rows

import landscape_cli as ls
from landscape_cli.config import GridConfig, TrainConfig

store = Path(sys.argv[1])
run = ls.train("mlp", "digits", epochs=2, store=store, progress=False, name="legacy")
full = ls.grid("legacy", epochs=[0, 2], width=5, pairs=2, batches=2, batch_size=64, store=store, progress=False,
               name="full")
part = ls.grid("legacy", epochs=[1, 2], width=7, pairs=1, batches=1, batch_size=64, span=0.5, norm="layer",
               gradient=False, store=store, progress=False, name="partial")
rows = Rows(part.zarr_path)
for ei, y in ((0, 2), (1, 0), (1, 6)):
    rows.clear_row(ei, 0, y)
configs = [
    {}, {"width": 41, "span": 0.01}, {"layer": "1.weight"}, {"layer": "1.weight", "single_kernel": True},
    {"perturb_biasbn": True}, {"norm": "filter-std"}, {"norm": "none", "bn": "eval"}, {"seed": 3, "pairs": 1},
    {"batches": 1, "batch_size": 64, "width": 7},
]
ids = [{"config": c, "grid_id": GridConfig(run.run_id, **c).grid_id} for c in configs]
train_cfgs = [{"model": "mlp", "dataset": "digits"}, {"model": "resnet", "dataset": "cifar-10", "activation": "tanh"},
              {"model": "vgg", "dataset": "fashion-mnist", "optimizer": "sgd", "lr": 0.1, "momentum": 0.9, "seed": 2}]
runs = [{"config": c, "run_id": TrainConfig(**c).run_id} for c in train_cfgs]
print(json.dumps({"run_id": run.run_id, "grids": ids, "runs": runs}, indent=1))
