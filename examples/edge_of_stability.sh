#!/usr/bin/env bash
# The edge of stability (Cohen et al. 2021): full-batch gradient descent (an epoch is one step: the
# batch is all 512 training samples) on a tanh MLP regressing one-hot digits with MSE
# (examples/edge_of_stability.py), λmax tracked every 10 steps. λmax rises (progressive sharpening)
# to 2/η = 4 by step ~580, then hovers just below it (between 0.8 and 1.0 x 2/η) while the loss keeps
# falling. Measured (2 CPU cores, about 1 min 45 s; --keep every=100 keeps 13 of the 1201 checkpoints, ~3 MB
# instead of ~260 MB; λmax is kept for every 10th step whatever is removed): the mean λmax
# over the last half of training is 0.908 x 2/η (1600 steps: 0.921). Uses the `landscape` on PATH and
# ./runs unless LANDSCAPE_STORE is set. Rerunning it recomputes nothing. Pass a directory to copy the figure there.
set -euo pipefail
here="$(cd "$(dirname "$0")" && pwd)"
out="${1:-}"

landscape train "$here/edge_of_stability.py:make_model" "$here/edge_of_stability.py:make_data" \
  --optimizer sgd --momentum 0 --batch-size 512 --lr 0.5 --epochs 1200 --track-lambda-max 10 \
  --keep every=100 --name edge-of-stability --quiet > /dev/null
png=$(landscape plot edge-of-stability --lambda-max)
echo "λmax against 2/η: $png"
if [[ -n "$out" ]]; then cp "$png" "$out/edge_of_stability.png"; fi
# the mean λmax over the last half of training, as a fraction of 2/η
landscape plot edge-of-stability --lambda-max --json | python -c '
import json, sys
d = json.load(sys.stdin)
v = [p["lambda_max"] for p in d["values"] if p["step"] >= d["values"][-1]["step"] / 2]
print("mean λmax over the last half / (2/η) = %.3f" % (sum(v) / len(v) / d["two_over_lr"]))'
