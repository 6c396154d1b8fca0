"""The language-model checks that need a GPU, printed side by side (run by benchmarks/gpu_session.sh).

On `text:README.md` (64-character windows), `gpt` trained 1 epoch on CUDA, then:

- a 5 x 5 plane by the point-by-point loop (fused attention kernels) and by the batched evaluator
  (16 points per vmap pass, math attention): largest relative difference;
- the same plane computed on the CPU from the same checkpoint: largest relative difference to CUDA;
- `hessian --epochs 1 --top 2 --batches 1 --batch-size 16` on CUDA (products under the math kernel)
  and on the CPU: relative difference of the eigenvalues.

    python benchmarks/gpu_checks.py [--json] [--dry-run]
"""

from __future__ import annotations

import json
import shutil
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

REPO = Path(__file__).resolve().parent.parent


def main() -> None:
    import torch

    from landscape_cli import grid, train
    from landscape_cli.curvature.hessian import hessian

    gpu = "cpu" if "--dry-run" in sys.argv else "cuda"  # --dry-run: the same steps with "cuda" read as the CPU
    if gpu == "cuda" and not torch.cuda.is_available():
        sys.exit("no CUDA GPU here: these checks need one (--dry-run runs them on the CPU)")
    report: dict[str, object] = {"gpu": torch.cuda.get_device_name(0) if gpu == "cuda" else "none (dry run)",
                                 "torch": torch.__version__}
    with tempfile.TemporaryDirectory() as tmp:
        text = Path(tmp) / "README.md"
        text.write_bytes((REPO / "README.md").read_bytes())  # a private copy: the run records its sha256
        store = Path(tmp) / "store"
        t0 = time.perf_counter()
        run = train("gpt", f"text:{text}", epochs=1, block_size=64, batch_size=32, store=store, progress=False,
                    device=gpu).run_id
        report["train_s"] = time.perf_counter() - t0
        planes = {}
        for name, device, k in (("loop", gpu, 1), ("batched", gpu, 16), ("cpu", "cpu", 1)):
            own = shutil.copytree(store, Path(tmp) / name)  # one store each: a grid keeps to one evaluator
            t0 = time.perf_counter()
            result = grid(run, width=5, batches=2, batch_size=32, store=own, progress=False, device=device,
                          points_per_pass=k)
            planes[name] = result.to_xarray()["loss"].values.astype(np.float64)
            report[f"grid_{name}_s"] = time.perf_counter() - t0
            if result.evaluation is not None:
                report[f"grid_{name}_evaluator"] = result.evaluation.to_json() if hasattr(
                    result.evaluation, "to_json") else str(result.evaluation)

        def rel(a: np.ndarray, b: np.ndarray) -> float:
            return float(np.nanmax(np.abs(a - b) / np.maximum(np.abs(b), 1e-12)))

        report["batched_vs_loop_max_rel"] = rel(planes["batched"], planes["loop"])
        report["cuda_vs_cpu_max_rel"] = rel(planes["loop"], planes["cpu"])
        eig = {}
        for label, device in (("cuda", gpu), ("cpu", "cpu")):
            own = shutil.copytree(store, Path(tmp) / f"hessian-{label}")
            t0 = time.perf_counter()
            h = hessian(run, epochs=[1], top=2, batches=1, batch_size=16, store=own, progress=False, device=device)
            eig[label] = h.to_xarray()["eigenvalues"].values.astype(np.float64)
            report[f"hessian_{label}_s"] = time.perf_counter() - t0
        report["eigenvalues_cuda"] = eig["cuda"].reshape(-1).tolist()
        report["eigenvalues_cpu"] = eig["cpu"].reshape(-1).tolist()
        report["hessian_cuda_vs_cpu_max_rel"] = rel(eig["cuda"], eig["cpu"])
    if "--json" in sys.argv:
        print(json.dumps(report, indent=2))
    else:
        for key, value in report.items():
            print(f"{key}: {value}")


if __name__ == "__main__":
    main()
