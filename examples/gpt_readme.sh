#!/usr/bin/env bash
# A language model's landscape: the built-in `gpt` (2 layers, 2 heads, 64 dimensions, ~0.1 M
# parameters) trained on the characters of this repository's own README.md, windows of 64
# characters, then a random plane around the trained weights, the interpolation from the untrained
# to the trained weights, and the Hessian's spectrum (top eigenvalues, trace, spectral density).
# The loss is the cross-entropy of the next character at every position, the accuracy the share of
# characters predicted right. About a minute on one CPU core. Uses the `landscape` on
# PATH and ./runs unless LANDSCAPE_STORE is set; rerunning it recomputes nothing (an edited README
# is another text: a new run). Pass a directory to also copy the three figures there.
set -euo pipefail
here="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
out="${1:-}"
if [[ -n "$out" ]]; then mkdir -p "$out"; fi

landscape train gpt "text:$here/../README.md" --block-size 64 --epochs 6 --batch-size 16 --lr 3e-3 \
  --name gpt-readme --quiet
# the plane of one random filter-normalized pair around the last epoch, on a batch of 32 windows
landscape grid gpt-readme --epochs 6 --width 17 --pairs 1 --batches 1 --batch-size 32 --name plane --quiet
# the straight line from the untrained weights (t = 0) to the trained ones (t = 1), on two batches
landscape grid gpt-readme --directions interpolate --epochs 0 --to-epoch 6 --width 21 --batches 2 \
  --batch-size 32 --name interpolation --quiet
# curvature at the trained weights on one batch: top eigenvalues, λmin, trace and the spectral density
landscape hessian gpt-readme --epochs 6 --top 2 --batches 1 --batch-size 32 --probes 10 --density \
  --density-probes 2 --steps 30 --quiet
plane=$(landscape plot gpt-readme --grid plane)
line=$(landscape plot gpt-readme --grid interpolation)
spectrum=$(landscape plot gpt-readme --hessian)
echo "plane: $plane"
echo "interpolation: $line"
echo "hessian: $spectrum"
if [[ -n "$out" ]]; then
  cp "$plane" "$out/plane.png"
  cp "$line" "$out/interpolation.png"
  cp "$spectrum" "$out/hessian.png"
fi
landscape ls
