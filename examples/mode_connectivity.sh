#!/usr/bin/env bash
# Mode connectivity (Garipov et al. 2018, "Loss Surfaces, Mode Connectivity, and Fast Ensembling of DNNs") on
# the built-in offline digits: two small CNNs trained from different seeds look like isolated minima on the
# straight line between them (the loss rises in between: a barrier), yet a quadratic Bézier curve trained
# between them keeps the loss low all the way. About a minute and a half on 2 CPU cores. Uses the `landscape`
# and the `python` on PATH and ./runs unless LANDSCAPE_STORE is set. Rerunning it recomputes nothing. Pass a
# directory to copy the figure there.
set -euo pipefail
epochs="${EPOCHS:-10}"
out="${1:-}"

for seed in 0 1; do
  landscape train cnn digits --epochs "$epochs" --batch-size 32 --lr 0.01 --seed "$seed" --name "seed$seed" --quiet \
    > /dev/null
done
# the curve: one bend (Garipov's quadratic Bézier curve), trained with seed0's optimizer settings
landscape connect seed0 seed1 --shape bezier --bends 1 --epochs 10 --name bezier --quiet > /dev/null
# the loss along it at 21 values of t, and along the straight line (1 − t)·w_A + t·w_B, BatchNorm statistics
# recomputed at every point; on the whole train split
landscape grid seed0 --directions curve --along bezier --width 21 --batches all --name along --quiet > /dev/null
png=$(landscape plot seed0 --grid along)
echo "the loss along the curve and the straight line: $png"
if [[ -n "$out" ]]; then cp "$png" "$out/mode_connectivity.png"; fi
# the barrier of each path: max over t of L(t) − max(L(0), L(1))
landscape stats seed0 --grid along --json | python -c '
import json, sys
b = json.load(sys.stdin)["epochs"][0]["barriers"]
print("barrier along the straight line %.3f, along the Bézier curve %.3f (%.1f %% of it)"
      % (b["line"], b["curve"], 100 * b["curve"] / b["line"]))'
