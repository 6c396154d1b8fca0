"""How `store/` was made: run with landscape at fe1b461 (the second release), `python make_store.py store > ids.json`.

It is kept, not rerun: the store and its ids must stay what that release wrote, so that the tests
prove later releases open it, resume it computing nothing, plot, export and verify it. One small
run (an MLP on the bundled digits) holds a grid of every kind that release made: a random line,
an interpolation line, the PCA plane, Hessian results and a plane along their eigenvectors, and a
plane computed by two job-array shards; a second run was imported from the first one's checkpoints.
"""

import json
import sys
from pathlib import Path

from landscape_cli.hessians import hessian
from landscape_cli.importer import import_run

import landscape_cli as ls

store = Path(sys.argv[1])
small = {"batches": 1, "batch_size": 64, "store": store, "progress": False}
run = ls.train("mlp", "digits", epochs=3, store=store, progress=False, name="legacy2")
grids = {}
grids["line"] = ls.grid("legacy2", epochs=[0, 3], dims=1, width=9, pairs=2, name="line", **small)
grids["interpolate"] = ls.grid("legacy2", epochs=[0, 1], directions="interpolate", to_epoch=3, width=9,
                               name="interpolate", **small)
grids["pca"] = ls.grid("legacy2", directions="pca", width=5, name="pca", **small)
curv = hessian("legacy2", epochs=[3], top=2, probes=8, name="curvature", **small)
grids["hessian"] = ls.grid("legacy2", epochs=[3], directions="hessian", width=5, span=0.05, name="hessian", **small)
for i in (0, 1):
    grids["shards"] = ls.grid("legacy2", epochs=[2, 3], width=5, pairs=1, shard=f"{i}/2", name="shards", **small)
ckpts = sorted((store / run.run_id / "checkpoints").glob("epoch-000[13].pt"))
imported = import_run("mlp", "digits", ckpts, epochs=[1, 3], name="imported", store=store, progress=False)
grids["imported"] = ls.grid("imported", width=5, pairs=1, name="plane", **small)
print(json.dumps({"run_id": run.run_id, "imported_id": imported.run_id, "hessian_id": curv.hessian_id,
                  "grids": {k: g.grid_id for k, g in grids.items()}}, indent=1))
